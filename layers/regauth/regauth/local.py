"""`regauth serve`: the Lambda handlers behind a local HTTP server, with moto as AWS.

The server reads `template.yaml` for its routes and for the table and key it
creates, then invokes the same `lambda_handler` functions that Lambda runs, with
API Gateway REST (v1) proxy events built from each HTTP request. AWS is an embedded
moto server on another loopback port, reached through `AWS_ENDPOINT_URL`, so no
request ever leaves the machine.
"""

from __future__ import annotations

import base64
import errno
import importlib.util
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from aws_lambda_powertools import Logger

from regauth.archive import AuditArchiver
from regauth.audit import LoggerAuditSink, RequestContext
from regauth.audit_local import ArchivingAuditSink
from regauth.policy_apply import apply_policy_text
from regauth.policy_file import load_policy
from regauth.policy_store import PolicyStore
from regauth.runtime import use_audit_sink
from regauth.template import (
    ApiRoute,
    api_routes,
    load_template,
    resource_properties,
    single_resource_properties,
)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

# Requests larger than this are rejected before a handler is invoked. API Gateway's
# own payload limit is 10 MB, but token requests are a few hundred bytes.
MAX_REQUEST_BYTES = 64 * 1024
LOCAL_REGION = "us-east-1"
LOCAL_AUDIT_BUCKET = "regauth-local-audit"
# Written into the state directory; `regauth audit` reads it to find the archive.
LOCAL_STATE_FILE = "local.json"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str
    port: int
    policy: Path
    state_dir: Path
    services: tuple[str, ...]
    issuer: str
    template: Path
    token_ttl: int = 300
    # The value IAM proofs must sign as their server id. Empty means the first service.
    iam_server_id: str = ""


@dataclass(frozen=True, slots=True)
class LocalContext:
    """The parts of the Lambda context object that handlers may read."""

    aws_request_id: str
    function_name: str
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local"


def load_handler(route: ApiRoute) -> Handler:
    """Import a function's handler from its file, as Lambda does from CodeUri."""
    path = route.code_dir / f"{route.module}.py"
    spec = importlib.util.spec_from_file_location(f"regauth_local.{route.function}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"handler module {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Handler = getattr(module, route.handler)
    return handler


def build_event(
    method: str,
    raw_path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    source_ip: str,
    resource: str,
) -> dict[str, Any]:
    """Build an API Gateway REST API proxy event from an HTTP request."""
    split = urlsplit(raw_path)
    query = parse_qs(split.query, keep_blank_values=True)
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)

    try:
        text_body: str | None = body.decode("utf-8") if body else None
        is_base64 = False
    except UnicodeDecodeError:
        text_body, is_base64 = base64.b64encode(body).decode("ascii"), True

    request_id = str(uuid.uuid4())
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), "")
    return {
        "resource": resource,
        "path": split.path,
        "httpMethod": method,
        "headers": {name: values[-1] for name, values in multi_headers.items()},
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": None,
        "stageVariables": None,
        "body": text_body,
        "isBase64Encoded": is_base64,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": split.path,
            "stage": "local",
            "requestId": request_id,
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": source_ip, "userAgent": user_agent},
        },
    }


class LocalGateway:
    """Route HTTP requests to handlers. Calls are serialized, as in one Lambda instance."""

    def __init__(self, routes: Mapping[tuple[str, str], tuple[ApiRoute, Handler]]) -> None:
        self._routes = routes
        self._lock = threading.Lock()

    def invoke(
        self, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes, ip: str
    ) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(raw_path).path
        entry = self._routes.get((method, path))
        if entry is None:
            known_path = any(route_path == path for _, route_path in self._routes)
            status = 405 if known_path else 404
            message = "Method Not Allowed" if known_path else "Not Found"
            return status, {"Content-Type": "application/json"}, _json({"message": message})

        route, handler = entry
        if route.authorizer:
            # API Gateway would verify a SigV4 signature (AWS_IAM) before invoking the
            # handler. The local server cannot, so it rejects instead of skipping it.
            message = (
                f"{method} {path} requires API Gateway's {route.authorizer} authorization, "
                "which regauth serve does not provide: sign in at /token with the user "
                "name aws-iam and a password from `regauth login-password`"
            )
            return 501, {"Content-Type": "application/json"}, _json({"message": message})

        event = build_event(method, raw_path, headers, body, source_ip=ip, resource=route.path)
        context = LocalContext(
            aws_request_id=event["requestContext"]["requestId"], function_name=route.function
        )
        with self._lock:
            response = handler(event, context)

        response_body = response.get("body") or ""
        if response.get("isBase64Encoded"):
            payload = base64.b64decode(response_body)
        else:
            payload = response_body.encode("utf-8")
        return int(response["statusCode"]), dict(response.get("headers") or {}), payload


