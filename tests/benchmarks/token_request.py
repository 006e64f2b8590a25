"""Measure a warm token request: AWS calls made and handler CPU time.

Run with `make bench` (`python -m tests.benchmarks.token_request` from the checkout).
The script checks these targets and exits 1 when one is missed:

- a warm request makes exactly one DynamoDB call (a `BatchGetItem` of the active
  policy version and the principal's items) and no KMS, S3 or STS call;
- repeated credentials are not re-hashed;
- the handler's median CPU time per warm request is under 1 ms, measured with the
  store replaced by an in-memory one so that moto's own CPU time is not counted.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "registry.bench"
PASSWORD = "bench-password-that-is-long-enough"
WARM_REQUESTS = 2000
CPU_TARGET_MS = 1.0


def token_event(authorization: str) -> dict[str, Any]:
    return {
        "httpMethod": "GET",
        "path": "/token",
        "headers": {"Authorization": authorization, "User-Agent": "bench"},
        "multiValueHeaders": {"Authorization": [authorization], "User-Agent": ["bench"]},
        "queryStringParameters": {"service": SERVICE, "scope": "repository:team/app:pull,push"},
        "multiValueQueryStringParameters": {
            "service": [SERVICE],
            "scope": ["repository:team/app:pull,push"],
        },
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {"requestId": "bench", "identity": {"sourceIp": "127.0.0.1"}},
    }


class InMemoryStore:
    """Returns one principal without any I/O, to isolate the handler's own CPU time."""

    def __init__(self, principal: Any) -> None:
        self._principal = principal

    def get_principal(self, name: str) -> Any:
        return self._principal if name == self._principal.name else None

    # The first request of a new service verifies the password in full, which counts
    # the attempt and resets the counter. Warm requests must do neither.
    def reserve_login_attempt(self, name: str, now: int, window: int) -> tuple[int, int]:
        self.writes += 1
        return 1, now

    def reset_failed_logins(self, name: str) -> None:
        self.writes += 1

    writes = 0

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the warm path called store.{name}")


def main() -> int:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    with mock_aws():
        return run()


def run() -> int:
    from functions.issue_token import app
    from regauth.audit import MemoryAuditSink
    from regauth.config import Settings
    from regauth.local import provision
    from regauth.passwords import hash_password
    from regauth.policy import compile_policy
    from regauth.policy_file import load_policy
    from regauth.runtime import build_runtime, make_clients
    from regauth.service import TokenService
    from regauth.template import load_template

    key_id = provision(load_template(ROOT / "template.yaml"), "bench")
    settings = Settings(table_name="bench", key_id=key_id, services=(SERVICE,), issuer="bench")
    clients = make_clients()
    runtime = build_runtime(settings, clients, audit=MemoryAuditSink())
    policy = (
        f'users:\n  - name: alice\n    password_hash: "{hash_password(PASSWORD)}"\n'
        "grants:\n  - to: user:alice\n    repositories: ['team/**']\n    actions: [pull, push]\n"
    )
    runtime.store.apply_policy(compile_policy(load_policy(policy)))
    authorization = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    event = token_event(authorization)

    calls: Counter[str] = Counter()

    def record(event_name: str, **_: Any) -> None:
        calls[event_name.removeprefix("before-call.")] += 1

    for client in (clients.dynamodb, clients.kms):
        client.meta.events.register("before-call.*.*", record)

    started = time.perf_counter()
    assert app.handle(event, runtime)["statusCode"] == 200
    cold_ms = (time.perf_counter() - started) * 1000
    cold_calls = dict(calls)
    calls.clear()

    assert app.handle(event, runtime)["statusCode"] == 200
    warm_calls = dict(calls)

    # Handler CPU time with the store in memory: parse, authenticate (cached),
    # authorize, sign, audit into memory, render.
    principal = runtime.store.get_principal("user:alice")
    store: Any = InMemoryStore(principal)
    service = TokenService(settings, store, runtime.signing, MemoryAuditSink())
    isolated = dataclasses.replace(runtime, service=service)
    assert app.handle(event, isolated)["statusCode"] == 200
    writes_after_warm_up = store.writes
    samples = []
    for _ in range(WARM_REQUESTS):
        before = time.process_time_ns()
        app.handle(event, isolated)
        samples.append((time.process_time_ns() - before) / 1e6)
    samples.sort()
    median = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]

    print(f"cold request: {cold_ms:.1f} ms wall, AWS calls {cold_calls}")
    print(f"warm request AWS calls: {warm_calls}")
    print(
        f"warm handler CPU over {WARM_REQUESTS} requests: median {median:.3f} ms, p99 {p99:.3f} ms"
    )

    failures = []
    if store.writes != writes_after_warm_up:
        failures.append("warm requests wrote to the store (password not served from cache)")
    if warm_calls != {"dynamodb.BatchGetItem": 1}:
        failures.append(f"warm request made {warm_calls}, expected one dynamodb.BatchGetItem")
    if median >= CPU_TARGET_MS:
        failures.append(f"median handler CPU {median:.3f} ms is not under {CPU_TARGET_MS} ms")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
