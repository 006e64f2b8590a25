"""The regauth command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from regauth.passwords import verify_password

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regauth.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "password", ["s3cret", " spaced : colon ", "pässwörd"], ids=["plain", "spaces", "utf8"]
)
def test_hash_password_reads_stdin(password: str) -> None:
    result = run_cli("hash-password", stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(printed, password)
    assert password not in result.stdout + result.stderr


def test_hash_password_empty_rejected() -> None:
    result = run_cli("hash-password", stdin="\n")
    assert result.returncode == 1
    assert "empty" in result.stderr


def test_validate_policy_example() -> None:
    result = run_cli("validate-policy", "examples/policy.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("examples/policy.yaml: valid, version ")


def test_validate_policy_reports_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("users:\n  - name: alice\n    pasword_hash: x\n")
    result = run_cli("validate-policy", str(policy))
    assert result.returncode == 1
    assert f"{policy}:3:" in result.stderr


def test_serve_missing_policy_fails(tmp_path: Path) -> None:
    result = run_cli("serve", "--policy", str(tmp_path / "absent.yaml"), "--port", "0")
    assert result.returncode == 1
    assert "absent.yaml" in result.stderr


def test_apply_policy_invalid_file_changes_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("grants:\n  - to: user:ghost\n    repositories: [a]\n    actions: [pull]\n")
    result = run_cli("apply-policy", str(policy), "--table", "absent")
    assert result.returncode == 1
    assert f"{policy}:2:" in result.stderr


def test_serve_port_in_use_keeps_bundle(tmp_path: Path) -> None:
    import socket

    bundle = tmp_path / "root-certificates.pem"
    bundle.write_text("existing bundle\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert bundle.read_text() == "existing bundle\n"


def test_validate_policy_missing_file(tmp_path: Path) -> None:
    result = run_cli("validate-policy", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_hash_password_end_of_input() -> None:
    result = run_cli("hash-password", stdin="")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
