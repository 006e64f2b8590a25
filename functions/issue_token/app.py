"""Lambda handler for `GET /token` and `POST /token` (distribution token auth)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from regauth.errors import RegauthError
from regauth.http import (
    method_of,
    parse_token_request,
    render_error,
    render_token,
    request_context,
)
from regauth.runtime import Runtime, get_runtime


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, get_runtime())


def handle(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """Parse the event, issue a token, and render the response."""
    method = method_of(event)
    realm = runtime.settings.realm
    # Every operational log line of this invocation carries the API Gateway request
    # id, which the audit record carries too, so one request can be followed.
    runtime.logger.append_keys(request_id=request_context(event).request_id)
    try:
        request = parse_token_request(event)
    except RegauthError as exc:
        runtime.service.record_rejected(request_context(event), exc)
        return render_error(exc, method=method, realm=realm)
    except Exception as exc:
        # A parser bug must not turn into an unhandled Lambda error (502 with no
        # audit record), so it gets the same generic 500 as a failure below.
        runtime.logger.exception("token request could not be parsed")
        return render_error(exc, method=method, realm=realm)

    try:
        issued = runtime.service.issue(request)
    except RegauthError as exc:
        return render_error(exc, method=method, realm=realm)
    except Exception as exc:
        # The traceback goes to the operational log, and the client gets a generic
        # 500 that reveals nothing about the failure.
        runtime.logger.exception("token request failed", request_id=request.request_id)
        return render_error(exc, method=method, realm=realm)

    return render_token(issued)