def _json(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def _make_request_handler(gateway: LocalGateway, logger: Logger) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "regauth-local"
        sys_version = ""

        def _handle(self) -> None:
            started = time.perf_counter()
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._send(
                    400, {"Content-Type": "application/json"}, _json({"message": "bad length"})
                )
                return
            if length > MAX_REQUEST_BYTES:
                self._send(
                    413, {"Content-Type": "application/json"}, _json({"message": "too large"})
                )
                return
            body = self.rfile.read(length) if length else b""
            status, headers, payload = gateway.invoke(
                self.command, self.path, list(self.headers.items()), body, self.client_address[0]
            )
            self._send(status, headers, payload)
            # The query string is left out: it is not secret for /token, but a log
            # line should not depend on that.
            logger.info(
                "request",
                method=self.command,
                path=urlsplit(self.path).path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client=self.client_address[0],
            )

        def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _handle  # noqa: N815 - the names BaseHTTPRequestHandler dispatches to
        do_POST = _handle  # noqa: N815
        do_PUT = _handle  # noqa: N815
        do_DELETE = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            # Requests are logged as JSON in `_handle` instead.
            return

    return RequestHandler


def _isolate_aws_environment(endpoint: str) -> None:
    """Point every boto3 client of this process at moto, with throwaway credentials.

    Per-service endpoint variables and profiles are removed, since either could
    send a call to a real AWS endpoint.
    """
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL_") or name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        ):
            del os.environ[name]
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": LOCAL_REGION,
            "AWS_REGION": LOCAL_REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )


def provision(template: Mapping[str, Any], table_name: str) -> str:
    """Create the table and the signing key as the template defines them; return the key id."""
    table = single_resource_properties(template, "AWS::DynamoDB::Table")
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(
        TableName=table_name,
        AttributeDefinitions=table["AttributeDefinitions"],
        KeySchema=table["KeySchema"],
        BillingMode=table.get("BillingMode", "PAY_PER_REQUEST"),
    )
    ttl = table.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(TableName=table_name, TimeToLiveSpecification=ttl)

    key = single_resource_properties(template, "AWS::KMS::Key")
    kms = boto3.client("kms")
    created = kms.create_key(
        KeySpec=key["KeySpec"],
        KeyUsage=key["KeyUsage"],
        Description=str(key.get("Description", "regauth root signing key")),
    )
    return str(created["KeyMetadata"]["KeyId"])


def provision_audit_bucket(template: Mapping[str, Any], bucket: str) -> str:
    """Create the audit bucket with the template's Object Lock and versioning; return its name."""
    properties = resource_properties(template, "AuditBucket")
    s3 = boto3.client("s3")
    s3.create_bucket(
        Bucket=bucket, ObjectLockEnabledForBucket=bool(properties.get("ObjectLockEnabled"))
    )
    versioning = properties.get("VersioningConfiguration")
    if versioning:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=versioning)
    return bucket


def write_local_state(state_dir: Path, endpoint: str, bucket: str, table_name: str) -> Path:
    """Write where the embedded AWS and the audit archive are, for `regauth audit`."""
    path = state_dir / LOCAL_STATE_FILE
    state = {"endpoint": endpoint, "region": LOCAL_REGION, "bucket": bucket, "table": table_name}
    path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    return path


def start_local_audit(bucket: str, table_name: str) -> ArchivingAuditSink:
    """Archive the handlers' audit events to the embedded S3, as the archiver function does."""
    archiver = AuditArchiver(boto3.client("s3"), boto3.client("dynamodb"), bucket, table_name)
    sink = ArchivingAuditSink(archiver, LoggerAuditSink())
    sink.start()
    use_audit_sink(sink)
    return sink


def registry_config_block(options: ServeOptions, token_url: str, bundle: Path) -> str:
    return (
        "auth:\n"
        "  token:\n"
        f"    realm: {token_url}\n"
        f"    service: {options.services[0]}\n"
        f"    issuer: {options.issuer}\n"
        f"    rootcertbundle: {bundle}\n"
    )


