"""regauth in front of a real registry (Debian's distribution 2.8.2), driven by skopeo.

The registry rejects a token that lacks an action with 401 and `error="insufficient_scope"`
in its Bearer challenge, not with 403. The expected client messages below are those of
skopeo 1.9.3 against that registry.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.oci import MANIFEST_MEDIA_TYPE, OciImage, read_image
from tests.leakcheck import active_collector, register_secret

if TYPE_CHECKING:
    # pytest imports conftest itself, so a runtime import would load a second copy.
    from tests.e2e.conftest import (
        Credentials,
        HttpClient,
        HttpResponse,
        RegauthServer,
        RegistryServer,
        Skopeo,
        Users,
    )

pytestmark = pytest.mark.e2e

# The `service` that the regauth and registry fixtures are configured with.
SERVICE = "registry.test"

# skopeo prints this when the token endpoint rejects the credentials with 401.
SKOPEO_BAD_CREDENTIALS = "invalid username/password"
# The registry's message for its UNAUTHORIZED error code, which skopeo prints after the
# registry rejects a token that lacks the action.
REGISTRY_UNAUTHORIZED = "authentication required"

# Go's time.RFC3339, which Docker's client uses to decode `issued_at`.
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a `WWW-Authenticate` value into its scheme and its quoted parameters."""
    scheme, _, parameters = header.partition(" ")
    return scheme, dict(CHALLENGE_PARAMETER.findall(parameters))


def token_url(regauth: RegauthServer, **parameters: str) -> str:
    return f"{regauth.token_url}?{urllib.parse.urlencode(parameters)}"


@pytest.fixture(scope="module")
def request_token(
    regauth: RegauthServer, http_client: HttpClient
) -> Callable[[Credentials, str], str]:
    """Return a function that fetches the access token regauth issues for one scope."""

    def request(credentials: Credentials, scope: str) -> str:
        url = token_url(regauth, service=SERVICE, scope=scope)
        response = http_client.get(url, {"Authorization": credentials.basic_authorization})
        assert response.status == 200, response.body
        token: str = json.loads(response.body)["access_token"]
        register_secret(token)
        return token

    return request


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def push(skopeo: Skopeo, image: OciImage, reference: str, credentials: Credentials) -> OciImage:
    result = skopeo.push(image, reference, credentials)
    if result.returncode != 0:
        pytest.fail(f"push of {reference} as {credentials.username} failed:\n{result.stderr}")
    return image


@pytest.fixture(scope="module")
def pushed_app(skopeo: Skopeo, app_image: OciImage, users: Users) -> OciImage:
    """`app_image` after the pusher pushed it as `team/app:v1`."""
    return push(skopeo, app_image, "team/app:v1", users.pusher)


@pytest.fixture(scope="module")
def pushed_public(skopeo: Skopeo, public_image: OciImage, users: Users) -> OciImage:
    """`public_image` after the pusher pushed it as `public/base:v1`."""
    return push(skopeo, public_image, "public/base:v1", users.pusher)


def test_registry_challenge_names_regauth(
    registry: RegistryServer, regauth: RegauthServer, http_client: HttpClient
) -> None:
    response = http_client.get(f"{registry.url}/v2/")
    scheme, parameters = parse_challenge(response.headers["WWW-Authenticate"])

    assert response.status == 401
    assert scheme == "Bearer"
    assert parameters["realm"] == regauth.token_url
    assert parameters["service"] == SERVICE


def test_pusher_pull_returns_pushed_image(
    skopeo: Skopeo, pushed_app: OciImage, users: Users, tmp_path: Path
) -> None:
    result = skopeo.pull("team/app:v1", tmp_path / "pulled", users.pusher)
    assert result.returncode == 0, result.stderr

    pulled = read_image(tmp_path / "pulled", "v1")
    assert pulled.manifest_digest == pushed_app.manifest_digest
    assert pulled.layer_digest == pushed_app.layer_digest
    assert pulled.diff_id == pushed_app.diff_id
    assert pulled.file_content == pushed_app.file_content


def test_puller_pull_returns_pushed_image(
    skopeo: Skopeo, pushed_app: OciImage, users: Users, tmp_path: Path
) -> None:
    result = skopeo.pull("team/app:v1", tmp_path / "pulled", users.puller)
    assert result.returncode == 0, result.stderr

    pulled = read_image(tmp_path / "pulled", "v1")
    assert pulled.manifest_digest == pushed_app.manifest_digest
    assert pulled.layer_digest == pushed_app.layer_digest


