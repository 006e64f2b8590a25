"""The token handler end to end against moto: distribution token auth behaviour."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
from collections import Counter
from datetime import datetime
from typing import Any

import jwt
import pytest
from aws_lambda_powertools import Logger

from functions.get_certificates import app as certificates_app
from functions.issue_token import app
from regauth.audit import MemoryAuditSink
from regauth.passwords import verify_password
from regauth.runtime import Runtime
from tests.functional.conftest import (
    ISSUER,
    OTHER_SERVICE,
    SERVICE,
    FakeClock,
    Users,
    apply_policy,
    basic,
    body_of,
    get_event,
    load_event,
    policy_text,
    post_event,
    verify_token,
)


def root_pem(runtime: Runtime) -> bytes:
    response = certificates_app.handle(load_event("get_certificates.json"), runtime)
    assert response["statusCode"] == 200
    return str(response["body"]).encode()


def token_claims(runtime: Runtime, response: dict[str, Any], service: str = SERVICE) -> Any:
    assert response["statusCode"] == 200, response["body"]
    return verify_token(body_of(response)["token"], root_pem(runtime), service=service)


def access_of(claims: dict[str, Any]) -> list[dict[str, Any]]:
    access: list[dict[str, Any]] = claims["access"]
    return access


def issue_get(runtime: Runtime, scopes: list[str], auth: str | None = None, **query: str) -> Any:
    params = {"service": [SERVICE], **{k: [v] for k, v in query.items()}}
    if scopes:
        params["scope"] = scopes
    return app.handle(get_event(params, auth), runtime)


def test_sample_event_shape(runtime: Runtime, users: Users) -> None:
    event = load_event("get_token.json")
    event["headers"]["Authorization"] = basic("alice", users.alice)
    event["multiValueHeaders"]["Authorization"] = [basic("alice", users.alice)]
    event["queryStringParameters"]["service"] = SERVICE
    event["multiValueQueryStringParameters"]["service"] = [SERVICE]
    claims = token_claims(runtime, app.handle(event, runtime))
    assert access_of(claims) == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
    ]


def test_token_claims(runtime: Runtime, users: Users, clock: FakeClock) -> None:
    response = issue_get(runtime, ["repository:team/app:pull"], basic("alice", users.alice))
    claims = token_claims(runtime, response)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == SERVICE
    assert isinstance(claims["aud"], str)
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == claims["iat"] + 300
    assert isinstance(claims["nbf"], int)
    assert claims["iat"] - 60 < claims["nbf"] < claims["iat"]
    assert len(claims["jti"]) >= 16


def test_token_header_x5c_es256(runtime: Runtime, users: Users) -> None:
    token = body_of(issue_get(runtime, [], basic("alice", users.alice)))["token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert "kid" not in header
    assert "jwk" not in header
    assert len(header["x5c"]) == 1
    # Standard base64, not base64url (RFC 7515 section 4.1.6).
    base64.b64decode(header["x5c"][0], validate=True)
    signature = token.split(".")[2]
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64


def test_response_fields(runtime: Runtime, users: Users, clock: FakeClock) -> None:
    response = issue_get(runtime, [], basic("alice", users.alice))
    body = body_of(response)
    assert response["headers"]["Cache-Control"] == "no-store"
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert datetime.fromisoformat(body["issued_at"]).timestamp() == clock.now
    assert body["issued_at"].endswith("Z")
    assert "refresh_token" not in body


def test_jti_unique(runtime: Runtime, users: Users) -> None:
    ids = {
        token_claims(runtime, issue_get(runtime, [], basic("alice", users.alice)))["jti"]
        for _ in range(5)
    }
    assert len(ids) == 5


def test_login_without_scope_empty_access(runtime: Runtime, users: Users) -> None:
    claims = token_claims(runtime, issue_get(runtime, [], basic("bob", users.bob)))
    assert access_of(claims) == []


def test_intersection_drops_ungranted(
    runtime: Runtime, users: Users, audit: MemoryAuditSink
) -> None:
    response = issue_get(
        runtime,
        ["repository:team/app:pull,push,delete", "repository:prod/api:pull"],
        basic("bob", users.bob),
    )
    assert access_of(token_claims(runtime, response)) == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
        {"type": "repository", "name": "prod/api", "actions": []},
    ]
    issued = [e for e in audit.events if e.event_type == "token.issued"][-1]
    dropped = {(d["name"], d["action"]) for d in issued.details["dropped"]}
    assert dropped == {("team/app", "push"), ("team/app", "delete"), ("prod/api", "pull")}


def test_wildcard_action_grant(runtime: Runtime, users: Users) -> None:
    response = issue_get(
        runtime, ["repository:prod/api:*", "repository:x:delete"], basic("ops", users.ops)
    )
    assert access_of(token_claims(runtime, response)) == [
        {"type": "repository", "name": "prod/api", "actions": ["*"]},
        {"type": "repository", "name": "x", "actions": ["delete"]},
    ]


def test_catalog_only_for_granted(runtime: Runtime, users: Users) -> None:
    ops = token_claims(runtime, issue_get(runtime, ["registry:catalog:*"], basic("ops", users.ops)))
    alice = token_claims(
        runtime, issue_get(runtime, ["registry:catalog:*"], basic("alice", users.alice))
    )
    assert access_of(ops) == [{"type": "registry", "name": "catalog", "actions": ["*"]}]
    assert access_of(alice) == [{"type": "registry", "name": "catalog", "actions": []}]


def test_anonymous_public_only(runtime: Runtime) -> None:
    response = issue_get(runtime, ["repository:public/base:pull,push", "repository:team/app:pull"])
    claims = token_claims(runtime, response)
    assert claims["sub"] == "anonymous"
    assert access_of(claims) == [
        {"type": "repository", "name": "public/base", "actions": ["pull"]},
        {"type": "repository", "name": "team/app", "actions": []},
    ]


def test_authenticated_user_gets_anonymous_grants(runtime: Runtime, users: Users) -> None:
    claims = token_claims(
        runtime, issue_get(runtime, ["repository:public/base:pull"], basic("carol", users.carol))
    )
    assert access_of(claims) == [{"type": "repository", "name": "public/base", "actions": ["pull"]}]


def test_host_port_name_not_matched_by_plain_pattern(runtime: Runtime, users: Users) -> None:
    claims = token_claims(
        runtime,
        issue_get(runtime, ["repository:localhost:5000/team/app:pull"], basic("bob", users.bob)),
    )
    assert access_of(claims) == [
        {"type": "repository", "name": "localhost:5000/team/app", "actions": []}
    ]


def test_resource_class_dropped(runtime: Runtime, users: Users) -> None:
    claims = token_claims(
        runtime, issue_get(runtime, ["repository(plugin):team/app:pull"], basic("bob", users.bob))
    )
    assert access_of(claims) == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]


def failure_cases(users: Users) -> dict[str, str]:
    return {
        "wrong-password": basic("alice", users.alice + "x"),
        "unknown-user": basic("mallory", users.alice),
        "empty-password": basic("alice", ""),
        "empty-user": basic("", users.alice),
        "malformed-base64": "Basic %%%",
        "bearer-scheme": "Bearer " + "a.b.c",
        "no-colon": "Basic " + base64.b64encode(b"alice").decode(),
    }


def test_authentication_failures_identical(
    runtime: Runtime, users: Users, audit: MemoryAuditSink
) -> None:
    responses = {
        name: issue_get(runtime, ["repository:public/base:pull"], header)
        for name, header in failure_cases(users).items()
    }
    for name, response in responses.items():
        assert response["statusCode"] == 401, name
        assert response["headers"]["WWW-Authenticate"] == 'Basic realm="regauth", charset="UTF-8"'
        assert body_of(response) == {
            "errors": [
                {"code": "UNAUTHORIZED", "message": "invalid username or password", "detail": None}
            ]
        }, name
        assert "token" not in body_of(response)

    reasons = [e.reason for e in audit.events if e.event_type == "authentication.failed"]
    assert reasons == [
        "wrong_password",
        "unknown_principal",
        "empty_credentials",
        "empty_credentials",
        "malformed_authorization_header",
        "unsupported_authorization_scheme",
        "malformed_authorization_header",
    ]


def test_password_with_colons(runtime: Runtime, users: Users) -> None:
    assert ":" in users.alice
    response = issue_get(runtime, [], basic("alice", users.alice))
    assert response["statusCode"] == 200


def test_account_mismatch_rejected(runtime: Runtime, users: Users) -> None:
    response = issue_get(runtime, [], basic("alice", users.alice), account="bob")
    assert response["statusCode"] == 400
    assert body_of(response)["errors"][0]["message"] == (
        "account does not match the authenticated user name"
    )


def test_unknown_service_rejected(runtime: Runtime, users: Users, audit: MemoryAuditSink) -> None:
    event = get_event({"service": ["elsewhere.test"]}, basic("alice", users.alice))
    response = app.handle(event, runtime)
    assert response["statusCode"] == 400
    assert body_of(response)["errors"][0]["code"] == "UNKNOWN_SERVICE"
    assert audit.events[-1].event_type == "request.rejected"
    assert audit.events[-1].reason == "unknown_service"


def test_missing_service_rejected(runtime: Runtime) -> None:
    response = app.handle(get_event({}), runtime)
    assert response["statusCode"] == 400
    assert "'service' is required" in body_of(response)["errors"][0]["message"]


def test_malformed_scope_rejected(runtime: Runtime, audit: MemoryAuditSink) -> None:
    response = issue_get(runtime, ["repository:team/app"])
    assert response["statusCode"] == 400
    assert body_of(response)["errors"][0]["code"] == "INVALID_SCOPE"
    assert "repository:team/app" in body_of(response)["errors"][0]["message"]
    assert audit.events[-1].event_type == "request.rejected"


def test_offline_token_issues_refresh_token(runtime: Runtime, users: Users) -> None:
    response = issue_get(
        runtime, [], basic("alice", users.alice), offline_token="true", client_id="docker"
    )
    body = body_of(response)
    assert body["refresh_token"].startswith("rt1.")


def test_offline_token_needs_client_id(runtime: Runtime, users: Users) -> None:
    response = issue_get(runtime, [], basic("alice", users.alice), offline_token="true")
    assert response["statusCode"] == 400
    assert body_of(response)["errors"][0]["message"] == (
        "client_id is required when requesting a refresh token"
    )


def test_anonymous_offline_token_has_no_refresh(runtime: Runtime) -> None:
    response = issue_get(runtime, [], None, offline_token="true", client_id="docker")
    assert response["statusCode"] == 200
    assert "refresh_token" not in body_of(response)


def login(runtime: Runtime, users: Users, service: str = SERVICE) -> str:
    params = {
        "service": [service],
        "offline_token": ["true"],
        "client_id": ["docker"],
        "account": ["alice"],
    }
    response = app.handle(get_event(params, basic("alice", users.alice)), runtime)
    assert response["statusCode"] == 200
    token: str = body_of(response)["refresh_token"]
    return token


def refresh(runtime: Runtime, token: str, **overrides: str) -> dict[str, Any]:
    form = {
        "grant_type": "refresh_token",
        "service": SERVICE,
        "client_id": "docker",
        "refresh_token": token,
        "scope": "repository:team/app:pull,push",
    }
    form.update(overrides)
    return app.handle(post_event(form), runtime)


def test_refresh_token_reusable(runtime: Runtime, users: Users) -> None:
    token = login(runtime, users)
    for _ in range(3):
        response = refresh(runtime, token)
        claims = token_claims(runtime, response)
        assert claims["sub"] == "alice"
        assert access_of(claims) == [
            {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
        ]
        assert "refresh_token" not in body_of(response)
        assert body_of(response)["access_token"]


def test_refresh_audited_as_refresh(runtime: Runtime, users: Users, audit: MemoryAuditSink) -> None:
    refresh(runtime, login(runtime, users))
    issued = [e for e in audit.events if e.event_type == "token.issued"]
    assert [e.auth_method for e in issued] == ["password", "refresh_token"]
    assert [e.event_type for e in audit.events].count("refresh_token.issued") == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"client_id": "other"}, "refresh_token_client_mismatch"),
        ({"service": OTHER_SERVICE}, "refresh_token_service_mismatch"),
        ({"refresh_token": "rt1.YWxpY2U.guess"}, "unknown_refresh_token"),
        ({"refresh_token": "not-a-refresh-token"}, "malformed_refresh_token"),
        ({"refresh_token": "rt1.!!!.x"}, "malformed_refresh_token"),
    ],
    ids=["client", "service", "unknown", "malformed", "bad-principal"],
)
def test_refresh_rejected(
    runtime: Runtime,
    users: Users,
    audit: MemoryAuditSink,
    overrides: dict[str, str],
    reason: str,
) -> None:
    response = refresh(runtime, login(runtime, users), **overrides)
    assert response["statusCode"] == 401
    assert body_of(response) == {
        "error": "invalid_grant",
        "error_description": "invalid refresh token",
    }
    assert audit.events[-1].reason == reason


def test_refresh_token_of_another_principal(runtime: Runtime, users: Users) -> None:
    token = login(runtime, users)
    _, _, secret = token.split(".")
    forged = "rt1." + base64.urlsafe_b64encode(b"user:ops").rstrip(b"=").decode() + "." + secret
    assert refresh(runtime, forged)["statusCode"] == 401


def test_refresh_expired(
    runtime: Runtime, users: Users, clock: FakeClock, audit: MemoryAuditSink
) -> None:
    token = login(runtime, users)
    clock.advance(runtime.settings.refresh_ttl - 1)
    assert refresh(runtime, token)["statusCode"] == 200
    # `expires_at` is the first second at which the token is no longer accepted.
    clock.advance(1)
    assert refresh(runtime, token)["statusCode"] == 401
    assert audit.events[-1].reason == "expired_refresh_token"


def test_refresh_disabled_identity(
    runtime: Runtime, users: Users, password_hashes: dict[str, str]
) -> None:
    token = login(runtime, users)
    apply_policy(runtime.store, policy_text(password_hashes, disabled=("alice",)))
    response = refresh(runtime, token)
    assert response["statusCode"] == 401
    assert body_of(response)["error"] == "invalid_grant"


def test_disabled_identity_password_rejected(
    runtime: Runtime, users: Users, password_hashes: dict[str, str], audit: MemoryAuditSink
) -> None:
    apply_policy(runtime.store, policy_text(password_hashes, disabled=("alice",)))
    response = issue_get(runtime, [], basic("alice", users.alice))
    assert response["statusCode"] == 401
    assert audit.events[-1].reason == "principal_disabled"


def test_refresh_revoked(runtime: Runtime, users: Users, clock: FakeClock) -> None:
    token = login(runtime, users)
    runtime.clients.dynamodb.update_item(
        TableName=runtime.settings.table_name,
        Key={"pk": {"S": "principal#user:alice"}},
        UpdateExpression="SET refresh_not_before = :t",
        ExpressionAttributeValues={":t": {"N": str(int(clock.now) + 1)}},
    )
    assert refresh(runtime, token)["statusCode"] == 401


def test_post_password_grant(runtime: Runtime, users: Users) -> None:
    form = {
        "grant_type": "password",
        "service": SERVICE,
        "client_id": "docker",
        "username": "alice",
        "password": users.alice,
        "access_type": "offline",
        "scope": "repository:team/app:push",
    }
    response = app.handle(post_event(form), runtime)
    body = body_of(response)
    claims = token_claims(runtime, response)
    assert access_of(claims) == [{"type": "repository", "name": "team/app", "actions": ["push"]}]
    assert body["refresh_token"].startswith("rt1.")
    assert refresh(runtime, body["refresh_token"])["statusCode"] == 200


def test_post_password_grant_wrong_password(runtime: Runtime, users: Users) -> None:
    form = {
        "grant_type": "password",
        "service": SERVICE,
        "client_id": "docker",
        "username": "alice",
        "password": "wrong",
    }
    response = app.handle(post_event(form), runtime)
    assert response["statusCode"] == 401
    assert body_of(response)["error"] == "invalid_grant"
    assert response["headers"]["Cache-Control"] == "no-store"
    # RFC 7235 section 3.1: every 401 carries a challenge, POST included.
    assert response["headers"]["WWW-Authenticate"] == 'Basic realm="regauth", charset="UTF-8"'


def test_post_unsupported_grant_type(runtime: Runtime) -> None:
    form = {"grant_type": "client_credentials", "service": SERVICE, "client_id": "docker"}
    response = app.handle(post_event(form), runtime)
    assert response["statusCode"] == 400
    assert body_of(response)["error"] == "unsupported_grant_type"


def test_lockout_after_failed_logins(runtime: Runtime, users: Users, clock: FakeClock) -> None:
    wrong = basic("bob", "not-the-password")
    limit = runtime.settings.max_failed_logins
    statuses = [issue_get(runtime, [], wrong)["statusCode"] for _ in range(limit)]
    assert statuses == [401] * limit

    locked = issue_get(runtime, [], basic("bob", users.bob))
    assert locked["statusCode"] == 429
    assert 0 < int(locked["headers"]["Retry-After"]) <= runtime.settings.lockout_seconds
    assert body_of(locked)["errors"][0]["code"] == "TOOMANYREQUESTS"

    clock.advance(runtime.settings.lockout_seconds + 1)
    assert issue_get(runtime, [], basic("bob", users.bob))["statusCode"] == 200


def test_success_resets_failed_logins(runtime: Runtime, users: Users) -> None:
    wrong = basic("bob", "not-the-password")
    for _ in range(runtime.settings.max_failed_logins - 1):
        issue_get(runtime, [], wrong)
    assert issue_get(runtime, [], basic("bob", users.bob))["statusCode"] == 200
    for _ in range(runtime.settings.max_failed_logins - 1):
        issue_get(runtime, [], wrong)
    assert issue_get(runtime, [], basic("bob", users.bob))["statusCode"] == 200


def count_calls(client: Any) -> Counter[str]:
    calls: Counter[str] = Counter()

    def record(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-call.*.*", record)
    return calls


def test_warm_request_one_dynamodb_call_no_kms(runtime: Runtime, users: Users) -> None:
    auth = basic("alice", users.alice)
    assert issue_get(runtime, ["repository:team/app:pull"], auth)["statusCode"] == 200

    dynamodb_calls = count_calls(runtime.clients.dynamodb)
    kms_calls = count_calls(runtime.clients.kms)
    response = issue_get(runtime, ["repository:team/app:pull"], auth)
    assert response["statusCode"] == 200
    assert dynamodb_calls == Counter({"BatchGetItem": 1})
    assert kms_calls == Counter()


def test_warm_refresh_one_dynamodb_call(runtime: Runtime, users: Users) -> None:
    token = login(runtime, users)
    dynamodb_calls = count_calls(runtime.clients.dynamodb)
    assert refresh(runtime, token)["statusCode"] == 200
    assert dynamodb_calls == Counter({"BatchGetItem": 1})


def test_repeated_credentials_not_rehashed(
    runtime: Runtime, users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting(password_hash: str, password: str) -> bool:
        calls.append(password_hash)
        return verify_password(password_hash, password)

    monkeypatch.setattr(runtime.service._passwords, "_verifier", counting)
    for _ in range(3):
        assert issue_get(runtime, [], basic("alice", users.alice))["statusCode"] == 200
    assert len(calls) == 1


def test_store_outage_fails_closed(runtime: Runtime, users: Users, audit: MemoryAuditSink) -> None:
    runtime.clients.dynamodb.delete_table(TableName=runtime.settings.table_name)
    response = issue_get(runtime, ["repository:public/base:pull"])
    assert response["statusCode"] == 503
    assert body_of(response)["errors"][0]["code"] == "UNAVAILABLE"
    assert "token" not in body_of(response)
    assert audit.events[-1].event_type == "service.unavailable"


def test_unexpected_error_is_generic_500(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(runtime.service, "issue", explode)
    response = issue_get(runtime, [])
    assert response["statusCode"] == 500
    assert "secret internals" not in response["body"]
    assert "Traceback" not in response["body"]


def test_certificates_endpoint(runtime: Runtime) -> None:
    response = certificates_app.handle(load_event("get_certificates.json"), runtime)
    assert response["statusCode"] == 200
    assert response["headers"]["Content-Type"] == "application/x-pem-file"
    assert response["body"].startswith("-----BEGIN CERTIFICATE-----")
    assert response["body"].count("BEGIN CERTIFICATE") == 1


def test_audit_never_contains_secrets(
    runtime: Runtime, users: Users, audit: MemoryAuditSink
) -> None:
    refresh_token = login(runtime, users)
    refresh(runtime, refresh_token)
    refresh(runtime, refresh_token, client_id="other")
    access_token = body_of(issue_get(runtime, [], basic("alice", users.alice)))["token"]
    issue_get(runtime, [], basic("alice", users.bob))

    serialized = json.dumps([event.to_record() for event in audit.events])
    for secret in (users.alice, users.bob, refresh_token, access_token):
        assert secret not in serialized
    assert "Basic " not in serialized
    assert refresh_token.split(".")[2] not in serialized


def test_attempt_counted_before_password_check(
    runtime: Runtime, users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts_seen: list[int] = []

    def observing(password_hash: str, password: str) -> bool:
        stored = runtime.store.get_principal("user:bob")
        assert stored is not None
        counts_seen.append(stored.failed_logins)
        return verify_password(password_hash, password)

    monkeypatch.setattr(runtime.service._passwords, "_verifier", observing)
    issue_get(runtime, [], basic("bob", "wrong-1"))
    issue_get(runtime, [], basic("bob", "wrong-2"))
    # Parallel guesses each see their own count because it is taken before hashing.
    assert counts_seen == [1, 2]


def test_attempts_over_limit_never_hashed(
    runtime: Runtime, users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []

    def counting(password_hash: str, password: str) -> bool:
        verified.append(password)
        return verify_password(password_hash, password)

    monkeypatch.setattr(runtime.service._passwords, "_verifier", counting)
    # Bypass the early check on the item read, as a burst of parallel requests
    # that all read the old count would.
    monkeypatch.setattr(runtime.service, "_check_lockout", lambda principal, now: None)
    limit = runtime.settings.max_failed_logins
    statuses = [issue_get(runtime, [], basic("bob", f"guess-{i}"))["statusCode"] for i in range(15)]
    assert statuses == [401] * limit + [429] * (15 - limit)
    assert len(verified) == limit


def test_cached_login_writes_nothing(runtime: Runtime, users: Users) -> None:
    auth = basic("alice", users.alice)
    assert issue_get(runtime, [], auth)["statusCode"] == 200
    calls = count_calls(runtime.clients.dynamodb)
    assert issue_get(runtime, [], auth)["statusCode"] == 200
    assert "UpdateItem" not in calls


def test_overlong_username_not_looked_up(runtime: Runtime, audit: MemoryAuditSink) -> None:
    calls = count_calls(runtime.clients.dynamodb)
    response = issue_get(runtime, [], basic("a" * 3000, "whatever"))
    assert response["statusCode"] == 401
    assert calls == Counter()
    failed = audit.events[-1]
    assert failed.reason == "invalid_username"
    assert failed.principal is not None
    assert len(failed.principal) < 200


def test_refresh_rejected_after_password_change(
    runtime: Runtime, users: Users, password_hashes: dict[str, str], audit: MemoryAuditSink
) -> None:
    token = login(runtime, users)
    changed = dict(password_hashes, alice=password_hashes["bob"])
    apply_policy(runtime.store, policy_text(changed))
    assert refresh(runtime, token)["statusCode"] == 401
    assert audit.events[-1].reason == "refresh_token_credential_changed"


def test_parser_crash_is_generic_500(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(event: Any) -> Any:
        raise RuntimeError("parser internals")

    monkeypatch.setattr(app, "parse_token_request", explode)
    response = issue_get(runtime, [])
    assert response["statusCode"] == 500
    assert "parser internals" not in response["body"]


def test_non_ascii_basic_header_is_401(runtime: Runtime) -> None:
    response = issue_get(runtime, [], "Basic \xe9")
    assert response["statusCode"] == 401


def test_unexpected_error_still_audited(
    runtime: Runtime, users: Users, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise KeyError("internal detail")

    monkeypatch.setattr(runtime.service, "_anonymous", explode)
    response = issue_get(runtime, [])
    assert response["statusCode"] == 500
    last = audit.events[-1]
    assert last.event_type == "service.unavailable"
    assert last.reason == "internal_error"
    assert "internal detail" not in json.dumps(last.to_record())


def test_unknown_name_locked_out_like_real_one(runtime: Runtime, clock: FakeClock) -> None:
    limit = runtime.settings.max_failed_logins
    statuses = [
        issue_get(runtime, [], basic("no-such-user", f"guess-{i}"))["statusCode"]
        for i in range(limit + 1)
    ]
    # A real user gets 401 ten times and then 429, so an unknown name must too.
    assert statuses == [401] * limit + [429]

    clock.advance(runtime.settings.lockout_seconds + 1)
    assert issue_get(runtime, [], basic("no-such-user", "again"))["statusCode"] == 401


def test_unknown_name_counter_expires(runtime: Runtime, clock: FakeClock) -> None:
    issue_get(runtime, [], basic("ghost", "x"))
    items = runtime.clients.dynamodb.scan(
        TableName=runtime.settings.table_name,
        FilterExpression="begins_with(pk, :prefix)",
        ExpressionAttributeValues={":prefix": {"S": "attempts#"}},
    )["Items"]
    assert len(items) == 1
    # Keyed by a digest, so the table does not hold the guessed name itself.
    assert "ghost" not in json.dumps(items)
    expires_at = int(items[0]["expires_at"]["N"])
    assert expires_at == int(clock.now) + 2 * runtime.settings.lockout_seconds


def test_operational_log_carries_request_id(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.StringIO()
    logger = Logger(
        service="regauth-test",
        logger_name="regauth-test",
        logger_handler=logging.StreamHandler(buffer),
    )
    traced = dataclasses.replace(runtime, logger=logger)

    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.service, "issue", explode)
    event = get_event({"service": [SERVICE]})
    event["requestContext"]["requestId"] = "req-trace-42"
    app.handle(event, traced)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line]
    failure = next(line for line in lines if line.get("message") == "token request failed")
    assert failure["request_id"] == "req-trace-42"
