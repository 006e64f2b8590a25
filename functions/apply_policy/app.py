"""Lambda handler that applies `policy.yaml` when it is uploaded to the policy bucket."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import unquote_plus

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from regauth.audit import LoggerAuditSink
from regauth.config import load_settings
from regauth.policy_apply import PolicyUploadHandler
from regauth.runtime import AWS_CLIENT_CONFIG, make_clients


@functools.cache
def get_upload_handler() -> PolicyUploadHandler:
    """Return this instance's handler, built from the environment on first use."""
    settings = load_settings()
    s3 = boto3.client("s3", config=AWS_CLIENT_CONFIG)
    return PolicyUploadHandler(s3, make_clients().dynamodb, settings.table_name, LoggerAuditSink())


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, get_upload_handler(), context.aws_request_id)


def handle(
    event: dict[str, Any], handler: PolicyUploadHandler, request_id: str = ""
) -> dict[str, Any]:
    """Apply each uploaded `policy.yaml` and return the outcomes."""
    outcomes = []
    for record in event.get("Records", []):
        # S3 event notifications URL-encode the object key, with `+` for spaces.
        record["s3"]["object"]["key"] = unquote_plus(record["s3"]["object"]["key"])
        outcome = handler.handle_record(record, request_id)
        if outcome is not None:
            outcomes.append(outcome.to_json())
    return {"outcomes": outcomes}
