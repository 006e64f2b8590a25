"""IAM sign-in end to end: a role in the embedded moto, `regauth login-password`, skopeo.

`regauth serve` sends proofs to its embedded moto server, which returns the
GetCallerIdentity caller for the roles created in it. moto does not check signatures, so
these tests show the wiring and regauth's own checks; the signature checks are
tested against a verifying fake STS in the functional tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from tests.e2e.oci import OciImage, read_image
from tests.iam_fakes import tamper
from tests.leakcheck import register_secret

if TYPE_CHECKING:
    from tests.e2e.conftest import Credentials, HttpClient, RegauthServer, Skopeo

pytestmark = pytest.mark.e2e

SERVICE = "registry.test"
IAM_USERNAME = "aws-iam"
SERVER_ID_HEADER = "x-regauth-server-id"
LOGIN_TIMEOUT = 60.0
TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def moto_session(regauth: RegauthServer) -> tuple[boto3.Session, str]:
    """Return a boto3 session and the endpoint of the moto server that `regauth serve` runs."""
    state = json.loads((regauth.state_dir / "local.json").read_text())
    session = boto3.Session(
        region_name=state["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    return session, str(state["endpoint"])


def assume_new_role(regauth: RegauthServer, role_name: str) -> dict[str, str]:
    """Create `role_name` in moto, assume it, and return the session's credentials."""
    session, endpoint = moto_session(regauth)
    iam = session.client("iam", endpoint_url=endpoint)
    role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=TRUST_POLICY)["Role"]
    sts = session.client("sts", endpoint_url=endpoint)
    credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="e2e")["Credentials"]
    register_secret(credentials["SecretAccessKey"])
    register_secret(credentials["SessionToken"])
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }


def login_password(role_environment: Mapping[str, str], tmp_path: Path) -> str:
    """Run `regauth login-password` with only the role's credentials in its environment.

    Signing is offline, so the command needs no endpoint: only regauth calls STS.
    """
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        **role_environment,
    }
    result = subprocess.run(
        [sys.executable, "-m", "regauth.cli", "login-password", "--registry", SERVICE],
        env=environment,
        capture_output=True,
        text=True,
        timeout=LOGIN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    password = result.stdout.strip()
    register_secret(password)
    return password


@pytest.fixture(scope="module")
def partner_password(regauth: RegauthServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A proof signed by an assumed role that the policy's `partner-ci` role admits."""
    environment = assume_new_role(regauth, "partner-ci-build")
    return login_password(environment, tmp_path_factory.mktemp("partner-login"))


@pytest.fixture(scope="module")
def outsider_password(regauth: RegauthServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A proof signed by an assumed role that no policy role admits."""
    environment = assume_new_role(regauth, "deploy")
    return login_password(environment, tmp_path_factory.mktemp("outsider-login"))


@pytest.fixture(scope="module")
def iam_credentials() -> Callable[[str], Credentials]:
    from tests.e2e.conftest import Credentials

    def make(password: str) -> Credentials:
        return Credentials(IAM_USERNAME, password)

    return make


def token_status(regauth: RegauthServer, http_client: HttpClient, password: str) -> int:
    from tests.e2e.conftest import Credentials

    credentials = Credentials(IAM_USERNAME, password)
    url = f"{regauth.token_url}?service={SERVICE}&scope=repository:partners/app:pull"
    return http_client.get(url, {"Authorization": credentials.basic_authorization}).status


@pytest.fixture(scope="module")
def pushed_partner_image(
    skopeo: Skopeo,
    app_image: OciImage,
    partner_password: str,
    iam_credentials: Callable[[str], Credentials],
) -> OciImage:
    result = skopeo.push(app_image, "partners/app:v1", iam_credentials(partner_password))
    assert result.returncode == 0, result.stderr
    return app_image


def test_iam_role_push_and_pull(
    skopeo: Skopeo,
    pushed_partner_image: OciImage,
    partner_password: str,
    iam_credentials: Callable[[str], Credentials],
    tmp_path: Path,
) -> None:
    credentials = iam_credentials(partner_password)
    result = skopeo.pull("partners/app:v1", tmp_path / "pulled", credentials)
    assert result.returncode == 0, result.stderr
    pulled = read_image(tmp_path / "pulled", "v1")
    assert pulled.manifest_digest == pushed_partner_image.manifest_digest
    assert pulled.file_content == pushed_partner_image.file_content


def test_iam_role_token_issued(
    regauth: RegauthServer, http_client: HttpClient, partner_password: str
) -> None:
    assert token_status(regauth, http_client, partner_password) == 200


def test_iam_role_outside_policy_rejected(
    regauth: RegauthServer, http_client: HttpClient, outsider_password: str
) -> None:
    assert token_status(regauth, http_client, outsider_password) == 401


@pytest.mark.parametrize(
    "change",
    [
        {"drop_headers": (SERVER_ID_HEADER,)},
        {"set_headers": {SERVER_ID_HEADER: "other-registry.example"}},
    ],
    ids=["server-id-removed", "server-id-changed"],
)
def test_iam_tampered_proof_rejected(
    regauth: RegauthServer,
    http_client: HttpClient,
    partner_password: str,
    change: dict[str, Any],
) -> None:
    password = tamper(partner_password, **change)
    register_secret(password)
    assert token_status(regauth, http_client, password) == 401


def test_iam_outside_policy_push_rejected(
    skopeo: Skopeo,
    public_image: OciImage,
    outsider_password: str,
    iam_credentials: Callable[[str], Credentials],
) -> None:
    result = skopeo.push(public_image, "partners/other:v1", iam_credentials(outsider_password))
    assert result.returncode != 0
    assert "invalid username/password" in result.stderr


def test_iam_route_not_served_locally(regauth: RegauthServer, http_client: HttpClient) -> None:
    response = http_client.request("POST", f"{regauth.url}/iam/token")
    assert response.status == 501
