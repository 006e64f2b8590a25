"""`regauth apply-policy` against a moto table, as an admin would run it against a stack."""

from pathlib import Path

import boto3
import pytest

from regauth.cli import main
from regauth.stores import DynamoStore
from tests.functional.conftest import TABLE


def test_apply_policy_writes_principals(
    key_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "users:\n  - name: dana\ngrants:\n"
        "  - to: user:dana\n    repositories: ['dana/**']\n    actions: [pull]\n"
    )
    assert main(["apply-policy", str(policy), "--table", TABLE]) == 0
    assert "applied version" in capsys.readouterr().out

    store = DynamoStore(boto3.client("dynamodb"), TABLE)
    dana = store.get_principal("user:dana")
    assert dana is not None
    assert [grant.pattern for grant in dana.grants] == ["dana/**"]
    assert store.get_principal("anonymous") is not None


def test_apply_policy_missing_table(
    key_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("users: []\n")
    assert main(["apply-policy", str(policy), "--table", "no-such-table"]) == 1
    assert "DynamoDB" in capsys.readouterr().err
