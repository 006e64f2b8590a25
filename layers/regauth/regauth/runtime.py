"""Build the objects a Lambda function instance keeps between invocations.

Nothing here runs at import. Handlers call `get_runtime()` on their first
invocation, and tests build a `Runtime` with `build_runtime` from moto clients.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from botocore.config import Config
from cryptography import x509

from regauth.audit import AuditSink, LoggerAuditSink, RequestContext, certificate_event
from regauth.config import Settings, load_settings
from regauth.iam import IamVerifier, StsTransport, Urllib3StsTransport
from regauth.roles import RoleMapCache
from regauth.service import TokenService
from regauth.signing import SigningKeyManager
from regauth.stores import DynamoStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient

# Short timeouts and few retries: a token request that cannot reach DynamoDB or KMS
# fails closed with 503 quickly instead of holding the client until API Gateway's
# 29-second limit.
AWS_CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 3},
)


@dataclass(frozen=True, slots=True)
class Clients:
    dynamodb: DynamoDBClient
    kms: KMSClient


def make_clients(session: boto3.Session | None = None) -> Clients:
    """Create the AWS clients. Endpoints come from the standard AWS configuration."""
    session = session or boto3.Session()
    return Clients(
        dynamodb=session.client("dynamodb", config=AWS_CLIENT_CONFIG),
        kms=session.client("kms", config=AWS_CLIENT_CONFIG),
    )


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    clients: Clients
    store: DynamoStore
    signing: SigningKeyManager
    service: TokenService
    audit: AuditSink
    logger: Logger


def build_runtime(
    settings: Settings,
    clients: Clients,
    *,
    audit: AuditSink | None = None,
    logger: Logger | None = None,
    clock: Callable[[], float] = time.time,
    sts_transport: StsTransport | None = None,
) -> Runtime:
    """Wire the store, signing key manager and token service for one instance."""
    logger = logger or Logger(service="regauth", logger_name="regauth")
    audit = audit or LoggerAuditSink()
    store = DynamoStore(clients.dynamodb, settings.table_name)
    signing = SigningKeyManager(
        kms_client=clients.kms,
        key_id=settings.key_id,
        store=store,
        settings=settings,
        clock=clock,
        on_certificate_issued=_certificate_auditor(audit, settings),
    )
    service = TokenService(
        settings,
        store,
        signing,
        audit,
        clock=clock,
        iam=_iam_verifier(settings, sts_transport, clock),
        role_maps=RoleMapCache(store),
    )
    return Runtime(
        settings=settings,
        clients=clients,
        store=store,
        signing=signing,
        service=service,
        audit=audit,
        logger=logger,
    )


def _iam_verifier(
    settings: Settings, transport: StsTransport | None, clock: Callable[[], float]
) -> IamVerifier | None:
    # Without a server id no proof can be checked for replay, so IAM sign-in is off.
    if not settings.iam_server_id:
        return None
    return IamVerifier(
        server_id=settings.iam_server_id,
        regions=settings.iam_regions,
        transport=transport or Urllib3StsTransport(),
        clock=clock,
        endpoint_override=settings.iam_sts_endpoint,
    )


def _certificate_auditor(
    audit: AuditSink, settings: Settings
) -> Callable[[x509.Certificate], None]:
    # A certificate belongs to no single request, so the event names every service
    # whose tokens it signs.
    context = RequestContext(registry_service=",".join(settings.services))

    def record(certificate: x509.Certificate) -> None:
        not_after = int(certificate.not_valid_after_utc.timestamp())
        audit.emit(
            certificate_event(context, serial=certificate.serial_number, not_after=not_after)
        )

    return record


# The local server replaces the sink of the runtime its handlers build, so that it can
# archive events in-process where Lambda relies on a log subscription instead.
_audit_sink_override: AuditSink | None = None


def use_audit_sink(sink: AuditSink | None) -> None:
    """Make `get_runtime` build runtimes that write audit events to `sink`."""
    global _audit_sink_override  # noqa: PLW0603 - one process-wide runtime, see above
    _audit_sink_override = sink
    get_runtime.cache_clear()


@functools.cache
def get_runtime() -> Runtime:
    """Return this instance's runtime, building it from the environment on first use."""
    logger = Logger(service="regauth", logger_name="regauth")
    # Library modules log through the standard `logging` module. Copying the
    # Powertools configuration makes their records structured JSON too.
    copy_config_to_registered_loggers(source_logger=logger, include={"regauth"})
    return build_runtime(load_settings(), make_clients(), logger=logger, audit=_audit_sink_override)
