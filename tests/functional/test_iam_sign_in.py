"""IAM sign-in through the token handlers, with moto as DynamoDB and KMS and a fake STS."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jwt
import pytest

from functions.iam_token.app import handle as handle_iam_token
from functions.issue_token.app import handle as handle_token
from regauth.audit import MemoryAuditSink
from regauth.config import Settings
from regauth.iam import SERVER_ID_HEADER, RoleMap
from regauth.models import Grant, Principal
from regauth.policy import CompiledPolicy
from regauth.runtime import Runtime, build_runtime, make_clients
from regauth.stores import DynamoStore
from tests.functional.conftest import EVENTS, SERVICE, TABLE
from tests.iam_fakes import (
    ACCOUNT,
    ROLE_SESSION_ARN,
    SERVER_ID,
    FakeSts,
    make_proof,
    role_credentials,
    tamper,
)

ROLES = RoleMap((("role:ci", (f"arn:aws:iam::{ACCOUNT}:role/ci-*",)),))


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
    grant = Grant("repository", "partner/*", frozenset({"pull"}), "partner-pull")
    DynamoStore(clients.dynamodb, TABLE).apply_policy(
        CompiledPolicy(version="v1", principals=(Principal("role:ci", (grant,)),))
    )
    return build_runtime(
        iam_settings, clients, audit=MemoryAuditSink(), sts_transport=sts, role_map=lambda: ROLES
    )


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
