"""A host's API key through the real registry: it pushes, and stops working once rotated.

The key is created and rotated with `regauth admin --state-dir`, as an admin would
against the local service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.oci import OciImage

if TYPE_CHECKING:
    from tests.e2e.conftest import RegauthServer, Skopeo

pytestmark = pytest.mark.e2e

ADMIN_TIMEOUT = 60.0
# skopeo prints this when the token endpoint rejects the credentials with 401.
SKOPEO_BAD_CREDENTIALS = "invalid username/password"


def admin(regauth: RegauthServer, action: str, *arguments: str) -> dict[str, Any]:
    """Run `regauth admin ACTION` against the running service and return its result."""
    command = [
        sys.executable,
        "-m",
        "regauth.cli",
        "admin",
        action,
        *arguments,
        "--state-dir",
        str(regauth.state_dir),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=ADMIN_TIMEOUT, check=False
    )
    assert completed.returncode == 0, completed.stderr
    response: dict[str, Any] = json.loads(completed.stdout)
    result: dict[str, Any] = response["result"]
    return result


def host_credentials(result: dict[str, Any]) -> Any:
    from tests.e2e.conftest import Credentials

    return Credentials(result["username"], result["api_key"])


@pytest.fixture(scope="module")
def first_key(regauth: RegauthServer) -> dict[str, Any]:
    return admin(regauth, "create_host_key", "--principal", "host:builder")


def test_host_key_pushes(skopeo: Skopeo, app_image: OciImage, first_key: dict[str, Any]) -> None:
    result = skopeo.push(app_image, "builds/app:v1", host_credentials(first_key))
    assert result.returncode == 0, result.stderr


def test_host_key_outside_grant_rejected(
    skopeo: Skopeo, app_image: OciImage, first_key: dict[str, Any]
) -> None:
    result = skopeo.push(app_image, "team/builder:v1", host_credentials(first_key))
    assert result.returncode != 0


def test_rotated_key_replaces_old(
    regauth: RegauthServer, skopeo: Skopeo, app_image: OciImage, first_key: dict[str, Any]
) -> None:
    rotated = admin(regauth, "rotate_host_key", "--principal", "host:builder")
    assert rotated["api_key"] != first_key["api_key"]

    old = skopeo.push(app_image, "builds/app:v2", host_credentials(first_key))
    assert old.returncode != 0
    assert SKOPEO_BAD_CREDENTIALS in old.stderr

    new = skopeo.push(app_image, "builds/app:v2", host_credentials(rotated))
    assert new.returncode == 0, new.stderr


def test_policy_diff_local_no_changes(regauth: RegauthServer, policy_file: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "regauth.cli",
        "policy",
        "diff",
        str(policy_file),
        "--state-dir",
        str(regauth.state_dir),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=ADMIN_TIMEOUT, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "no changes"
