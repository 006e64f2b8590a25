"""IAM sign-in through the token handlers, with moto as DynamoDB and KMS and a fake STS."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from typing import Any

import jwt
import pytest

from functions.admin.app import handle as handle_admin
from functions.iam_token.app import handle as handle_iam_token
from functions.issue_token.app import handle as handle_token
from regauth.admin import AdminService
from regauth.audit import MemoryAuditSink
from regauth.config import Settings
from regauth.iam import SERVER_ID_HEADER
from regauth.policy import compile_policy
from regauth.policy_file import load_policy
from regauth.policy_store import PolicyStore
from regauth.runtime import Runtime, build_runtime, make_clients
from tests.functional.conftest import EVENTS, SERVICE, TABLE
from tests.iam_fakes import (
    ACCOUNT,
    ROLE_SESSION_ARN,
    SERVER_ID,
    USER_ARN,
    FakeSts,
    make_proof,
    role_credentials,
    tamper,
    user_credentials,
)

POLICY = f"""
roles:
  - name: ci
    description: Partner CI roles
    arns: ["arn:aws:iam::{ACCOUNT}:role/ci-*"]
  - name: robot
    arns: ["arn:aws:iam::{ACCOUNT}:user/deploy/*"]
groups:
  - name: partners
    members: [role:ci]
grants:
  - id: partner-pull
    to: group:partners
    repositories: ["partner/*"]
    actions: [pull]
  - id: robot-push
    to: role:robot
    repositories: ["partner/*"]
    actions: [pull, push]
"""

# The same policy without the `ci` role and its group membership.
POLICY_WITHOUT_CI = f"""
roles:
  - name: robot
    arns: ["arn:aws:iam::{ACCOUNT}:user/deploy/*"]
grants:
  - id: robot-push
    to: role:robot
    repositories: ["partner/*"]
    actions: [pull, push]
"""


def apply(text: str) -> None:
    PolicyStore(make_clients().dynamodb, TABLE).apply(compile_policy(load_policy(text)))


class CountingDynamo:
    """A DynamoDB client wrapper that counts calls by operation name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if callable(attribute):
            self.calls.append(name)
        return attribute


@pytest.fixture
def sts() -> FakeSts:
    fake = FakeSts()
    fake.add(role_credentials(), ROLE_SESSION_ARN)
    return fake


@pytest.fixture
def runtime(settings: Settings, sts: FakeSts) -> Runtime:
    iam_settings = Settings(
        table_name=settings.table_name,
        key_id=settings.key_id,
        services=settings.services,
        issuer=settings.issuer,
        iam_server_id=SERVER_ID,
    )
    clients = make_clients()
    apply(POLICY)
    counting = CountingDynamo(clients.dynamodb)
    clients = type(clients)(dynamodb=counting, kms=clients.kms)  # type: ignore[arg-type]
    return build_runtime(iam_settings, clients, audit=MemoryAuditSink(), sts_transport=sts)


def dynamo_calls(runtime: Runtime) -> list[str]:
    client = runtime.clients.dynamodb
    assert isinstance(client, CountingDynamo)
    return client.calls


def token_event(password: str) -> dict[str, Any]:
    credentials = base64.b64encode(f"aws-iam:{password}".encode()).decode()
    return {
        "httpMethod": "GET",
        "headers": {"Authorization": f"Basic {credentials}"},
        "queryStringParameters": {"service": SERVICE, "scope": "repository:partner/app:pull,push"},
        "requestContext": {"requestId": "r1", "identity": {"sourceIp": "127.0.0.1"}},
    }


def access_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    token = json.loads(response["body"])["token"]
    return jwt.decode(token, options={"verify_signature": False})["access"]


def test_iam_proof_issues_token(runtime: Runtime) -> None:
    response = handle_token(token_event(make_proof()), runtime)
    assert response["statusCode"] == 200
    assert access_of(response) == [
        {"type": "repository", "name": "partner/app", "actions": ["pull"]}
    ]


def test_iam_proof_cached(runtime: Runtime, sts: FakeSts) -> None:
    password = make_proof()
    handle_token(token_event(password), runtime)
    handle_token(token_event(password), runtime)
    assert len(sts.calls) == 1


@pytest.mark.parametrize(
    "password",
    [
        tamper(make_proof(), drop_headers=(SERVER_ID_HEADER,)),
        tamper(make_proof(server_id="other.example"), set_headers={SERVER_ID_HEADER: SERVER_ID}),
        make_proof(server_id="other.example"),
        "garbage",
    ],
    ids=["server-id-removed", "server-id-rewritten", "other-server", "malformed"],
)
def test_iam_proof_rejected(runtime: Runtime, password: str) -> None:
    assert handle_token(token_event(password), runtime)["statusCode"] == 401


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        (tamper(make_proof(), drop_headers=(SERVER_ID_HEADER,)), "missing_server_id_header"),
        (
            tamper(
                make_proof(server_id="other.example"), set_headers={SERVER_ID_HEADER: SERVER_ID}
            ),
            "sts_status_403",
        ),
        (make_proof(server_id="other.example"), "wrong_server_id"),
    ],
    ids=["server-id-removed", "server-id-rewritten", "other-server"],
)
def test_iam_proof_rejection_reason(runtime: Runtime, password: str, reason: str) -> None:
    handle_token(token_event(password), runtime)
    audit = runtime.audit
    assert isinstance(audit, MemoryAuditSink)
    assert audit.events[-1].reason == reason