def serve(options: ServeOptions, *, ready: Callable[[str], None] = print) -> None:
    """Run the local token service until SIGINT or SIGTERM."""
    from moto.server import ThreadedMotoServer

    logger = Logger(service="regauth", logger_name="regauth.local")
    options.state_dir.mkdir(parents=True, exist_ok=True)
    template = load_template(options.template)
    routes = api_routes(template, options.template.parent)
    # Validate the policy before anything starts, so a typo fails fast.
    load_policy(options.policy.read_text(encoding="utf-8"), source=str(options.policy))

    # The port is taken first, so a second server started by mistake fails before it
    # creates a new root key and overwrites the bundle the registry trusts.
    http_server = bind_http_server(options.host, options.port)

    # moto's server logs every AWS call as a plain-text access line through
    # werkzeug. The handlers already log what matters as JSON.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto_server.start()
    audit_sink: ArchivingAuditSink | None = None
    try:
        moto_host, moto_port = moto_server.get_host_and_port()
        _isolate_aws_environment(f"http://{moto_host}:{moto_port}")
        table_name = "regauth-local"
        key_id = provision(template, table_name)
        bucket = provision_audit_bucket(template, LOCAL_AUDIT_BUCKET)
        audit_sink = start_local_audit(bucket, table_name)
        write_local_state(
            options.state_dir.resolve(), f"http://{moto_host}:{moto_port}", bucket, table_name
        )
        _set_handler_environment(options, table_name, key_id, f"http://{moto_host}:{moto_port}/")
        # The same apply path as `regauth policy apply`, so the audit event carries the
        # version number and canonical content hash that `show_policy` reports.
        outcome = apply_policy_text(
            PolicyStore(boto3.client("dynamodb"), table_name),
            audit_sink,
            options.policy.read_text(encoding="utf-8"),
            source=str(options.policy),
            actor="regauth serve",
            context=RequestContext(registry_service=",".join(options.services)),
        )
        logger.info("policy applied", policy=str(options.policy), version=outcome.version)

        gateway = LocalGateway({(r.method, r.path): (r, load_handler(r)) for r in routes})
        bundle = _write_root_bundle(gateway, options.state_dir.resolve())

        http_server.RequestHandlerClass = _make_request_handler(gateway, logger)
        port = http_server.server_address[1]
        token_url = f"http://{options.host}:{port}/token"
        ready(
            f"regauth is serving tokens at {token_url}\n"
            f"root certificate bundle: {bundle}\n"
            "add this to the registry's config.yml:\n\n"
            + registry_config_block(options, token_url, bundle)
        )
        logger.info("server started", token_url=token_url, moto_port=moto_port)
        _serve_until_signal(http_server)
        logger.info("server stopped")
    finally:
        http_server.server_close()
        # Archive the events still buffered before the embedded S3 goes away.
        if audit_sink is not None:
            audit_sink.close()
            use_audit_sink(None)
        moto_server.stop()


def _set_handler_environment(
    options: ServeOptions, table_name: str, key_id: str, moto_endpoint: str
) -> None:
    """Set the variables that `regauth.config.load_settings` reads in the handlers."""
    os.environ.update(
        {
            "REGAUTH_TABLE": table_name,
            "REGAUTH_KEY_ID": key_id,
            "REGAUTH_SERVICES": ",".join(options.services),
            "REGAUTH_ISSUER": options.issuer,
            "REGAUTH_TOKEN_TTL": str(options.token_ttl),
            "POWERTOOLS_SERVICE_NAME": "regauth",
            # IAM proofs go to the embedded moto server, whose STS returns the caller of
            # GetCallerIdentity for the roles and users created in it. moto does
            # not check signatures, but regauth's own checks all still apply.
            "REGAUTH_IAM_SERVER_ID": options.iam_server_id or options.services[0],
            "REGAUTH_IAM_STS_ENDPOINT": moto_endpoint,
        }
    )


def _write_root_bundle(gateway: LocalGateway, state_dir: Path) -> Path:
    """Fetch the root certificate through the handler and write the registry's bundle."""
    status, _, pem = gateway.invoke("GET", "/certificates", [], b"", "127.0.0.1")
    if status != 200:
        raise RuntimeError(f"could not create the root certificate (HTTP {status})")
    bundle = state_dir / "root-certificates.pem"
    # Written to a temporary file and renamed, so a registry starting now reads
    # either the old bundle or the new one, never a partial file.
    partial = bundle.with_suffix(".pem.tmp")
    partial.write_bytes(pem)
    partial.replace(bundle)
    return bundle


class ServeError(Exception):
    """The local server cannot start. The message gives the cause and what to do."""


class _NotReadyHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(503, "regauth is starting")


def bind_http_server(host: str, port: int) -> ThreadingHTTPServer:
    """Bind the listening socket, with an actionable error when the port is taken."""
    try:
        server = ThreadingHTTPServer((host, port), _NotReadyHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is already in use (is another regauth serve "
                f"running?): stop it, or choose another port with --port or "
                f"`make run PORT=...`"
            ) from exc
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    server.daemon_threads = True
    return server


def _serve_until_signal(server: ThreadingHTTPServer) -> None:
    """Serve in a thread and return after SIGINT or SIGTERM."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="regauth-http", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
