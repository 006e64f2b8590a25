"""Audit records: every event type validates against docs/audit-event.schema.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from regauth.archive import record_from_log_message
from regauth.audit import (
    RECORD_FIELDS,
    AuditEvent,
    RequestContext,
    admin_event,
    certificate_event,
    policy_event,
    refresh_token_revoked_event,
)

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "audit-event.schema.json").read_text()
)
CONTEXT = RequestContext("req-1", "198.51.100.7", "docker/27", "registry.test")
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

EVENTS = {
    "policy-applied": policy_event(CONTEXT, actor="user:ops", version="v1", content_hash="a" * 64),
    "policy-rejected": policy_event(
        CONTEXT, actor="user:ops", version="", content_hash="b" * 64, problems=["1:1: bad"]
    ),
    "admin": admin_event(
        CONTEXT, actor="user:ops", action="disable", target="user:bob", result="success"
    ),
    "refresh-revoked": refresh_token_revoked_event(
        CONTEXT, actor="user:ops", principal="user:bob", not_before=1700000000
    ),
    "certificate": certificate_event(CONTEXT, serial=0x1F2E3D, not_after=1700003600),
    "refresh-used": AuditEvent(
        event_type="refresh_token.used",
        outcome="success",
        context=CONTEXT,
        principal="user:alice",
        auth_method="refresh_token",
        details={"refresh_token_id": "0123456789ab", "client_id": "docker"},
    ),
}


@pytest.mark.parametrize("event", EVENTS.values(), ids=EVENTS.keys())
def test_event_matches_schema(event: AuditEvent) -> None:
    assert [error.message for error in VALIDATOR.iter_errors(event.to_record())] == []


def test_record_has_every_field() -> None:
    assert tuple(EVENTS["admin"].to_record()) == RECORD_FIELDS


def test_policy_rejected_outcome() -> None:
    event = EVENTS["policy-rejected"]
    assert event.event_type == "policy.rejected"
    assert event.outcome == "failure"


def test_certificate_serial_hex() -> None:
    assert EVENTS["certificate"].details["serial"] == "1f2e3d"


@pytest.mark.parametrize(
    "change",
    [
        {"event_type": "token.leaked"},
        {"password": "hunter2"},
        {"time": "yesterday"},
        {"details": {"jti": "x"}, "event_type": "token.issued"},
    ],
    ids=["unknown-type", "extra-field", "bad-time", "token-without-grants"],
)
def test_schema_rejects_invalid(change: dict[str, Any]) -> None:
    record = {**EVENTS["admin"].to_record(), **change}
    assert list(VALIDATOR.iter_errors(record)) != []


def test_log_line_keeps_record_fields() -> None:
    line = {"level": "INFO", "audit": True, "cold_start": True, **EVENTS["admin"].to_record()}
    record = record_from_log_message(json.dumps(line))
    assert record == EVENTS["admin"].to_record()


@pytest.mark.parametrize(
    "message",
    ["not json", "[1]", json.dumps({"message": "request"}), json.dumps({"audit": True})],
    ids=["text", "array", "operational", "no-event-id"],
)
def test_log_line_without_record(message: str) -> None:
    assert record_from_log_message(message) is None


def test_record_replaces_lone_surrogates() -> None:
    event = AuditEvent(
        "token.issued",
        "success",
        RequestContext(user_agent="agent-\ud800"),
        details={"requested": [{"name": "x\udfff"}]},
    )
    record = event.to_record()
    assert record["user_agent"] == "agent-?"
    assert record["details"]["requested"][0]["name"] == "x?"
    json.dumps(record, ensure_ascii=False).encode("utf-8")