def test_iam_proof_unmapped_role(runtime: Runtime, sts: FakeSts) -> None:
    sts.add(role_credentials(), f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy/s1")
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 401


def test_iam_route_issues_token(runtime: Runtime) -> None:
    event = json.loads((EVENTS / "iam_token.json").read_text())
    response = handle_iam_token(event, runtime)
    assert response["statusCode"] == 200
    assert access_of(response)[0]["actions"] == ["pull"]


def test_iam_route_without_arn(runtime: Runtime) -> None:
    event = json.loads((EVENTS / "iam_token.json").read_text())
    event = copy.deepcopy(event)
    del event["requestContext"]["identity"]["userArn"]
    assert handle_iam_token(event, runtime)["statusCode"] == 401


def test_iam_route_unmapped_arn(runtime: Runtime) -> None:
    event = json.loads((EVENTS / "iam_token.json").read_text())
    event["requestContext"]["identity"]["userArn"] = f"arn:aws:iam::{ACCOUNT}:user/other"
    assert handle_iam_token(event, runtime)["statusCode"] == 401


def test_iam_token_subject_is_role(runtime: Runtime) -> None:
    token = json.loads(handle_token(token_event(make_proof()), runtime)["body"])["token"]
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "role/ci"


def test_iam_user_maps_to_role(runtime: Runtime, sts: FakeSts) -> None:
    sts.add(user_credentials(), USER_ARN)
    response = handle_token(token_event(make_proof(user_credentials())), runtime)
    assert access_of(response) == [
        {"type": "repository", "name": "partner/app", "actions": ["pull", "push"]}
    ]


def test_iam_steady_state_one_read(runtime: Runtime) -> None:
    handle_token(token_event(make_proof()), runtime)
    calls = dynamo_calls(runtime)
    calls.clear()
    handle_token(token_event(make_proof()), runtime)
    assert calls == ["batch_get_item"]


def test_iam_removed_role_rejected(runtime: Runtime) -> None:
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 200
    apply(POLICY_WITHOUT_CI)
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 401


def test_iam_removed_role_audit_reason(runtime: Runtime) -> None:
    handle_token(token_event(make_proof()), runtime)
    apply(POLICY_WITHOUT_CI)
    handle_token(token_event(make_proof()), runtime)
    audit = runtime.audit
    assert isinstance(audit, MemoryAuditSink)
    assert audit.events[-1].reason == "unmapped_iam_principal"


def test_iam_added_role_admitted(runtime: Runtime) -> None:
    apply(POLICY_WITHOUT_CI)
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 401
    apply(POLICY)
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 200


def test_iam_route_removed_role_rejected(runtime: Runtime) -> None:
    event = json.loads((EVENTS / "iam_token.json").read_text())
    assert handle_iam_token(event, runtime)["statusCode"] == 200
    apply(POLICY_WITHOUT_CI)
    assert handle_iam_token(event, runtime)["statusCode"] == 401


def test_iam_rollback_restores_role(runtime: Runtime) -> None:
    apply(POLICY_WITHOUT_CI)
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 401
    PolicyStore(make_clients().dynamodb, TABLE).rollback(1)
    assert handle_token(token_event(make_proof()), runtime)["statusCode"] == 200


def admin_result(runtime: Runtime, **payload: Any) -> dict[str, Any]:
    admin = AdminService(runtime.clients.dynamodb, TABLE, MemoryAuditSink())
    response = handle_admin(payload, admin, "request-1")
    assert response["ok"] is True, response
    result: dict[str, Any] = response["result"]
    return result


def test_admin_lists_role_patterns(runtime: Runtime) -> None:
    principals = admin_result(runtime, action="list_principals")["principals"]
    role = next(entry for entry in principals if entry["name"] == "role:ci")
    assert role["arn_patterns"] == [f"arn:aws:iam::{ACCOUNT}:role/ci-*"]


def test_admin_explains_role(runtime: Runtime) -> None:
    result = admin_result(
        runtime, action="explain", principal="role:ci", scope="repository:partner/app:push"
    )
    (decision,) = result["decisions"]
    assert decision["granted"] is False


def test_iam_disabled_role_rejected(runtime: Runtime) -> None:
    assert admin_result(runtime, action="disable", principal="role:ci")["disabled"] is True
    response = handle_token(token_event(make_proof()), runtime)
    assert response["statusCode"] == 401
    audit = runtime.audit
    assert isinstance(audit, MemoryAuditSink)
    assert audit.events[-1].reason == "principal_disabled"


def test_iam_arn_checked_against_principal(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The role map sends the caller to `role:ci`, but the stored principal of the same
    # version lists other ARNs. The principal's own patterns decide.
    store = runtime.store
    original = store.get_principal_with_version

    def mismatched(name: str) -> Any:
        principal, version = original(name)
        if principal is not None:
            other = ("arn:aws:iam::000000000000:role/other",)
            principal = dataclasses.replace(principal, arn_patterns=other)
        return principal, version

    monkeypatch.setattr(store, "get_principal_with_version", mismatched)
    response = handle_token(token_event(make_proof()), runtime)
    assert response["statusCode"] == 401
    audit = runtime.audit
    assert isinstance(audit, MemoryAuditSink)
    assert audit.events[-1].reason == "unknown_principal"
