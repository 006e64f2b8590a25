"""The local gateway: API Gateway REST events built from HTTP requests, and routing."""

import base64
import json
from pathlib import Path
from typing import Any

from regauth.local import LocalGateway, ServeOptions, build_event, registry_config_block
from regauth.template import ApiRoute


def test_build_event_repeated_query_and_headers() -> None:
    event = build_event(
        "GET",
        "/token?service=registry.test&scope=repository%3Aa%3Apull&scope=repository%3Ab%3Apush",
        [
            ("Authorization", "Basic eDp5"),
            ("User-Agent", "docker/27"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
        ],
        b"",
        source_ip="127.0.0.1",
        resource="/token",
    )
    assert event["httpMethod"] == "GET"
    assert event["path"] == "/token"
    assert event["multiValueQueryStringParameters"]["scope"] == [
        "repository:a:pull",
        "repository:b:push",
    ]
    assert event["queryStringParameters"]["service"] == "registry.test"
    assert event["multiValueHeaders"]["X-Multi"] == ["1", "2"]
    assert event["headers"]["Authorization"] == "Basic eDp5"
    assert event["requestContext"]["identity"] == {
        "sourceIp": "127.0.0.1",
        "userAgent": "docker/27",
    }
    assert event["body"] is None
    assert event["isBase64Encoded"] is False


def test_build_event_binary_body_base64() -> None:
    event = build_event("POST", "/token", [], b"\xff\x00", source_ip="::1", resource="/token")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\x00"


def make_gateway(calls: list[dict[str, Any]]) -> LocalGateway:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        return {"statusCode": 201, "headers": {"X-Test": "yes"}, "body": json.dumps({"ok": True})}

    route = ApiRoute("GET", "/token", "Fn", Path("."), "app", "lambda_handler")
    return LocalGateway({("GET", "/token"): (route, handler)})


def test_gateway_routes_to_handler() -> None:
    calls: list[dict[str, Any]] = []
    status, headers, body = make_gateway(calls).invoke("GET", "/token?x=1", [], b"", "127.0.0.1")
    assert status == 201
    assert headers == {"X-Test": "yes"}
    assert json.loads(body) == {"ok": True}
    assert calls[0]["resource"] == "/token"


def test_gateway_unknown_path_404() -> None:
    status, _, body = make_gateway([]).invoke("GET", "/v2/", [], b"", "127.0.0.1")
    assert status == 404
    assert json.loads(body) == {"message": "Not Found"}


def test_gateway_wrong_method_405() -> None:
    calls: list[dict[str, Any]] = []
    status, _, _ = make_gateway(calls).invoke("DELETE", "/token", [], b"", "127.0.0.1")
    assert status == 405
    assert calls == []


def test_registry_config_block() -> None:
    options = ServeOptions(
        host="127.0.0.1",
        port=5001,
        policy=Path("p.yaml"),
        state_dir=Path("/state"),
        services=("registry.local",),
        issuer="regauth-local",
        template=Path("template.yaml"),
    )
    block = registry_config_block(options, "http://127.0.0.1:5001/token", Path("/state/r.pem"))
    assert block.splitlines() == [
        "auth:",
        "  token:",
        "    realm: http://127.0.0.1:5001/token",
        "    service: registry.local",
        "    issuer: regauth-local",
        "    rootcertbundle: /state/r.pem",
    ]
