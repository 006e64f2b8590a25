"""Fixtures that run regauth, a distribution registry and skopeo on 127.0.0.1.

Each server gets a free port, a directory under pytest's tmp path and a log file there.
Every process is stopped at the end of the session, also when a test fails, and the
logs of all servers started so far are attached to the report of every failed test.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.client import HTTPException
from pathlib import Path

import pytest
import yaml

from regauth.passwords import hash_password
from tests.e2e.oci import OciImage, build_image
from tests.leakcheck import register_log_file, register_secret

HOST = "127.0.0.1"
BUILDER_HOST = "builder"
SERVICE = "registry.test"
ISSUER = "regauth-e2e"
# moto's default account, in which the IAM tests create their roles.
MOTO_ACCOUNT = "123456789012"
# The policy's IAM role: roles named `partner-ci-*` in moto may push `partners/**`.
PARTNER_ROLE_PATTERN = f"arn:aws:iam::{MOTO_ACCOUNT}:role/partner-ci-*"

REGAUTH_READY_TIMEOUT = 60.0
REGISTRY_READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0
SKOPEO_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
LOG_TAIL_LINES = 200

MISSING_TOOL_MESSAGE = (
    "{tool} was not found on PATH. The e2e tests need the Debian packages "
    "docker-registry and skopeo: run .ci/run, or apt-get install docker-registry skopeo."
)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password from the generated policy."""

    username: str
    password: str = field(repr=False)

    @property
    def basic_authorization(self) -> str:
        """The `Authorization` header value for HTTP Basic authentication (RFC 7617)."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    @property
    def skopeo_creds(self) -> str:
        """The `USERNAME:PASSWORD` value of skopeo's `--src-creds` and `--dest-creds`."""
        return f"{self.username}:{self.password}"


@dataclass(frozen=True, slots=True)
class Users:
    """The users in the generated policy, each with a random password for this run."""

    pusher: Credentials
    puller: Credentials
    nobody: Credentials
    cataloger: Credentials

    def all(self) -> tuple[Credentials, ...]:
        return (self.pusher, self.puller, self.nobody, self.cataloger)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """Status, headers and body of one HTTP exchange, whatever the status."""

    status: int
    headers: Message
    body: bytes


