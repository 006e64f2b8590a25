"""Parsing API Gateway events and rendering token and error responses."""

import base64
import inspect
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from regauth import errors
from regauth.errors import (
    InvalidCredentialsError,
    InvalidRequestError,
    InvalidScopeError,
    RegauthError,
    TooManyRequestsError,
    UnsupportedGrantTypeError,
)
from regauth.http import (
    ERROR_RESPONSES,
    INTERNAL_ERROR,
    error_response_for,
    parse_basic_authorization,
    parse_token_request,
    render_error,
    render_token,
)
from regauth.models import AccessEntry, BasicCredentials, IssuedToken, Scope


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get_event(query: dict[str, list[str]], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "httpMethod": "GET",
        "path": "/token",
        "headers": headers or {},
        "multiValueHeaders": {k: [v] for k, v in (headers or {}).items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()},
        "multiValueQueryStringParameters": query,
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {
            "requestId": "req-1",
            "identity": {"sourceIp": "192.0.2.10", "userAgent": "docker/27.0"},
        },
    }


def post_event(
    body: str, content_type: str = "application/x-www-form-urlencoded"
) -> dict[str, Any]:
    return {
        "httpMethod": "POST",
        "path": "/token",
        "headers": {"Content-Type": content_type},
        "multiValueHeaders": {"Content-Type": [content_type]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "body": body,
        "isBase64Encoded": False,
        "requestContext": {"requestId": "req-2", "identity": {"sourceIp": "192.0.2.11"}},
    }


def test_get_parses_every_parameter() -> None:
    event = get_event(
        {
            "service": ["registry.test"],
            "scope": ["repository:team/app:pull", "repository:team/base:pull push"][:1],
            "account": ["alice"],
            "client_id": ["docker"],
            "offline_token": ["true"],
        },
        {"Authorization": basic("alice", "secret")},
    )
    request = parse_token_request(event)
    assert request.method == "GET"
    assert request.grant_type == "none"
    assert request.service == "registry.test"
    assert request.scopes == (Scope("repository", "team/app", frozenset({"pull"})),)
    assert request.credentials == BasicCredentials("alice", "secret")
    assert request.account == "alice"
    assert request.client_id == "docker"
    assert request.offline is True
    assert request.request_id == "req-1"
    assert request.source_ip == "192.0.2.10"
    assert request.user_agent == "docker/27.0"


def test_get_repeated_scopes_merge() -> None:
    event = get_event(
        {
            "service": ["s"],
            "scope": ["repository:a:pull", "repository:b:pull repository:a:push"],
        }
    )
    request = parse_token_request(event)
    assert request.scopes == (
        Scope("repository", "a", frozenset({"pull", "push"})),
        Scope("repository", "b", frozenset({"pull"})),
    )


def test_get_without_authorization_is_anonymous() -> None:
    request = parse_token_request(get_event({"service": ["s"]}))
    assert request.credentials is None
    assert request.scopes == ()


def test_get_header_names_case_insensitive() -> None:
    request = parse_token_request(get_event({"service": ["s"]}, {"authorization": basic("u", "p")}))
    assert request.credentials == BasicCredentials("u", "p")


def test_get_single_value_event_shape() -> None:
    event = get_event({"service": ["s"], "scope": ["repository:a:pull"]})
    event["multiValueQueryStringParameters"] = None
    event["multiValueHeaders"] = None
    assert parse_token_request(event).scopes == (Scope("repository", "a", frozenset({"pull"})),)


@pytest.mark.parametrize("name", ["service", "client_id", "offline_token", "account"])
def test_get_repeated_single_parameter_rejected(name: str) -> None:
    event = get_event({"service": ["s"], name: ["a", "b"]})
    with pytest.raises(InvalidRequestError, match=f"'{name}' must not be repeated"):
        parse_token_request(event)


def test_get_offline_token_invalid_value() -> None:
    with pytest.raises(InvalidRequestError, match="true or false"):
        parse_token_request(get_event({"service": ["s"], "offline_token": ["yes"]}))


def test_get_invalid_scope_raises() -> None:
    with pytest.raises(InvalidScopeError):
        parse_token_request(get_event({"service": ["s"], "scope": ["repository:a"]}))


@pytest.mark.parametrize(
    ("decoded", "username", "password"),
    [
        ("alice:secret", "alice", "secret"),
        ("alice:se:cr:et", "alice", "se:cr:et"),
        ("alice:", "alice", ""),
        (":secret", "", "secret"),
        ("ålice:pässword", "ålice", "pässword"),
    ],
    ids=["plain", "colons-in-password", "empty-password", "empty-user", "utf8"],
)
def test_basic_authorization_splits_on_first_colon(
    decoded: str, username: str, password: str
) -> None:
    header = "Basic " + base64.b64encode(decoded.encode()).decode()
    assert parse_basic_authorization([header]) == BasicCredentials(username, password)


def test_basic_authorization_scheme_case_insensitive() -> None:
    header = "basic " + base64.b64encode(b"a:b").decode()
    assert parse_basic_authorization([header]) == BasicCredentials("a", "b")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Bearer abc.def.ghi", "unsupported_authorization_scheme"),
        ("Basic", "unsupported_authorization_scheme"),
        ("Basic !!!not-base64!!!", "malformed_authorization_header"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed_authorization_header"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "malformed_authorization_header"),
        ("Basic " + "A" * 9000, "oversized_authorization_header"),
        ("Basic \xe9", "malformed_authorization_header"),
    ],
    ids=["bearer", "no-credentials", "not-base64", "no-colon", "not-utf8", "oversized", "latin1"],
)
def test_basic_authorization_malformed(header: str, reason: str) -> None:
    with pytest.raises(InvalidCredentialsError) as raised:
        parse_basic_authorization([header])
    assert raised.value.reason == reason


