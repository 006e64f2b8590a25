"""Lambda handler for the audit log subscription: archive audit events to S3."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from regauth.archive import AuditArchiver, decode_subscription_payload, get_archiver


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, get_archiver())


def handle(event: dict[str, Any], archiver: AuditArchiver) -> dict[str, Any]:
    """Decode the subscription payload and archive its records as one chained object.

    Errors propagate on purpose: a failed invocation is retried by Lambda and then
    sent to the dead-letter queue, so no event is dropped.
    """
    records = decode_subscription_payload(event)
    link = archiver.archive(records)
    return {"events": len(records), "key": link.key if link else None}
