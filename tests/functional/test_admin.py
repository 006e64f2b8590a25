"""The admin function against moto: every action, its audit event and its effect on tokens."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from functions.admin import app as admin_app
from functions.issue_token import app as token_app
from regauth.admin import AdminService
from regauth.audit import MemoryAuditSink
from regauth.passwords import hash_password
from regauth.policy import compile_policy
from regauth.policy_file import load_policy
from regauth.runtime import Runtime
from tests.functional.conftest import (
    SERVICE,
    TABLE,
    FakeClock,
    basic,
    body_of,
    get_event,
    post_event,
)

POLICY = """\
users:
  - name: alice
    password_hash: "{alice_hash}"
  - name: rel
hosts:
  - name: ci
    description: the CI runner
groups:
  - name: release
    members: [user:rel, host:ci]
grants:
  - id: team-push
    description: Everyone in release pushes team repositories.
    to: group:release
    repositories: ["team/**", "prod/**"]
    actions: [pull, push]
  - id: alice-prod
    description: Alice may push prod from the office only.
    to: user:alice
    repositories: ["prod/**"]
    actions: [pull, push]
    source_ips: ["192.0.2.0/24"]
denies:
  - id: prod-release-only
    description: Only the release group pushes prod.
    to: everyone
    except: [group:release]
    repositories: ["prod/**"]
    actions: [push]
