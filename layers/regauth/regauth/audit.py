"""Audit events: one typed, versioned record for every decision regauth makes.

Events are written as single JSON lines by an `AuditSink`. In Lambda the sink is a
Powertools logger of its own, so audit lines can be distinguished from operational logs
by `"audit": true` and routed by a CloudWatch Logs subscription filter. Events never
carry a password, an Authorization header, an access token or a refresh token: the
fields below are the whole record, and none of them holds a credential.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from aws_lambda_powertools import Logger

SCHEMA_VERSION = 1

EventType = Literal[
    "token.issued",
    "authentication.failed",
    "request.rejected",
    "refresh_token.issued",
    "refresh_token.used",
    "refresh_token.revoked",
    "policy.applied",
    "policy.rejected",
    "admin.action",
    "signing_certificate.issued",
    "service.unavailable",
]

# The top-level keys of an archived record, in the order `to_record` writes them.
RECORD_FIELDS = (
    "event_type",
    "outcome",
    "principal",
    "auth_method",
    "reason",
    "details",
    "event_id",
    "time",
    "schema_version",
    "request_id",
    "source_ip",
    "user_agent",
    "registry_service",
)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The caller and call a request came from, copied into every event."""

    request_id: str = ""
    source_ip: str = ""
    user_agent: str = ""
    registry_service: str = ""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record. `details` contains event-specific fields, never secrets."""

    event_type: EventType
    outcome: Literal["success", "failure"]
    context: RequestContext
    principal: str | None = None
    auth_method: str | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    schema_version: int = SCHEMA_VERSION

    def to_record(self) -> dict[str, Any]:
        """Return the flat JSON object written to the audit log."""
        record = asdict(self)
        context = record.pop("context")
        record.update(context)
        cleaned: dict[str, Any] = _valid_unicode(record)
        return cleaned


def _valid_unicode(value: Any) -> Any:
    """Replace lone surrogates, which cannot be written as UTF-8 and would drop the line.

    Request fields such as the user agent come from the client, and a JSON event can
    carry an escaped lone surrogate into a Python string.
    """
    if isinstance(value, str):
        if value.isascii():
            return value
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {key: _valid_unicode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_unicode(item) for item in value]
    return value


class AuditSink(Protocol):
    def emit(self, event: AuditEvent) -> None: ...


class LoggerAuditSink:
    """Write audit events as JSON lines through a Powertools logger named `regauth.audit`."""

    def __init__(self, logger: Logger | None = None) -> None:
        self._logger = logger

    def emit(self, event: AuditEvent) -> None:
        if self._logger is None:
            self._logger = Logger(service="regauth", logger_name="regauth.audit")
        self._logger.info(event.event_type, audit=True, **event.to_record())


def policy_event(
    context: RequestContext,
    *,
    actor: str,
    version: str,
    content_hash: str,
    problems: Sequence[str] = (),
    changed: bool | None = None,
) -> AuditEvent:
    """Record a policy that was applied, or rejected when `problems` is not empty.

    `changed` is False when the applied content was already the active version.
    """
    details: dict[str, Any] = {"version": version, "content_hash": content_hash}
    if problems:
        details["problems"] = list(problems)
    if changed is not None:
        details["changed"] = changed
    return AuditEvent(
        event_type="policy.rejected" if problems else "policy.applied",
        outcome="failure" if problems else "success",
        context=context,
        principal=actor,
        reason="invalid_policy" if problems else None,
        details=details,
    )


def admin_event(
    context: RequestContext,
    *,
    actor: str,
    action: str,
    target: str,
    result: Literal["success", "failure"],
    reason: str | None = None,
) -> AuditEvent:
    """Record one administrative action: who did what to which principal or object."""
    return AuditEvent(
        event_type="admin.action",
        outcome=result,
        context=context,
        principal=actor,
        reason=reason,
        details={"action": action, "target": target, "result": result},
    )


def refresh_token_revoked_event(
    context: RequestContext, *, actor: str, principal: str, not_before: int
) -> AuditEvent:
    """Record that every refresh token of `principal` issued before `not_before` is revoked."""
    return AuditEvent(
        event_type="refresh_token.revoked",
        outcome="success",
        context=context,
        principal=principal,
        details={"actor": actor, "not_before": not_before},
    )


def certificate_event(context: RequestContext, *, serial: int, not_after: int) -> AuditEvent:
    """Record a new signing certificate. The serial is written in hex, as openssl prints it."""
    return AuditEvent(
        event_type="signing_certificate.issued",
        outcome="success",
        context=context,
        details={"serial": format(serial, "x"), "not_after": not_after},
    )


class MemoryAuditSink:
    """Keep events in a list, for tests and for the local server's self-checks."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)
