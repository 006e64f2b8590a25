"""Lambda handler of the admin function, invoked with `aws lambda invoke` and a JSON payload."""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from regauth.admin import AdminService
from regauth.audit import LoggerAuditSink, RequestContext
from regauth.config import load_settings
from regauth.runtime import make_clients


@functools.cache
def get_admin_service() -> AdminService:
    """Return this instance's admin service, built from the environment on first use."""
    settings = load_settings()
    return AdminService(make_clients().dynamodb, settings.table_name, LoggerAuditSink())


def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    return handle(event, get_admin_service(), context.aws_request_id)


def handle(event: Any, service: AdminService, request_id: str = "") -> dict[str, Any]:
    """Run the admin action the payload names; bad payloads get an error naming the field."""
    return service.handle(event, RequestContext(request_id=request_id))