def test_basic_authorization_repeated_header() -> None:
    with pytest.raises(InvalidCredentialsError):
        parse_basic_authorization([basic("a", "b"), basic("c", "d")])


def test_post_password_grant() -> None:
    body = (
        "grant_type=password&service=registry.test&client_id=docker&access_type=offline"
        "&username=alice&password=p%3Ass%26w&scope=repository%3Ateam%2Fapp%3Apull"
    )
    request = parse_token_request(post_event(body))
    assert request.grant_type == "password"
    assert request.credentials == BasicCredentials("alice", "p:ss&w")
    assert request.offline is True
    assert request.client_id == "docker"
    assert request.scopes == (Scope("repository", "team/app", frozenset({"pull"})),)


def test_post_refresh_grant() -> None:
    body = "grant_type=refresh_token&service=s&client_id=docker&refresh_token=rt1.abc.def"
    request = parse_token_request(post_event(body))
    assert request.grant_type == "refresh_token"
    assert request.refresh_token == "rt1.abc.def"
    assert request.credentials is None


def test_post_base64_body() -> None:
    event = post_event(
        base64.b64encode(b"grant_type=refresh_token&service=s&client_id=c&refresh_token=x").decode()
    )
    event["isBase64Encoded"] = True
    assert parse_token_request(event).refresh_token == "x"


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        ("grant_type=password&service=s", InvalidRequestError, "'client_id' is required"),
        ("service=s&client_id=c", InvalidRequestError, "'grant_type' is required"),
        (
            "grant_type=client_credentials&service=s&client_id=c",
            UnsupportedGrantTypeError,
            "'client_credentials' is not supported",
        ),
        ("grant_type=refresh_token&service=s&client_id=c", InvalidRequestError, "refresh_token"),
        (
            "grant_type=password&service=s&client_id=c&access_type=forever",
            InvalidRequestError,
            "access_type",
        ),
        ("grant_type=password&service=s&service=t&client_id=c", InvalidRequestError, "repeated"),
        ("grant_type=password&client_id=c&scope=bad", InvalidScopeError, "bad"),
        ("a=b&&&=", InvalidRequestError, "not valid form data"),
    ],
    ids=[
        "no-client-id",
        "no-grant-type",
        "unsupported-grant",
        "no-refresh-token",
        "bad-access-type",
        "repeated-service",
        "bad-scope",
        "malformed-form",
    ],
)
def test_post_invalid(body: str, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        parse_token_request(post_event(body))


def test_post_requires_form_content_type() -> None:
    with pytest.raises(InvalidRequestError, match="Content-Type"):
        parse_token_request(post_event("{}", content_type="application/json"))


def test_post_non_ascii_base64_body() -> None:
    event = post_event("gr\xe4nt")
    event["isBase64Encoded"] = True
    with pytest.raises(InvalidRequestError, match="not valid UTF-8 form data"):
        parse_token_request(event)


def test_render_error_unavailable_hides_cause() -> None:
    response = render_error(
        errors.StoreUnavailableError("DynamoDB GetItem failed: ValidationException"),
        method="GET",
        realm="r",
    )
    assert response["statusCode"] == 503
    assert "DynamoDB" not in response["body"]
    assert "try again later" in json.loads(response["body"])["errors"][0]["message"]


def test_post_oversized_body() -> None:
    with pytest.raises(InvalidRequestError, match="larger than"):
        parse_token_request(post_event("a=" + "b" * 20000))


def test_other_method_rejected() -> None:
    event = get_event({})
    event["httpMethod"] = "PUT"
    with pytest.raises(InvalidRequestError, match="PUT is not allowed"):
        parse_token_request(event)


def issued(refresh: str | None = None) -> IssuedToken:
    return IssuedToken(
        token="header.claims.signature",
        jti="j1",
        subject="alice",
        issued_at=datetime(2026, 12, 4, 15, 30, 0, tzinfo=UTC),
        expires_in=300,
        access=(AccessEntry("repository", "a", ("pull",)),),
        refresh_token=refresh,
    )


def test_render_token_fields() -> None:
    response = render_token(issued())
    body = json.loads(response["body"])
    assert response["statusCode"] == 200
    assert response["headers"]["Cache-Control"] == "no-store"
    assert response["headers"]["Content-Type"] == "application/json"
    assert body["token"] == "header.claims.signature"
    assert body["access_token"] == body["token"]
    assert body["expires_in"] == 300
    assert isinstance(body["expires_in"], int)
    assert body["issued_at"] == "2026-12-04T15:30:00Z"
    assert "refresh_token" not in body


def test_render_token_with_refresh_token() -> None:
    body = json.loads(render_token(issued("rt1.x.y"))["body"])
    assert body["refresh_token"] == "rt1.x.y"


def test_render_error_get_uses_registry_shape() -> None:
    response = render_error(
        InvalidCredentialsError("invalid username or password", reason="wrong_password"),
        method="GET",
        realm="regauth",
    )
    assert response["statusCode"] == 401
    assert response["headers"]["WWW-Authenticate"].startswith('Basic realm="regauth"')
    assert json.loads(response["body"]) == {
        "errors": [
            {"code": "UNAUTHORIZED", "message": "invalid username or password", "detail": None}
        ]
    }


def test_render_error_post_uses_oauth_shape() -> None:
    response = render_error(
        InvalidCredentialsError("invalid username or password", reason="wrong_password"),
        method="POST",
        realm="regauth",
    )
    assert response["statusCode"] == 401
    assert json.loads(response["body"]) == {
        "error": "invalid_grant",
        "error_description": "invalid username or password",
    }


def test_render_error_too_many_requests() -> None:
    response = render_error(
        TooManyRequestsError("too many failed logins", retry_after=42), method="GET", realm="r"
    )
    assert response["statusCode"] == 429
    assert response["headers"]["Retry-After"] == "42"


def test_render_error_unexpected_hides_message() -> None:
    response = render_error(KeyError("internal table name"), method="GET", realm="r")
    assert response["statusCode"] == 500
    assert "internal table name" not in response["body"]
    assert json.loads(response["body"])["errors"][0]["code"] == "INTERNAL_ERROR"


def _error_classes() -> list[type[RegauthError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, RegauthError) and cls not in (RegauthError, errors.PolicyError)
    ]


@pytest.mark.parametrize("error_class", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_is_mapped(error_class: type[RegauthError]) -> None:
    mapped = error_response_for(error_class.__new__(error_class))
    assert mapped is not INTERNAL_ERROR
    assert any(issubclass(error_class, cls) for cls, _ in ERROR_RESPONSES)


@pytest.mark.parametrize(
    ("error_class", "status"),
    [
        (errors.RequestError, 400),
        (errors.AuthenticationError, 401),
        (errors.TooManyRequestsError, 429),
        (errors.UnavailableError, 503),
    ],
    ids=["request", "authentication", "lockout", "unavailable"],
)
def test_error_family_status(error_class: type[RegauthError], status: int) -> None:
    for cls in _error_classes():
        if issubclass(cls, error_class):
            assert error_response_for(cls.__new__(cls)).status == status, cls.__name__