class HttpClient:
    """A urllib client that ignores proxy settings, so requests stay on 127.0.0.1.

    urllib reads `http_proxy` from the environment by default, which would send these
    requests to another host. Error statuses are returned, not raised.
    """

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request and return the response. `form` is sent URL-encoded."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        # Every URL here is built by these fixtures from http://127.0.0.1 and a port.
        request = urllib.request.Request(  # noqa: S310
            url, data=data, method=method, headers=dict(headers or {})
        )
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self._opener.open(request, timeout=HTTP_TIMEOUT) as response:
                return HttpResponse(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return HttpResponse(error.code, error.headers, error.read())

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
        return self.request("GET", url, headers)

    def post_form(
        self, url: str, form: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        return self.request("POST", url, headers, form)


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """A server process started by a fixture, with its combined stdout and stderr log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def read_log_tail(self) -> str:
        """Return the last `LOG_TAIL_LINES` lines of the log."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Send SIGTERM and wait, then SIGKILL a process that does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


@dataclass(frozen=True, slots=True)
class RegauthServer:
    """A running `regauth serve` and the URLs it serves."""

    url: str
    state_dir: Path
    process: ManagedProcess

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def certificates_url(self) -> str:
        return f"{self.url}/certificates"

    @property
    def root_bundle(self) -> Path:
        """The PEM root CA bundle that regauth writes once it is ready."""
        return self.state_dir / "root-certificates.pem"


@dataclass(frozen=True, slots=True)
class RegistryServer:
    """A running distribution registry that trusts regauth's root CA."""

    host: str
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@dataclass(frozen=True, slots=True)
class Skopeo:
    """Runs skopeo copies between OCI layouts and the test registry.

    `environment` points HOME, the auth file and the registries configuration into
    the test's tmp directory, so no user or system credentials take part.
    """

    binary: str
    registry_host: str
    environment: Mapping[str, str]

    def _copy(
        self, arguments: list[str], credentials: Credentials | None
    ) -> subprocess.CompletedProcess[str]:
        command = [self.binary, "--insecure-policy", "copy", *arguments]
        # The command line contains the password, and pytest prints the command of a
        # failed result or timeout, so both carry a copy with the password replaced.
        redacted = _redact(command, credentials)
        try:
            result = subprocess.run(
                command,
                env=dict(self.environment),
                capture_output=True,
                text=True,
                timeout=SKOPEO_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise subprocess.TimeoutExpired(redacted, SKOPEO_TIMEOUT, error.output) from None
        return subprocess.CompletedProcess(
            redacted, result.returncode, result.stdout, result.stderr
        )

    def push(
        self, image: OciImage, reference: str, credentials: Credentials | None
    ) -> subprocess.CompletedProcess[str]:
        """Copy `image` to `reference` (`repository:tag`) on the registry."""
        if credentials is None:
            auth = ["--dest-no-creds"]
        else:
            auth = ["--dest-creds", credentials.skopeo_creds]
        destination = f"docker://{self.registry_host}/{reference}"
        arguments = ["--dest-tls-verify=false", *auth, image.reference, destination]
        return self._copy(arguments, credentials)

    def pull(
        self, reference: str, layout: Path, credentials: Credentials | None
    ) -> subprocess.CompletedProcess[str]:
        """Copy `reference` (`repository:tag`) from the registry into a new layout, same tag."""
        if credentials is None:
            auth = ["--src-no-creds"]
        else:
            auth = ["--src-creds", credentials.skopeo_creds]
        tag = reference.rpartition(":")[2]
        source = f"docker://{self.registry_host}/{reference}"
        arguments = ["--src-tls-verify=false", *auth, source, f"oci:{layout}:{tag}"]
        return self._copy(arguments, credentials)


def _redact(command: list[str], credentials: Credentials | None) -> list[str]:
    if credentials is None:
        return command
    hidden = f"{credentials.username}:<password>"
    return [hidden if argument == credentials.skopeo_creds else argument for argument in command]


_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log tail of every server started so far to each failed report."""
    report: pytest.TestReport = yield
    if report.failed:
        for managed in item.config.stash.get(_PROCESSES, []):
            title = f"{managed.name} log ({managed.log_path})"
            report.sections.append((title, managed.read_log_tail()))
    return report


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    NOTE: another process can take the port between this call and the server's bind.
    The servers take the port on their command line, so there is no way to close that
    window from here.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def require_tool(name: str) -> str:
    """Return the path of executable `name`, or fail the test run naming the fix."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(MISSING_TOOL_MESSAGE.format(tool=name), pytrace=False)
    return path


def _environment_without_proxies() -> dict[str, str]:
    return {
        name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")
    }


def start_process(
    config: pytest.Config,
    name: str,
    command: list[str],
    workdir: Path,
    environment: Mapping[str, str],
) -> ManagedProcess:
    """Start `command` in `workdir` with its output in `workdir/<name>.log`."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=dict(environment),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    managed = ManagedProcess(name, process, log_path)
    config.stash.setdefault(_PROCESSES, []).append(managed)
    register_log_file(log_path)
    return managed


def wait_until_ready(
    managed: ManagedProcess, probe: Callable[[], str | None], timeout: float
) -> None:
    """Poll `probe` until it returns None, meaning ready, or fail the test.

    `probe` returns a short description of why the server is not ready yet. The
    report hook attaches the process log to the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        code = managed.process.poll()
        if code is not None:
            pytest.fail(
                f"{managed.name} exited with code {code} before it was ready. "
                f"Its log, {managed.log_path}, is attached below.",
                pytrace=False,
            )
        reason = probe()
        if reason is None:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{managed.name} was not ready after {timeout} s: {reason}. "
                f"Its log, {managed.log_path}, is attached below.",
                pytrace=False,
            )
        time.sleep(POLL_INTERVAL)


def _probe(client: HttpClient, url: str) -> HttpResponse | str:
    try:
        return client.get(url)
    except (OSError, HTTPException) as error:
        return f"GET {url} failed: {error!r}"


@pytest.fixture(scope="session")
def http_client() -> HttpClient:
    return HttpClient()


@pytest.fixture(scope="session")
def tools() -> Mapping[str, str]:
    """Paths of the external programs, checked before anything starts."""
    return {name: require_tool(name) for name in ("docker-registry", "skopeo")}


@pytest.fixture(scope="session")
def users() -> Users:
    """Users with random passwords. The pusher's contains `:`.

    RFC 7617 splits the Basic user-pass on the first colon, so a server that splits on
    another colon rejects the pusher on every request.
    """

    def password() -> str:
        return secrets.token_urlsafe(18)

    users = Users(
        pusher=Credentials("pusher", f"{password()}:{password()}"),
        puller=Credentials("puller", password()),
        nobody=Credentials("nobody", password()),
        cataloger=Credentials("cataloger", password()),
    )
    for user in users.all():
        register_secret(user.password)
        register_secret(user.basic_authorization)
        # The wrong password that test_token_wrong_password_rejected sends.
        register_secret(user.password + "x")
    return users


@pytest.fixture(scope="session")
def policy_file(users: Users, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the regauth policy for the e2e users into tmp and return its path."""
    policy = {
        "users": [
            {"name": user.username, "password_hash": hash_password(user.password)}
            for user in users.all()
        ],
        # The host gets its API key from `regauth admin create_host_key` during a test.
        "hosts": [{"name": BUILDER_HOST, "description": "a CI runner that pushes builds"}],
        # Partner CI signs in with the user name aws-iam and an IAM proof.
        "roles": [
            {
                "name": "partner-ci",
                "description": "a partner's CI role in the embedded moto account",
                "arns": [PARTNER_ROLE_PATTERN],
            }
        ],
        "grants": [
            {
                "id": "partner-push",
                "to": "role:partner-ci",
                "repositories": ["partners/**"],
                "actions": ["pull", "push"],
            },
            {
                "id": "builder-push",
                "to": f"host:{BUILDER_HOST}",
                "repositories": ["builds/**"],
                "actions": ["pull", "push"],
            },
            {
                "to": "user:pusher",
                "repositories": ["team/**", "public/**"],
                "actions": ["pull", "push"],
            },
            {"to": "user:puller", "repositories": ["team/**"], "actions": ["pull"]},
            {"to": "user:cataloger", "registry": ["catalog"]},
            {"to": "anonymous", "repositories": ["public/*"], "actions": ["pull"]},
        ],
    }
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def regauth(
    request: pytest.FixtureRequest,
    policy_file: Path,
    http_client: HttpClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegauthServer]:
    """Run `regauth serve` until the session ends."""
    workdir = tmp_path_factory.mktemp("regauth")
    state_dir = workdir / "state"
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "regauth.cli",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--policy",
        str(policy_file),
        "--state-dir",
        str(state_dir),
        "--service",
        SERVICE,
        "--issuer",
        ISSUER,
    ]
    managed = start_process(
        request.config, "regauth", command, workdir, _environment_without_proxies()
    )
    server = RegauthServer(url=f"http://{HOST}:{port}", state_dir=state_dir, process=managed)

    def probe() -> str | None:
        response = _probe(http_client, server.certificates_url)
        if isinstance(response, str):
            return response
        if response.status != 200:
            return f"GET {server.certificates_url} returned {response.status}"
        if not server.root_bundle.is_file():
            return f"{server.root_bundle} does not exist"
        return None

    try:
        wait_until_ready(managed, probe, REGAUTH_READY_TIMEOUT)
        yield server
    finally:
        managed.stop()


def _registry_config(storage: Path, port: int, regauth: RegauthServer) -> dict[str, object]:
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": f"{HOST}:{port}",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "auth": {
            "token": {
                "realm": regauth.token_url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(regauth.root_bundle),
            }
        },
    }


@pytest.fixture(scope="session")
def registry(
    request: pytest.FixtureRequest,
    tools: Mapping[str, str],
    regauth: RegauthServer,
    http_client: HttpClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryServer]:
    """Run a distribution registry that accepts tokens from `regauth` only."""
    workdir = tmp_path_factory.mktemp("registry")
    storage = workdir / "storage"
    storage.mkdir()
    port = free_port()
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(_registry_config(storage, port, regauth)))

    # Debian's docker-registry takes the configuration file after the `serve` command.
    command = [tools["docker-registry"], "serve", str(config_path)]
    managed = start_process(
        request.config, "registry", command, workdir, _environment_without_proxies()
    )
    server = RegistryServer(host=f"{HOST}:{port}", process=managed)

    def probe() -> str | None:
        response = _probe(http_client, f"{server.url}/v2/")
        if isinstance(response, str):
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status != 401 or not challenge.startswith("Bearer "):
            return f"GET /v2/ returned {response.status} with challenge {challenge!r}"
        return None

    try:
        wait_until_ready(managed, probe, REGISTRY_READY_TIMEOUT)
        yield server
    finally:
        managed.stop()


@pytest.fixture(scope="session")
def skopeo(
    tools: Mapping[str, str], registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> Skopeo:
    home = tmp_path_factory.mktemp("skopeo-home")
    auth_file = home / "auth.json"
    auth_file.write_text('{"auths": {}}')
    registries_conf = home / "registries.conf"
    registries_conf.write_text("")
    runtime_dir = home / "run"
    runtime_dir.mkdir(mode=0o700)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "REGISTRY_AUTH_FILE": str(auth_file),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "XDG_CONFIG_HOME": str(home / "config"),
        "DOCKER_CONFIG": str(home / "docker"),
    }
    return Skopeo(tools["skopeo"], registry.host, environment)


def _unique_image(tmp_path_factory: pytest.TempPathFactory, name: str) -> OciImage:
    content = f"regauth e2e {name} {secrets.token_hex(16)}\n".encode()
    return build_image(tmp_path_factory.mktemp(name) / "layout", "v1", content)


@pytest.fixture(scope="session")
def app_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """An image with content unique to this run, pushed as `team/app:v1`."""
    return _unique_image(tmp_path_factory, "app")


@pytest.fixture(scope="session")
def public_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """An image with content unique to this run, pushed as `public/base:v1`."""
    return _unique_image(tmp_path_factory, "public")