@pytest.fixture(scope="module")
def puller_push(
    skopeo: Skopeo, app_image: OciImage, users: Users
) -> subprocess.CompletedProcess[str]:
    """The puller's attempt to push `app_image` as `team/other:v1`."""
    return skopeo.push(app_image, "team/other:v1", users.puller)


def test_puller_push_rejected(puller_push: subprocess.CompletedProcess[str]) -> None:
    assert puller_push.returncode != 0
    assert REGISTRY_UNAUTHORIZED in puller_push.stderr


def test_puller_push_stores_nothing(
    puller_push: subprocess.CompletedProcess[str],
    registry: RegistryServer,
    request_token: Callable[[Credentials, str], str],
    users: Users,
    http_client: HttpClient,
) -> None:
    # The puller may read team/other, so a 404 here proves that no manifest was stored.
    token = request_token(users.puller, "repository:team/other:pull")
    headers = {**bearer(token), "Accept": MANIFEST_MEDIA_TYPE}
    response = http_client.get(f"{registry.url}/v2/team/other/manifests/v1", headers)

    assert response.status == 404


@pytest.mark.parametrize("user", ["nobody", "anonymous"], ids=["nobody", "anonymous"])
def test_team_pull_rejected(
    skopeo: Skopeo, pushed_app: OciImage, users: Users, tmp_path: Path, user: str
) -> None:
    credentials = None if user == "anonymous" else getattr(users, user)
    result = skopeo.pull("team/app:v1", tmp_path / "pulled", credentials)

    assert result.returncode != 0
    assert REGISTRY_UNAUTHORIZED in result.stderr
    assert not (tmp_path / "pulled" / "index.json").exists()


def test_anonymous_pull_public_image(
    skopeo: Skopeo, pushed_public: OciImage, tmp_path: Path
) -> None:
    result = skopeo.pull("public/base:v1", tmp_path / "pulled", None)
    assert result.returncode == 0, result.stderr

    pulled = read_image(tmp_path / "pulled", "v1")
    assert pulled.manifest_digest == pushed_public.manifest_digest
    assert pulled.layer_digest == pushed_public.layer_digest
    assert pulled.file_content == pushed_public.file_content


def test_token_wrong_password_rejected(
    regauth: RegauthServer, users: Users, http_client: HttpClient
) -> None:
    wrong = dataclasses.replace(users.puller, password=users.puller.password + "x")
    url = token_url(regauth, service=SERVICE, scope="repository:team/app:pull")
    response = http_client.get(url, {"Authorization": wrong.basic_authorization})

    assert response.status == 401
    scheme, parameters = parse_challenge(response.headers.get("WWW-Authenticate", ""))
    assert scheme == "Basic"
    assert parameters["realm"] == "regauth"
    assert response.headers.get_content_type() == "application/json"

    body = json.loads(response.body)
    assert set(body) == {"errors"}
    error = body["errors"][0]
    # UNAUTHORIZED is the registry API's error code for a 401 (distribution errcode).
    assert error["code"] == "UNAUTHORIZED"
    assert error["message"] == "invalid username or password"


def test_skopeo_wrong_password_rejected(
    skopeo: Skopeo, pushed_app: OciImage, users: Users, tmp_path: Path
) -> None:
    wrong = dataclasses.replace(users.pusher, password=users.pusher.password + "x")
    result = skopeo.pull("team/app:v1", tmp_path / "pulled", wrong)

    assert result.returncode != 0
    assert SKOPEO_BAD_CREDENTIALS in result.stderr


def test_catalog_lists_pushed_repository(
    registry: RegistryServer,
    request_token: Callable[[Credentials, str], str],
    users: Users,
    http_client: HttpClient,
    pushed_app: OciImage,
) -> None:
    token = request_token(users.cataloger, "registry:catalog:*")
    response = http_client.get(f"{registry.url}/v2/_catalog", bearer(token))

    assert response.status == 200
    assert "team/app" in json.loads(response.body)["repositories"]


def test_catalog_without_grant_rejected(
    registry: RegistryServer,
    request_token: Callable[[Credentials, str], str],
    users: Users,
    http_client: HttpClient,
) -> None:
    token = request_token(users.pusher, "registry:catalog:*")
    response = http_client.get(f"{registry.url}/v2/_catalog", bearer(token))
    _, parameters = parse_challenge(response.headers.get("WWW-Authenticate", ""))

    assert response.status == 401
    assert parameters.get("error") == "insufficient_scope"


