"""Fixtures for handler tests: a moto account with the template's table and key."""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from moto import mock_aws

from regauth.audit import MemoryAuditSink
from regauth.config import Settings
from regauth.local import provision
from regauth.passwords import hash_password
from regauth.policy import compile_policy
from regauth.policy_file import load_policy
from regauth.runtime import Runtime, build_runtime, make_clients
from regauth.stores import DynamoStore
from regauth.template import load_template
from tests.leakcheck import register_secret

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
SERVICE = "registry.test"
OTHER_SERVICE = "registry-two.test"
ISSUER = "regauth-test"
TABLE = "regauth-test"


class FakeClock:
    """A settable clock, so tests can expire tokens without sleeping."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Users:
    """Per-run random passwords of the test policy's users."""

    alice: str
    bob: str
    carol: str
    ops: str


@pytest.fixture(scope="session")
def users() -> Users:
    # One password contains colons, since Basic credentials split on the first one.
    users = Users(
        alice="alice:" + secrets.token_urlsafe(12) + ":x",
        bob=secrets.token_urlsafe(16),
        carol=secrets.token_urlsafe(16),
        ops=secrets.token_urlsafe(16),
    )
    for password in (users.alice, users.bob, users.carol, users.ops):
        register_secret(password)
    return users


@pytest.fixture(scope="session")
def password_hashes(users: Users) -> dict[str, str]:
    # Argon2id costs tens of milliseconds, so each password is hashed once per run.
    return {name: hash_password(getattr(users, name)) for name in ("alice", "bob", "carol", "ops")}


def policy_text(hashes: dict[str, str], *, disabled: tuple[str, ...] = ()) -> str:
    lines = ["users:"]
    for name, password_hash in hashes.items():
        lines.append(f"  - name: {name}")
        lines.append(f'    password_hash: "{password_hash}"')
        if name in disabled:
            lines.append("    disabled: true")
    lines += [
        "groups:",
        "  - name: developers",
        "    members: [user:alice]",
        "grants:",
        "  - id: developers-team",
        "    to: group:developers",
        '    repositories: ["team/**"]',
        "    actions: [pull, push]",
        "  - id: bob-team-pull",
        "    to: user:bob",
        '    repositories: ["team/**"]',
        "    actions: [pull]",
        "  - id: public-pull",
        "    to: anonymous",
        '    repositories: ["public/*"]',
        "    actions: [pull]",
        "  - id: ops-catalog",
        "    to: user:ops",
        "    registry: [catalog]",
        "  - id: ops-everything",
        "    to: user:ops",
        '    repositories: ["**"]',
        '    actions: ["*"]',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A moto account. Real credentials and endpoints are removed from the environment."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def key_id(aws: None) -> str:
    return provision(load_template(ROOT / "template.yaml"), TABLE)


@pytest.fixture
def settings(key_id: str) -> Settings:
    return Settings(
        table_name=TABLE, key_id=key_id, services=(SERVICE, OTHER_SERVICE), issuer=ISSUER
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def audit() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def runtime(
    settings: Settings, password_hashes: dict[str, str], clock: FakeClock, audit: MemoryAuditSink
) -> Runtime:
    runtime = build_runtime(settings, make_clients(), audit=audit, clock=clock)
    apply_policy(runtime.store, policy_text(password_hashes))
    return runtime


def apply_policy(store: DynamoStore, text: str) -> None:
    store.apply_policy(compile_policy(load_policy(text)))


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return copy.deepcopy(event)


def basic(user: str, password: str) -> str:
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    register_secret(header)
    return header


def get_event(
    query: dict[str, list[str]], authorization: str | None = None, source_ip: str = "198.51.100.7"
) -> dict[str, Any]:
    """The sample GET event with its query and Authorization header replaced."""
    event = load_event("get_token.json")
    headers = {k: v for k, v in event["headers"].items() if k != "Authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    event["headers"] = headers
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["multiValueQueryStringParameters"] = query or None
    event["queryStringParameters"] = {k: v[-1] for k, v in query.items()} or None
    event["requestContext"]["identity"]["sourceIp"] = source_ip
    return event


def post_event(form: dict[str, str]) -> dict[str, Any]:
    event = load_event("post_token_password.json")
    event["body"] = urlencode(form)
    return event


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON body, registering any token in it as a secret for the leak check."""
    body: dict[str, Any] = json.loads(response["body"])
    if isinstance(body, dict):
        for name in ("token", "access_token", "refresh_token"):
            register_secret(body.get(name))
    return body


def verify_token(token: str, root_pem: bytes, *, service: str = SERVICE) -> dict[str, Any]:
    """Verify a token as a registry does: x5c leaf chains to the root, then ES256."""
    header = jwt.get_unverified_header(token)
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    root = x509.load_pem_x509_certificate(root_pem)
    leaf.verify_directly_issued_by(root)
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key,
        algorithms=["ES256"],
        audience=service,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False},
    )
    return claims
