"""Translate API Gateway (REST API, v1 proxy) events to requests and results to responses.

Errors are mapped to responses in one table, `ERROR_RESPONSES`. A GET request gets
the registry's error body `{"errors": [{"code", "message", "detail"}]}`, and a POST
request the OAuth2 body `{"error", "error_description"}` of RFC 6749 section 5.2,
because Docker's client reads POST errors that way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal
from urllib.parse import parse_qs

from regauth.audit import RequestContext
from regauth.errors import (
    AuthenticationError,
    InvalidCredentialsError,
    InvalidIamProofError,
    InvalidRefreshTokenError,
    InvalidRequestError,
    InvalidScopeError,
    RegauthError,
    RequestError,
    TooManyRequestsError,
    UnavailableError,
    UnknownServiceError,
    UnsupportedGrantTypeError,
)
from regauth.models import BasicCredentials, IssuedToken, TokenRequest
from regauth.scopes import parse_scopes

# Form bodies and headers this large are never sent by registry clients.
MAX_BODY_BYTES = 16 * 1024
MAX_AUTHORIZATION_LENGTH = 8 * 1024

_SINGLE_VALUED = (
    "service",
    "account",
    "client_id",
    "offline_token",
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "access_type",
)

ApiGatewayResponse = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The rendering of one error class: HTTP status, registry code, OAuth2 error."""

    status: int
    registry_code: str
    oauth_error: str


# Ordered from most to least specific: the first class the error is an instance of
# decides the response. A test checks that every class in `regauth.errors` that the
# token path can raise has an entry.
ERROR_RESPONSES: tuple[tuple[type[RegauthError], ErrorResponse], ...] = (
    (InvalidScopeError, ErrorResponse(400, "INVALID_SCOPE", "invalid_scope")),
    (UnknownServiceError, ErrorResponse(400, "UNKNOWN_SERVICE", "invalid_request")),
    (
        UnsupportedGrantTypeError,
        ErrorResponse(400, "UNSUPPORTED_GRANT_TYPE", "unsupported_grant_type"),
    ),
    (InvalidRequestError, ErrorResponse(400, "INVALID_REQUEST", "invalid_request")),
    (RequestError, ErrorResponse(400, "INVALID_REQUEST", "invalid_request")),
    (InvalidRefreshTokenError, ErrorResponse(401, "UNAUTHORIZED", "invalid_grant")),
    (InvalidIamProofError, ErrorResponse(401, "UNAUTHORIZED", "invalid_grant")),
    (InvalidCredentialsError, ErrorResponse(401, "UNAUTHORIZED", "invalid_grant")),
    (AuthenticationError, ErrorResponse(401, "UNAUTHORIZED", "invalid_grant")),
    (TooManyRequestsError, ErrorResponse(429, "TOOMANYREQUESTS", "slow_down")),
    (UnavailableError, ErrorResponse(503, "UNAVAILABLE", "temporarily_unavailable")),
)
INTERNAL_ERROR = ErrorResponse(500, "INTERNAL_ERROR", "server_error")


def error_response_for(exc: BaseException) -> ErrorResponse:
    for error_class, response in ERROR_RESPONSES:
        if isinstance(exc, error_class):
            return response
    return INTERNAL_ERROR


def _headers(event: Mapping[str, Any]) -> dict[str, list[str]]:
    """Collect headers with lower-case names, keeping repeated values."""
    collected: dict[str, list[str]] = {}
    multi = event.get("multiValueHeaders") or {}
    if multi:
        for name, values in multi.items():
            collected.setdefault(name.lower(), []).extend(values or [])
        return collected
    for name, value in (event.get("headers") or {}).items():
        collected.setdefault(name.lower(), []).append(value)
    return collected


def _query(event: Mapping[str, Any]) -> dict[str, list[str]]:
    multi = event.get("multiValueQueryStringParameters") or {}
    if multi:
        return {name: list(values or []) for name, values in multi.items()}
    single = event.get("queryStringParameters") or {}
    return {name: [value] for name, value in single.items()}