@pytest.fixture(scope="module")
def login_response(regauth: RegauthServer, users: Users, http_client: HttpClient) -> HttpResponse:
    """The response to the token request `docker login` sends: Basic auth, no scope."""
    url = token_url(regauth, service=SERVICE, offline_token="true", client_id="docker")
    return http_client.get(url, {"Authorization": users.puller.basic_authorization})


def test_login_response_fields(login_response: HttpResponse) -> None:
    assert login_response.status == 200, login_response.body
    body = json.loads(login_response.body)

    assert isinstance(body["token"], str)
    assert isinstance(body["access_token"], str)
    assert isinstance(body["refresh_token"], str)
    assert type(body["expires_in"]) is int
    assert body["expires_in"] >= 60
    assert RFC3339.fullmatch(body["issued_at"]), body["issued_at"]

    issued_at = datetime.fromisoformat(body["issued_at"])
    assert abs(datetime.now(UTC) - issued_at) < timedelta(minutes=2)


def test_login_response_not_cached(login_response: HttpResponse) -> None:
    # RFC 6749 section 5.1: a response that carries tokens must not be stored.
    assert login_response.headers.get("Cache-Control") == "no-store"


def test_login_token_opens_registry(
    login_response: HttpResponse, registry: RegistryServer, http_client: HttpClient
) -> None:
    token = json.loads(login_response.body)["token"]
    response = http_client.get(f"{registry.url}/v2/", bearer(token))

    assert response.status == 200


def test_refresh_token_pulls_manifest(
    login_response: HttpResponse,
    regauth: RegauthServer,
    registry: RegistryServer,
    http_client: HttpClient,
    pushed_app: OciImage,
) -> None:
    refresh_token = json.loads(login_response.body)["refresh_token"]
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "service": SERVICE,
        "scope": "repository:team/app:pull",
        "client_id": "docker",
    }
    response = http_client.post_form(regauth.token_url, form)
    assert response.status == 200, response.body

    access_token = json.loads(response.body)["access_token"]
    headers = {**bearer(access_token), "Accept": MANIFEST_MEDIA_TYPE}
    manifest = http_client.get(f"{registry.url}/v2/team/app/manifests/v1", headers)
    assert manifest.status == 200
    assert manifest.headers.get("Docker-Content-Digest") == pushed_app.manifest_digest


# Written last in this module on purpose: it reads the archive after every test
# above has made its token requests.
AUDIT_WAIT_SECONDS = 15.0


def _token_requests(regauth: RegauthServer) -> list[dict[str, object]]:
    """Return the local server's access log lines for /token, one per token request."""
    lines = []
    for text in regauth.process.log_path.read_text(errors="replace").splitlines():
        if not text.startswith("{"):
            continue
        line = json.loads(text)
        if line.get("message") == "request" and line.get("path") == "/token":
            lines.append(line)
    return lines


def _archived_events(regauth: RegauthServer) -> tuple[list[dict[str, object]], str]:
    command = [
        sys.executable,
        "-m",
        "regauth.cli",
        "audit",
        "search",
        "--state-dir",
        str(regauth.state_dir),
        "--since",
        "2h",
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stdout


def test_audit_archive_records_every_token_request(
    regauth: RegauthServer, pushed_app: OciImage, users: Users, http_client: HttpClient
) -> None:
    # A failed login of its own, so the test does not depend on the ones above.
    wrong = dataclasses.replace(users.puller, password=users.puller.password + "x")
    url = token_url(regauth, service=SERVICE, scope="repository:team/app:pull")
    assert http_client.get(url, {"Authorization": wrong.basic_authorization}).status == 401

    deadline = time.monotonic() + AUDIT_WAIT_SECONDS
    while True:
        # The server writes a request's audit event a moment before its request log
        # line, so both are read again until they agree or the wait runs out.
        requests = _token_requests(regauth)
        events, text = _archived_events(regauth)
        decisions = [
            e for e in events if e["event_type"] in ("token.issued", "authentication.failed")
        ]
        if len(decisions) == len(requests) or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    issued = [e for e in events if e["event_type"] == "token.issued"]
    failed = [e for e in events if e["event_type"] == "authentication.failed"]
    successful_requests = [r for r in requests if r["status"] == 200]
    assert len(issued) == len(successful_requests)
    assert len(decisions) == len(requests)
    assert any(e["principal"] == "user:puller" and e["reason"] == "wrong_password" for e in failed)
    assert any(e["principal"] == "user:pusher" for e in issued)
    collector = active_collector()
    assert collector is not None
    leaked = [secret for secret in collector.secrets if secret in text]
    assert leaked == []
