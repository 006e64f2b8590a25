"""`regauth policy` and `regauth admin` against moto, and against a stack's admin function.

moto runs Lambda functions only in docker, so the `lambda.invoke` call is stubbed with
botocore's Stubber, which also checks the request the CLI sends.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from regauth.admin import AdminService
from regauth.audit import MemoryAuditSink
from regauth.cli import main
from regauth.policy_cli import admin_function_of_stack
from tests.functional.conftest import TABLE

OLD = """\
users:
  - name: alice
  - name: bob
grants:
  - id: team
    to: user:alice
    repositories: ["team/**"]
    actions: [pull]
  - id: bob-team
    to: user:bob
    repositories: ["team/**"]
    actions: [pull]
"""

NEW = """\
users:
  - name: alice
hosts:
  - name: ci
grants:
  - id: team
    to: user:alice
    repositories: ["team/**"]
    actions: [pull, push]
  - id: ci-build
    to: host:ci
    repositories: ["build/*"]
    actions: [push]
    source_ips: ["10.0.0.0/8"]
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(NEW)
    return old, new


def test_policy_validate_ok(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(files[1])]) == 0
    assert f"{files[1]}: valid, 3 principals" in capsys.readouterr().out


def test_policy_validate_lists_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("users:\n  - name: Alice\ngrants:\n  - to: host:nope\n    registry: [x]\n")
    assert main(["policy", "validate", str(bad)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith(f"{bad}:2:11: users[0].name: invalid user name 'Alice'")
    assert errors[1].startswith(f"{bad}:4:9: grants[0].to: unknown host 'host:nope'")
    assert errors[2].startswith(f"{bad}:5:16: grants[0].registry[0]: unknown registry resource")
    assert len(errors) == 3


def test_policy_validate_deep_nesting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("users: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["policy", "validate", str(deep)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"{deep}:1:23: lists and mappings are nested more than 16 levels deep, "
        "but a policy needs at most 4"
    ]


def test_policy_diff_against_table(
    key_id: str, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "apply", str(files[0]), "--table", TABLE]) == 0
    capsys.readouterr()
    assert main(["policy", "diff", str(files[1]), "--table", TABLE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "--- applied version 1"
    assert lines[2:] == [
        "identities added:",
        "  + host:ci",
        "identities removed:",
        "  - user:bob",
        "rights:",
        "  user:alice:",
        "    + allow push on repository team/** (rule team)",
        "  host:ci:",
        "    + allow push on repository build/* when source in 10.0.0.0/8 (rule ci-build)",
        "  user:bob:",
        "    - allow pull on repository team/** (rule bob-team)",
    ]


def test_policy_apply_twice(
    key_id: str, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "apply", str(files[0]), "--table", TABLE]) == 0
    assert "applied as version 1 (previous None)" in capsys.readouterr().out
    assert main(["policy", "apply", str(files[0]), "--table", TABLE]) == 0
    assert "unchanged, version 1 is already active" in capsys.readouterr().out


def test_policy_apply_rejected(
    key_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grants:\n  - to: user:ghost\n    repositories: [a]\n    actions: [pull]\n")
    assert main(["policy", "apply", str(bad), "--table", TABLE]) == 1
    assert f"{bad}:2:9:" in capsys.readouterr().err


def stub_lambda(
    monkeypatch: pytest.MonkeyPatch, function_name: str, expected: dict[str, Any], response: Any
) -> Stubber:
    """Make boto3's Lambda client return `response` for one invoke, checking the request."""
    client = boto3.client("lambda")
    stubber = Stubber(client)
    body = json.dumps(response).encode()
    stubber.add_response(
        "invoke",
        {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body))},
        {
            "FunctionName": function_name,
            "InvocationType": "RequestResponse",
            "Payload": json.dumps(expected).encode(),
        },
    )
    stubber.activate()
    real_client: Any = boto3.client

    def client_for(service: str, *args: Any, **kwargs: Any) -> Any:
        return client if service == "lambda" else real_client(service, *args, **kwargs)

    monkeypatch.setattr(boto3, "client", client_for)
    return stubber


def test_admin_function_name_invokes(
    key_id: str,
    files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "apply", str(files[1]), "--table", TABLE]) == 0
    payload = {
        "action": "explain",
        "actor": "regauth-cli",
        "principal": "host:ci",
        "scope": ["repository:build/app:push"],
        "source_ip": "10.1.2.3",
    }
    # The stubbed function returns what AdminService returns for the same payload.
    answer = AdminService(boto3.client("dynamodb"), TABLE, MemoryAuditSink()).handle(payload)
    stubber = stub_lambda(monkeypatch, "regauth-admin", payload, answer)
    capsys.readouterr()

    status = main(
        [
            "admin",
            "explain",
            "--principal",
            "host:ci",
            "--scope",
            "repository:build/app:push",
            "--source-ip",
            "10.1.2.3",
            "--function-name",
            "regauth-admin",
        ]
    )
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["result"]["decisions"][0]["granted"] is True
    stubber.assert_no_pending_responses()


def test_admin_stack_resolves_function(
    key_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"AdminFunctionName": {"Value": "stack-admin-fn"}},
    }
    boto3.client("cloudformation").create_stack(
        StackName="regauth-test", TemplateBody=json.dumps(template)
    )
    assert admin_function_of_stack("regauth-test") == "stack-admin-fn"

    expected = {"action": "list_principals", "actor": "regauth-cli"}
    answer = {"ok": True, "action": "list_principals", "result": {"principals": []}}
    stubber = stub_lambda(monkeypatch, "stack-admin-fn", expected, answer)
    assert main(["admin", "list_principals", "--stack", "regauth-test"]) == 0
    assert json.loads(capsys.readouterr().out) == answer
    stubber.assert_no_pending_responses()


def test_admin_error_exit_status(
    key_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = {"action": "rollback", "actor": "regauth-cli", "version": 7}
    answer = {"ok": False, "action": "rollback", "error": {"field": "version"}}
    stub_lambda(monkeypatch, "fn", expected, answer)
    assert main(["admin", "rollback", "--version", "7", "--function-name", "fn"]) == 1


def test_admin_missing_local_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "list_principals", "--state-dir", str(tmp_path)]) == 1
    assert "local.json not found" in capsys.readouterr().err
