"""`regauth login-password` and the Docker credential helper, with fake credentials."""

from __future__ import annotations

import io
import json
import os

import boto3
import pytest
from botocore.credentials import Credentials

from regauth.cli import main
from regauth.iam import SERVER_ID_HEADER, IamVerifier, decode_proof
from regauth.login import LoginError, credential_helper, server_id_of
from tests.iam_fakes import USER_ARN, FakeSts

KEY_ID = "AKIAEXAMPLEUSERKEY01"
SECRET = "user-secret-key-for-tests"


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "REGAUTH_STS_REGION":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def verifier(server_id: str) -> tuple[IamVerifier, FakeSts]:
    sts = FakeSts()
    sts.add(Credentials(KEY_ID, SECRET), USER_ARN)
    return IamVerifier(server_id=server_id, regions=("us-east-1",), transport=sts), sts


@pytest.mark.parametrize(
    ("server_url", "expected"),
    [
        ("registry.example.com", "registry.example.com"),
        ("Registry.Example.com:5000", "registry.example.com:5000"),
        ("https://registry.example.com/v1/", "registry.example.com"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
    ],
    ids=["host", "host-port", "url", "loopback"],
)
def test_server_id_of(server_url: str, expected: str) -> None:
    assert server_id_of(server_url) == expected


@pytest.mark.parametrize("server_url", ["", "https://", "user@registry.example.com"])
def test_server_id_of_invalid(server_url: str) -> None:
    with pytest.raises(LoginError):
        server_id_of(server_url)


def test_login_password_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["login-password", "--registry", "registry.example.com"]) == 0
    password = capsys.readouterr().out.strip()
    check, _ = verifier("registry.example.com")
    assert check.verify(password).arn == USER_ARN


def test_login_password_region_option(capsys: pytest.CaptureFixture[str]) -> None:
    main(["login-password", "--registry", "r.example.com", "--region", "eu-west-1"])
    assert decode_proof(capsys.readouterr().out.strip()).region == "eu-west-1"


def test_login_password_signs_server_id(capsys: pytest.CaptureFixture[str]) -> None:
    main(["login-password", "--registry", "r.example.com:5000"])
    proof = decode_proof(capsys.readouterr().out.strip())
    assert proof.header(SERVER_ID_HEADER) == "r.example.com:5000"


def test_login_password_without_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The credential chain is replaced, because walking it would query metadata endpoints.
    monkeypatch.setattr(boto3.Session, "get_credentials", lambda self: None)
    assert main(["login-password", "--registry", "r.example.com"]) == 1
    assert "no AWS credentials" in capsys.readouterr().err


def test_helper_get() -> None:
    stdout = io.StringIO()
    assert credential_helper(["get"], io.StringIO("registry.example.com\n"), stdout) == 0
    output = json.loads(stdout.getvalue())
    assert output["Username"] == "aws-iam"
    assert output["ServerURL"] == "registry.example.com"
    check, sts = verifier("registry.example.com")
    assert check.verify(output["Secret"]).arn == USER_ARN
    assert len(sts.calls) == 1


@pytest.mark.parametrize("action", ["store", "erase"])
def test_helper_noop_actions(action: str) -> None:
    stdout = io.StringIO()
    payload = '{"ServerURL": "r.example.com", "Username": "x", "Secret": "y"}'
    assert credential_helper([action], io.StringIO(payload), stdout) == 0
    assert stdout.getvalue() == ""


def test_helper_list() -> None:
    stdout = io.StringIO()
    assert credential_helper(["list"], io.StringIO(""), stdout) == 0
    assert json.loads(stdout.getvalue()) == {}


def test_helper_unknown_action() -> None:
    assert credential_helper(["version"], io.StringIO(""), io.StringIO()) == 1


def test_helper_invalid_registry() -> None:
    stdout = io.StringIO()
    assert credential_helper(["get"], io.StringIO("https://"), stdout) == 1
    assert "invalid registry" in stdout.getvalue()