"""

ALICE_PASSWORD = "alice-admin-test-password"


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_password(ALICE_PASSWORD)


@pytest.fixture
def admin(
    runtime: Runtime, audit: MemoryAuditSink, clock: FakeClock, alice_hash: str
) -> AdminService:
    compiled = compile_policy(load_policy(POLICY.format(alice_hash=alice_hash)))
    runtime.store.apply_policy(compiled, text=POLICY.format(alice_hash=alice_hash))
    return AdminService(runtime.clients.dynamodb, TABLE, audit, clock=clock)


def run(admin: AdminService, **payload: Any) -> dict[str, Any]:
    # The handler is what Lambda runs, so every test goes through it.
    response = admin_app.handle(payload, admin, "request-1")
    # A response must survive the JSON encoding of `aws lambda invoke`.
    decoded: dict[str, Any] = json.loads(json.dumps(response))
    return decoded


def token_access(runtime: Runtime, username: str, password: str, scope: str) -> Any:
    event = get_event({"service": [SERVICE], "scope": [scope]}, basic(username, password))
    response = token_app.handle(event, runtime)
    if response["statusCode"] != 200:
        return response["statusCode"]
    payload = body_of(response)["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims["access"][0]["actions"]


def test_explain_denied_lists_rules(admin: AdminService) -> None:
    response = run(
        admin,
        action="explain",
        principal="user:alice",
        scope="repository:prod/api:push",
        source_ip="192.0.2.10",
    )
    assert response["ok"] is True
    (decision,) = response["result"]["decisions"]
    assert decision["granted"] is False
    assert decision["reason"] == "denied by a rule"
    rule_ids = [rule["rule_id"] for rule in decision["rules"]]
    assert rule_ids == ["prod-release-only", "alice-prod"]
    assert decision["rules"][0]["description"] == "Only the release group pushes prod."


def test_explain_granted_names_rule(admin: AdminService) -> None:
    response = run(admin, action="explain", principal="host:ci", scope="repository:prod/api:push")
    (decision,) = response["result"]["decisions"]
    assert decision["granted"] is True
    assert [rule["rule_id"] for rule in decision["rules"]] == ["team-push"]


def test_explain_condition_failure(admin: AdminService) -> None:
    response = run(
        admin,
        action="explain",
        principal="user:alice",
        scope="repository:prod/api:pull",
        source_ip="198.51.100.1",
    )
    (decision,) = response["result"]["decisions"]
    assert decision["granted"] is False
    assert decision["rules"][0]["detail"] == "source address 198.51.100.1 is not in 192.0.2.0/24"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"action": "explain", "scope": "repository:a:pull"}, "principal"),
        ({"action": "explain", "principal": "user:alice"}, "scope"),
        ({"action": "explain", "principal": "user:alice", "scope": "bad"}, "scope"),
        (
            {"action": "explain", "principal": "user:nobody", "scope": "repository:a:pull"},
            "principal",
        ),
        ({"action": "fly"}, "action"),
        ({"action": "rollback", "version": "one"}, "version"),
        ({"action": "rollback", "version": True}, "version"),
        ({"action": "rollback", "version": 99}, "version"),
        ({"action": "create_host_key", "principal": "user:alice"}, "principal"),
        (
            {"action": "create_host_key", "principal": "host:ci", "expires_at": "tomorrow"},
            "expires_at",
        ),
        (
            {"action": "set_password_hash", "principal": "user:alice", "password_hash": "x"},
            "password_hash",
        ),
        (
            {"action": "set_password_hash", "principal": "host:ci", "password_hash": "x"},
            "principal",
        ),
    ],
    ids=[
        "no-principal",
        "no-scope",
        "bad-scope",
        "unknown-principal",
        "unknown-action",
        "version-string",
        "version-bool",
        "version-unknown",
        "key-for-user",
        "bad-expiry",
        "plaintext-hash",
        "password-for-host",
    ],
)
def test_bad_payload_names_field(
    admin: AdminService, audit: MemoryAuditSink, payload: dict[str, Any], field: str
) -> None:
    response = run(admin, **payload)
    assert response["ok"] is False
    assert response["error"]["field"] == field
    assert audit.events[-1].event_type == "admin.action"
    assert audit.events[-1].outcome == "failure"


def test_group_principal_explained(admin: AdminService) -> None:
    response = run(admin, action="disable", principal="group:developers")
    assert response["ok"] is False
    assert response["error"]["field"] == "principal"
    assert "is a group" in response["error"]["message"]


def test_payload_not_object(admin: AdminService) -> None:
    response = admin_app.handle(["explain"], admin)
    assert response["error"]["field"] == "action"


def test_plaintext_hash_not_echoed(admin: AdminService, audit: MemoryAuditSink) -> None:
    response = run(
        admin, action="set_password_hash", principal="user:alice", password_hash="hunter2-secret"
    )
    assert "hunter2-secret" not in json.dumps(response)
    assert "hunter2-secret" not in json.dumps([event.to_record() for event in audit.events])


def test_list_principals(admin: AdminService) -> None:
    response = run(admin, action="list_principals")
    names = [entry["name"] for entry in response["result"]["principals"]]
    assert names == ["anonymous", "host:ci", "user:alice", "user:rel"]
    host = response["result"]["principals"][1]
    assert host["api_key_id"] is None


def test_show_policy_includes_source(admin: AdminService, alice_hash: str) -> None:
    response = run(admin, action="show_policy", include_source=True)
    result = response["result"]
    assert result["active"] == 2
    assert result["version"]["seq"] == 2
    assert result["source_text"] == POLICY.format(alice_hash=alice_hash)
    assert [entry["seq"] for entry in result["history"]] == [2, 1]


def test_set_password_hash_takes_effect(admin: AdminService, runtime: Runtime) -> None:
    new_password = "rel-new-password-0123"
    assert token_access(runtime, "rel", new_password, "repository:team/a:pull") == 401
    response = run(
        admin,
        action="set_password_hash",
        principal="user:rel",
        password_hash=hash_password(new_password),
    )
    assert response["ok"] is True
    assert token_access(runtime, "rel", new_password, "repository:team/a:pull") == ["pull"]


def test_host_key_create_and_rotate(admin: AdminService, runtime: Runtime) -> None:
    created = run(admin, action="create_host_key", principal="host:ci")["result"]
    assert created["username"] == "host/ci"
    assert len(base64.urlsafe_b64decode(created["api_key"][5:] + "=")) == 32
    assert token_access(runtime, "host/ci", created["api_key"], "repository:prod/a:push") == [
        "push"
    ]

    again = run(admin, action="create_host_key", principal="host:ci")
    assert again["error"]["field"] == "principal"

    rotated = run(admin, action="rotate_host_key", principal="host:ci")["result"]
    assert rotated["api_key"] != created["api_key"]
    assert token_access(runtime, "host/ci", created["api_key"], "repository:prod/a:push") == 401
    assert token_access(runtime, "host/ci", rotated["api_key"], "repository:prod/a:push") == [
        "push"
    ]


def test_host_key_not_stored(admin: AdminService, runtime: Runtime) -> None:
    key = run(admin, action="create_host_key", principal="host:ci")["result"]["api_key"]
    item = runtime.clients.dynamodb.get_item(
        TableName=TABLE, Key={"pk": {"S": "principal#host:ci"}}
    )["Item"]
    assert key not in json.dumps(item)


def test_host_key_expiry(
    admin: AdminService, runtime: Runtime, clock: FakeClock, audit: MemoryAuditSink
) -> None:
    expires = datetime.fromtimestamp(clock.now + 3600, UTC).isoformat()
    key = run(admin, action="create_host_key", principal="host:ci", expires_at=expires)["result"]
    assert token_access(runtime, "host/ci", key["api_key"], "repository:team/a:pull") == ["pull"]
    clock.advance(3601)
    assert token_access(runtime, "host/ci", key["api_key"], "repository:team/a:pull") == 401
    assert audit.events[-1].reason == "expired_api_key"


def test_disable_and_enable(admin: AdminService, runtime: Runtime) -> None:
    assert run(admin, action="disable", principal="user:alice")["result"]["disabled"] is True
    assert token_access(runtime, "alice", ALICE_PASSWORD, "repository:team/a:pull") == 401
    assert run(admin, action="enable", principal="user:alice")["result"]["disabled"] is False
    assert token_access(runtime, "alice", ALICE_PASSWORD, "repository:team/a:pull") == []


def test_disable_revokes_refresh_tokens(
    admin: AdminService, runtime: Runtime, clock: FakeClock
) -> None:
    params = {"service": [SERVICE], "offline_token": ["true"], "client_id": ["docker"]}
    login = token_app.handle(get_event(params, basic("alice", ALICE_PASSWORD)), runtime)
    refresh_token = body_of(login)["refresh_token"]
    run(admin, action="disable", principal="user:alice")
    run(admin, action="enable", principal="user:alice")
    clock.advance(2)

    form = {
        "grant_type": "refresh_token",
        "service": SERVICE,
        "client_id": "docker",
        "refresh_token": refresh_token,
    }
    response = token_app.handle(post_event(form), runtime)
    assert response["statusCode"] == 401
    assert token_access(runtime, "alice", ALICE_PASSWORD, "repository:team/a:pull") == []


def test_disable_survives_apply(admin: AdminService, runtime: Runtime, alice_hash: str) -> None:
    run(admin, action="disable", principal="user:alice")
    changed = (
        POLICY.format(alice_hash=alice_hash)
        + "  - id: extra\n    to: everyone\n    registry: [catalog]\n"
    )
    runtime.store.apply_policy(compile_policy(load_policy(changed)))
    assert token_access(runtime, "alice", ALICE_PASSWORD, "repository:team/a:pull") == 401


def test_revoke_refresh_tokens(
    admin: AdminService, runtime: Runtime, audit: MemoryAuditSink
) -> None:
    event = get_event(
        {"service": [SERVICE], "offline_token": ["true"], "client_id": ["test"]},
        basic("alice", ALICE_PASSWORD),
    )
    refresh_token = body_of(token_app.handle(event, runtime))["refresh_token"]
    response = run(admin, action="revoke_refresh_tokens", principal="user:alice")
    assert response["ok"] is True
    assert any(event.event_type == "refresh_token.revoked" for event in audit.events)

    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "service": SERVICE,
        "client_id": "test",
    }
    from tests.functional.conftest import post_event

    assert token_app.handle(post_event(form), runtime)["statusCode"] == 401


def test_rollback_restores_grants(admin: AdminService, runtime: Runtime) -> None:
    # Version 1 is the conftest policy, where bob may pull team/**.
    assert runtime.store.get_principal("user:bob") is None
    response = run(admin, action="rollback", version=1)
    assert response["result"] == {
        "version": 1,
        "content_hash": response["result"]["content_hash"],
        "changed": True,
        "previous": 2,
    }
    bob = runtime.store.get_principal("user:bob")
    assert bob is not None
    assert [grant.rule_id for grant in bob.grants] == ["bob-team-pull", "public-pull"]


def test_every_action_audited(admin: AdminService, audit: MemoryAuditSink) -> None:
    before = len(audit.events)
    run(admin, action="list_principals", actor="ops@example.com")
    event = audit.events[before]
    assert event.event_type == "admin.action"
    assert event.principal == "ops@example.com"
    assert event.details["action"] == "list_principals"
    assert event.outcome == "success"


def test_token_audit_names_deny_rule(
    admin: AdminService, runtime: Runtime, audit: MemoryAuditSink
) -> None:
    assert token_access(runtime, "alice", ALICE_PASSWORD, "repository:prod/api:push") == []
    issued = [event for event in audit.events if event.event_type == "token.issued"][-1]
    record = json.loads(json.dumps(issued.to_record(), default=list))
    (dropped,) = record["details"]["dropped"]
    assert dropped["reason"] == "denied by a rule"
    assert [rule["rule_id"] for rule in dropped["rules"]] == ["prod-release-only", "alice-prod"]
    assert dropped["rules"][0]["effect"] == "deny"


def test_host_not_locked_out_by_wrong_keys(admin: AdminService, runtime: Runtime) -> None:
    created = run(admin, action="create_host_key", principal="host:ci")["result"]
    for attempt in range(runtime.settings.max_failed_logins + 2):
        guess = f"rgk1_wrong-{attempt}"
        assert token_access(runtime, "host/ci", guess, "repository:prod/a:pull") == 401
    # Failures are still counted, for alarms.
    host = runtime.store.get_principal("host:ci")
    assert host is not None
    assert host.failed_logins == runtime.settings.max_failed_logins + 2
    # The right key still works: a lockout would let anyone stop a host's CI.
    granted = token_access(runtime, "host/ci", created["api_key"], "repository:prod/a:pull")
    assert granted == ["pull"]