def _form(event: Mapping[str, Any], headers: Mapping[str, list[str]]) -> dict[str, list[str]]:
    content_type = (headers.get("content-type") or [""])[0].split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequestError(
            "POST /token requires Content-Type application/x-www-form-urlencoded"
        )

    raw = event.get("body") or ""
    try:
        body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw
        if isinstance(body, bytes):
            body = body.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        # binascii.Error is a ValueError, and b64decode raises a plain ValueError for
        # a str with non-ASCII characters.
        raise InvalidRequestError("request body is not valid UTF-8 form data") from None
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequestError(f"request body is larger than {MAX_BODY_BYTES} bytes")

    try:
        return parse_qs(body, keep_blank_values=True, strict_parsing=bool(body), errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("request body is not valid form data") from None


def _single(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) > 1:
        raise InvalidRequestError(f"parameter {name!r} must not be repeated")
    return values[0] if values else ""


def _flag(params: Mapping[str, list[str]], name: str) -> bool:
    value = _single(params, name).lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise InvalidRequestError(f"parameter {name!r} must be true or false")


def parse_basic_authorization(values: Sequence[str]) -> BasicCredentials | None:
    """Parse the Authorization header. No header means an anonymous request.

    Anything present but not valid Basic credentials raises
    `InvalidCredentialsError`, so a malformed header never falls back to anonymous.
    """
    if not values:
        return None

    def malformed(reason: str) -> InvalidCredentialsError:
        return InvalidCredentialsError("invalid username or password", reason=reason)

    if len(values) > 1:
        raise malformed("repeated_authorization_header")
    header = values[0].strip()
    if len(header) > MAX_AUTHORIZATION_LENGTH:
        raise malformed("oversized_authorization_header")

    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise malformed("unsupported_authorization_scheme")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        # Covers binascii.Error and the plain ValueError for non-ASCII header text.
        raise malformed("malformed_authorization_header") from None

    # RFC 7617: the user-id cannot contain a colon, but the password can, so split
    # on the first colon only.
    username, colon, password = decoded.partition(":")
    if not colon:
        raise malformed("malformed_authorization_header")
    return BasicCredentials(username=username, password=password)


def request_context(event: Mapping[str, Any]) -> RequestContext:
    """Read the request id, caller address, user agent and service for audit records.

    It never raises, because it also describes requests that failed to parse.
    """
    context = event.get("requestContext")
    context = context if isinstance(context, Mapping) else {}
    identity = context.get("identity")
    identity = identity if isinstance(identity, Mapping) else {}
    query = event.get("queryStringParameters")
    service = query.get("service") if isinstance(query, Mapping) else None
    return RequestContext(
        request_id=str(context.get("requestId") or ""),
        source_ip=str(identity.get("sourceIp") or ""),
        user_agent=str(identity.get("userAgent") or "")[:512],
        registry_service=str(service or "")[:256],
    )


def parse_token_request(event: Mapping[str, Any]) -> TokenRequest:
    """Parse a GET or POST `/token` event into a `TokenRequest`."""
    method = str(event.get("httpMethod", "")).upper()
    headers = _headers(event)
    context = request_context(event)

    if method == "GET":
        params = _query(event)
        _reject_repeated(params)
        return TokenRequest(
            method="GET",
            grant_type="none",
            service=_single(params, "service"),
            scopes=parse_scopes(params.get("scope", [])),
            credentials=parse_basic_authorization(headers.get("authorization", [])),
            offline=_flag(params, "offline_token"),
            client_id=_single(params, "client_id"),
            account=_single(params, "account"),
            request_id=context.request_id,
            source_ip=context.source_ip,
            user_agent=context.user_agent,
        )
    if method == "POST":
        return _parse_oauth_form(_form(event, headers), context)
    raise InvalidRequestError(f"method {method or '(none)'} is not allowed on /token")


def _reject_repeated(params: Mapping[str, list[str]]) -> None:
    for name in _SINGLE_VALUED:
        _single(params, name)


def _parse_oauth_form(form: Mapping[str, list[str]], context: RequestContext) -> TokenRequest:
    _reject_repeated(form)
    grant_type = _single(form, "grant_type")
    service = _single(form, "service")
    client_id = _single(form, "client_id")
    scopes = parse_scopes(form.get("scope", []))
    if not client_id:
        # distribution's oauth.md makes client_id required for the POST endpoint.
        raise InvalidRequestError("parameter 'client_id' is required")

    if grant_type == "password":
        username = _single(form, "username")
        password = _single(form, "password")
        access_type = _single(form, "access_type")
        if access_type not in ("", "online", "offline"):
            raise InvalidRequestError("parameter 'access_type' must be online or offline")
        return TokenRequest(
            method="POST",
            grant_type="password",
            service=service,
            scopes=scopes,
            credentials=BasicCredentials(username=username, password=password),
            offline=access_type == "offline",
            client_id=client_id,
            request_id=context.request_id,
            source_ip=context.source_ip,
            user_agent=context.user_agent,
        )
    if grant_type == "refresh_token":
        refresh_token = _single(form, "refresh_token")
        if not refresh_token:
            raise InvalidRequestError("parameter 'refresh_token' is required")
        return TokenRequest(
            method="POST",
            grant_type="refresh_token",
            service=service,
            scopes=scopes,
            refresh_token=refresh_token,
            client_id=client_id,
            request_id=context.request_id,
            source_ip=context.source_ip,
            user_agent=context.user_agent,
        )
    if not grant_type:
        raise InvalidRequestError("parameter 'grant_type' is required")
    raise UnsupportedGrantTypeError(
        f"grant_type {grant_type!r} is not supported: use password or refresh_token"
    )


def method_of(event: Mapping[str, Any]) -> Literal["GET", "POST"]:
    return "POST" if str(event.get("httpMethod", "")).upper() == "POST" else "GET"


def _json_response(
    status: int, body: Mapping[str, Any], extra_headers: Mapping[str, str] | None = None
) -> ApiGatewayResponse:
    headers = {
        "Content-Type": "application/json",
        # RFC 6749 section 5.1: responses carrying tokens must not be cached.
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
    }
    headers.update(extra_headers or {})
    return {"statusCode": status, "headers": headers, "body": json.dumps(body)}


def render_token(issued: IssuedToken) -> ApiGatewayResponse:
    """Render a token response that every Docker client version can read.

    Older clients read `token` and newer ones `access_token`, so both carry the JWT.
    `issued_at` is RFC 3339 text because Docker decodes it into a Go `time.Time`.
    """
    body: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if issued.refresh_token is not None:
        body["refresh_token"] = issued.refresh_token
    return _json_response(200, body)


def render_error(
    exc: BaseException, *, method: Literal["GET", "POST"], realm: str
) -> ApiGatewayResponse:
    """Render `exc` in the body format of the request's method.

    The message of an unexpected exception is never shown, because it may contain
    internal details.
    """
    mapped = error_response_for(exc)
    message = str(exc)
    if mapped is INTERNAL_ERROR:
        message = "internal server error"
    elif isinstance(exc, UnavailableError):
        # The cause (which AWS call failed) is in the operational log. Clients only
        # need to know that retrying later may help.
        message = "the token service is temporarily unavailable, try again later"
    headers: dict[str, str] = {}
    if mapped.status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
    if isinstance(exc, TooManyRequestsError):
        headers["Retry-After"] = str(max(exc.retry_after, 1))

    if method == "POST":
        body: dict[str, Any] = {"error": mapped.oauth_error, "error_description": message}
    else:
        body = {"errors": [{"code": mapped.registry_code, "message": message, "detail": None}]}
    return _json_response(mapped.status, body, headers)


def render_pem(pem: bytes) -> ApiGatewayResponse:
    return {
        "statusCode": 200,
        "headers": {
            "Content-Type": "application/x-pem-file",
            "Cache-Control": "public, max-age=300",
        },
        "body": pem.decode("ascii"),
    }
