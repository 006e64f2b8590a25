"""Admin actions: the payloads the admin function accepts, and what each one does.

A payload is a JSON object with an `action` and the action's fields::

    {"action": "explain", "principal": "user:alice", "scope": "repository:prod/api:push"}

| action                  | fields                                                     |
| ----------------------- | ---------------------------------------------------------- |
| `explain`               | `principal`, `scope` (string or list), `source_ip`, `time` |
| `list_principals`       | none                                                       |
| `show_policy`           | `version` (default: active), `include_source` (false)      |
| `set_password_hash`     | `principal` (`user:NAME`), `password_hash`                 |
| `create_host_key`       | `principal` (`host:NAME`), `expires_at` (RFC 3339)         |
| `rotate_host_key`       | `principal` (`host:NAME`), `expires_at` (RFC 3339)         |
| `disable`, `enable`     | `principal`                                                |
| `revoke_refresh_tokens` | `principal`                                                |
| `rollback`              | `version`                                                  |

Every payload may carry `actor`, a free-text name recorded in the audit event. It is
what the caller claims: the identity AWS verified is in CloudTrail's record of the
`Invoke` call. The response is `{"ok": true, "action": ..., "result": {...}}`, or
`{"ok": false, "error": {"type": ..., "field": ..., "message": ...}}` for a bad payload.
Every action, successful or not, is written to the audit sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError

from regauth.audit import AuditSink, RequestContext, admin_event, refresh_token_revoked_event
from regauth.errors import (
    InvalidAdminRequestError,
    InvalidScopeError,
    RegauthError,
    StoreUnavailableError,
)
from regauth.hosts import hash_api_key, is_host, key_id_of, new_api_key
from regauth.models import ANONYMOUS, Principal
from regauth.passwords import is_supported_hash
from regauth.policy import explain
from regauth.policy_store import ApplyResult, PolicyStore, PolicyVersion
from regauth.scopes import parse_scope
from regauth.stores import GRANTS_PREFIX, PRINCIPAL_PREFIX, DynamoStore, principal_from_items

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)
_deserializer = TypeDeserializer()

ACTIONS = (
    "explain",
    "list_principals",
    "show_policy",
    "set_password_hash",
    "create_host_key",
    "rotate_host_key",
    "disable",
    "enable",
    "revoke_refresh_tokens",
    "rollback",
)
DEFAULT_ACTOR = "unknown"
MAX_SCOPES = 50


def _rfc3339(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _field(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        raise InvalidAdminRequestError(name, f"missing field {name!r}")
    if not isinstance(value, str) or not value:
        raise InvalidAdminRequestError(name, f"field {name!r} must be a non-empty string")
    return value


def _optional_time(payload: Mapping[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    moment = None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidAdminRequestError(
            name,
            f"field {name!r} must be an RFC 3339 time with a time zone, "
            "such as 2026-01-31T18:00:00Z",
        )
    return int(moment.timestamp())


def _version_field(payload: Mapping[str, Any]) -> int:
    value = payload.get("version")
    if value is None:
        raise InvalidAdminRequestError("version", "missing field 'version'")
    # A JSON boolean is a Python int, and `true` is no version number.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidAdminRequestError("version", "field 'version' must be a positive integer")
    return value


def _version_to_dict(version: PolicyVersion) -> dict[str, Any]:
    result = asdict(version)
    result["applied_at"] = _rfc3339(version.applied_at)
    return result


def _apply_to_dict(result: ApplyResult) -> dict[str, Any]:
    return {
        "version": result.version,
        "content_hash": result.content_hash,
        "changed": result.changed,
        "previous": result.previous,
    }


class AdminService:
    """Run admin actions against one table, auditing each one."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table_name
        self._audit = audit
        self._clock = clock
        self._store = DynamoStore(client, table_name)
        self._policies = PolicyStore(client, table_name, clock=clock)

    def handle(self, payload: Any, context: RequestContext | None = None) -> dict[str, Any]:
        """Run the action a payload names and return the JSON response."""
        context = context or RequestContext()
        if not isinstance(payload, Mapping):
            error = InvalidAdminRequestError("action", "the payload must be a JSON object")
            return self._failed("", DEFAULT_ACTOR, "", error, context)

        actor = payload.get("actor")
        actor = actor if isinstance(actor, str) and actor else DEFAULT_ACTOR
        action = payload.get("action")
        target = payload.get("principal") or payload.get("version") or ""
        target = str(target)
        try:
            if action not in ACTIONS:
                raise InvalidAdminRequestError(
                    "action", f"unknown action {action!r}: use one of {', '.join(ACTIONS)}"
                )
            handler: Callable[[Mapping[str, Any], str, RequestContext], dict[str, Any]] = getattr(
                self, f"_{action}"
            )
            result = handler(payload, actor, context)
        except RegauthError as exc:
            return self._failed(str(action or ""), actor, target, exc, context)

        self._audit.emit(
            admin_event(context, actor=actor, action=str(action), target=target, result="success")
        )
        return {"ok": True, "action": action, "result": result}

    def _failed(
        self,
        action: str,
        actor: str,
        target: str,
        exc: RegauthError,
        context: RequestContext,
    ) -> dict[str, Any]:
        self._audit.emit(
            admin_event(
                context,
                actor=actor,
                action=action,
                target=target,
                result="failure",
                reason=type(exc).__name__,
            )
        )
        error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, InvalidAdminRequestError):
            error["field"] = exc.field
        logger.warning(
            "admin action failed",
            extra={
                "action": action,
                "target": target,
                "error": type(exc).__name__,
                "field": error.get("field"),
            },
        )
        return {"ok": False, "action": action, "error": error}

    # Reading.

    def _principal(self, payload: Mapping[str, Any]) -> Principal:
        name = _field(payload, "principal")
        if name != ANONYMOUS and ":" not in name:
            raise InvalidAdminRequestError(
                "principal",
                f"principal {name!r} must be 'user:NAME', 'host:NAME', 'role:NAME' or 'anonymous'",
            )
        if name.startswith("group:"):
            raise InvalidAdminRequestError(
                "principal",
                f"{name!r} is a group, and admin actions apply to principals that sign in: "
                "name one of its members instead",
            )
        principal = self._store.get_principal(name)
        if principal is None:
            raise InvalidAdminRequestError(
                "principal", f"principal {name!r} is not in the active policy version"
            )
        return principal

    def _explain(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        principal = self._principal(payload)
        raw_scopes = payload.get("scope")
        values = [raw_scopes] if isinstance(raw_scopes, str) else raw_scopes
        if not isinstance(values, list) or not values or len(values) > MAX_SCOPES:
            raise InvalidAdminRequestError(
                "scope",
                f"field 'scope' must be a scope string "
                f"or a list of 1 to {MAX_SCOPES} scope strings",
            )
        try:
            scopes = [parse_scope(value) for value in values if isinstance(value, str)]
        except InvalidScopeError as exc:
            raise InvalidAdminRequestError("scope", str(exc)) from exc
        if len(scopes) != len(values):
            raise InvalidAdminRequestError("scope", "every scope must be a string")

        source_ip = payload.get("source_ip", "")
        if not isinstance(source_ip, str):
            raise InvalidAdminRequestError("source_ip", "field 'source_ip' must be a string")
        at = _optional_time(payload, "time")
        now = int(self._clock()) if at is None else at
        descriptions = self._policies.descriptions(int(principal.policy_version))
        decisions = explain(
            principal, scopes, source_ip=source_ip, now=now, descriptions=descriptions
        )
        return {
            "principal": principal.name,
            "policy_version": int(principal.policy_version),
            "disabled": principal.disabled,
            "source_ip": source_ip,
            "time": _rfc3339(now),
            "decisions": [asdict(decision) for decision in decisions],
        }

    def _list_principals(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        current = self._policies.current()
        if current is None:
            return {"policy_version": None, "principals": []}
        grants = self._scan_items(GRANTS_PREFIX)
        runtime = self._scan_items(PRINCIPAL_PREFIX)
        principals = []
        for name in sorted(grants):
            principal = principal_from_items(name, current.seq, runtime.get(name), grants[name])
            if principal is not None:
                principals.append(_principal_summary(principal))
        return {"policy_version": current.seq, "principals": principals}

    def _show_policy(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        current = self._policies.current()
        if "version" in payload:
            seq = _version_field(payload)
            version = self._policies.version(seq)
            if version is None:
                raise InvalidAdminRequestError("version", f"policy version {seq} was never applied")
        elif current is None:
            return {"active": None, "history": []}
        else:
            version = current
        result: dict[str, Any] = {
            "active": current.seq if current else None,
            "version": _version_to_dict(version),
            "history": [_version_to_dict(entry) for entry in self._policies.history()],
        }
        if payload.get("include_source") is True:
            result["source_text"] = self._policies.source_text(version.seq)
        return result

    # Changing.

    def _set_password_hash(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        principal = self._principal(payload)
        if not principal.name.startswith("user:"):
            raise InvalidAdminRequestError("principal", "only users have passwords")
        password_hash = _field(payload, "password_hash")
        if not is_supported_hash(password_hash):
            # The value is not echoed: it may be a plaintext password pasted by mistake.
            raise InvalidAdminRequestError(
                "password_hash",
                "field 'password_hash' must be an Argon2id PHC string or a bcrypt hash "
                "($2b$ or $2y$), such as `regauth hash-password` prints",
            )
        self._update(principal.name, "SET admin_password_hash = :value", {":value": password_hash})
        return {"principal": principal.name}

    def _create_host_key(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        return self._set_host_key(payload, replace_existing=False)

    def _rotate_host_key(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        return self._set_host_key(payload, replace_existing=True)

    def _set_host_key(
        self, payload: Mapping[str, Any], *, replace_existing: bool
    ) -> dict[str, Any]:
        principal = self._principal(payload)
        if not is_host(principal.name):
            raise InvalidAdminRequestError("principal", "only hosts have API keys")
        expires_at = _optional_time(payload, "expires_at")
        now = int(self._clock())
        if expires_at is not None and expires_at <= now:
            raise InvalidAdminRequestError("expires_at", "field 'expires_at' is in the past")
        if principal.api_key_hash and not replace_existing:
            raise InvalidAdminRequestError(
                "principal", f"{principal.name} already has an API key: use rotate_host_key"
            )

        key = new_api_key()
        key_hash = hash_api_key(key)
        # The new digest replaces the old one in a single write, so the old key stops
        # working with the next token request (token reads are strongly consistent).
        self._update(
            principal.name,
            "SET api_key_hash = :hash, api_key_id = :id, api_key_expires_at = :expires, "
            "api_key_created_at = :now",
            {
                ":hash": key_hash,
                ":id": key_id_of(key_hash),
                ":expires": expires_at or 0,
                ":now": now,
            },
        )
        return {
            "principal": principal.name,
            "username": principal.display_name,
            "api_key": key,
            "api_key_id": key_id_of(key_hash),
            "expires_at": _rfc3339(expires_at) if expires_at else None,
            "note": "the key is shown only once: store it now",
        }

    def _disable(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        principal = self._principal(payload)
        # Disabling also revokes the principal's refresh tokens, so that enabling it
        # again later does not bring back tokens issued before it was disabled.
        not_before = int(self._clock()) + 1
        self._update(
            principal.name,
            "SET admin_disabled = :true, refresh_not_before = :time",
            {":true": True, ":time": not_before},
        )
        return {"principal": principal.name, "disabled": True}

    def _enable(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        principal = self._principal(payload)
        self._update(principal.name, "REMOVE admin_disabled", {})
        enabled = self._store.get_principal(principal.name)
        # A principal disabled in the policy stays disabled: the admin flag only adds.
        return {"principal": principal.name, "disabled": bool(enabled and enabled.disabled)}

    def _revoke_refresh_tokens(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        principal = self._principal(payload)
        # Refresh tokens record their issue time in whole seconds, so every token
        # issued up to and including this second is revoked.
        not_before = int(self._clock()) + 1
        self._update(principal.name, "SET refresh_not_before = :time", {":time": not_before})
        self._audit.emit(
            refresh_token_revoked_event(
                context, actor=actor, principal=principal.name, not_before=not_before
            )
        )
        return {"principal": principal.name, "not_before": _rfc3339(not_before)}

    def _rollback(
        self, payload: Mapping[str, Any], actor: str, context: RequestContext
    ) -> dict[str, Any]:
        result = self._policies.rollback(_version_field(payload), actor=actor)
        return _apply_to_dict(result)

    # DynamoDB calls.

    def _update(self, name: str, expression: str, values: Mapping[str, Any]) -> None:
        serialized = {key: _attribute(value) for key, value in values.items()}
        arguments: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": PRINCIPAL_PREFIX + name}},
            "UpdateExpression": expression,
            # The runtime item exists for every principal of a retained version, and
            # the condition keeps a typo from creating a stray item.
            "ConditionExpression": "attribute_exists(pk)",
        }
        if serialized:
            arguments["ExpressionAttributeValues"] = serialized
        try:
            self._client.update_item(**arguments)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise InvalidAdminRequestError(
                    "principal", f"principal {name!r} has no runtime item"
                ) from exc
            raise StoreUnavailableError(
                f"DynamoDB UpdateItem failed: {exc.response['Error']['Code']}"
            ) from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(
                f"DynamoDB UpdateItem failed: {type(exc).__name__}"
            ) from exc

    def _scan_items(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Read every item whose key starts with `prefix`, keyed by principal name."""
        items: dict[str, dict[str, Any]] = {}
        paginator = self._client.get_paginator("scan")
        try:
            pages = paginator.paginate(
                TableName=self._table,
                FilterExpression="begins_with(pk, :prefix)",
                ExpressionAttributeValues={":prefix": {"S": prefix}},
                ConsistentRead=True,
            )
            for page in pages:
                for raw in page.get("Items", []):
                    item = {key: _deserializer.deserialize(value) for key, value in raw.items()}
                    items[str(item["pk"]).removeprefix(prefix)] = item
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailableError("DynamoDB Scan failed") from exc
        return items


def _principal_summary(principal: Principal) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "name": principal.name,
        "disabled": principal.disabled,
        "grants": sum(1 for grant in principal.grants if grant.effect == "allow"),
        "denies": sum(1 for grant in principal.grants if grant.effect == "deny"),
    }
    if principal.name.startswith("user:"):
        summary["has_password"] = bool(principal.password_hash)
    if principal.arn_patterns:
        summary["arn_patterns"] = list(principal.arn_patterns)
    if is_host(principal.name):
        summary["api_key_id"] = principal.api_key_id or None
        expires_at = principal.api_key_expires_at
        summary["api_key_expires_at"] = _rfc3339(expires_at) if expires_at else None
    return summary


def _attribute(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    return {"S": str(value)}
