"""Lambda handler for `POST /iam/token`: a registry token for a SigV4-signed caller.

API Gateway authorizes the route with AWS_IAM, so it has verified the signature and
puts the caller's ARN in `requestContext.identity.userArn`. The ARN is mapped to a
policy role as IAM proofs are. `service` and `scope` come from the query string.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from regauth.errors import InvalidCredentialsError, RegauthError
from regauth.http import parse_token_request, render_error, render_token, request_context
from regauth.runtime import Runtime, get_runtime


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, get_runtime())


def handle(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """Read the caller ARN and the scopes, issue a token, and render the response."""
    realm = runtime.settings.realm
    runtime.logger.append_keys(request_id=request_context(event).request_id)
    identity = (event.get("requestContext") or {}).get("identity") or {}
    caller_arn = identity.get("userArn")
    try:
        if not isinstance(caller_arn, str) or not caller_arn:
            # Only a route without AWS_IAM authorization lacks the ARN: fail closed.
            raise InvalidCredentialsError("invalid credentials", reason="missing_caller_arn")
        # The scopes are parsed as a GET /token request's, without credentials.
        request = parse_token_request(
            {**event, "httpMethod": "GET", "headers": {}, "multiValueHeaders": {}}
        )
    except RegauthError as exc:
        runtime.service.record_rejected(request_context(event), exc)
        return render_error(exc, method="GET", realm=realm)

    try:
        issued = runtime.service.issue(request, iam_caller_arn=caller_arn)
    except RegauthError as exc:
        return render_error(exc, method="GET", realm=realm)
    return render_token(issued)
