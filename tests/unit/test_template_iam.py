"""The template's IAM route: SigV4 on `POST /iam/token` only, partner accounts only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from regauth.local import LocalGateway
from regauth.template import ApiRoute, api_routes, load_template

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_RESOURCES = {
    "execute-api:/*/GET/token",
    "execute-api:/*/POST/token",
    "execute-api:/*/GET/certificates",
}
IAM_RESOURCE = "execute-api:/*/POST/iam/token"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


def statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    api = template["Resources"]["TokenApi"]["Properties"]
    return list(api["Auth"]["ResourcePolicy"]["CustomStatements"])


def resources_of(statement: dict[str, Any]) -> set[str]:
    resource = statement["Resource"]
    return {resource} if isinstance(resource, str) else set(resource)


def authorizers(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(r.method, r.path): r.authorizer for r in api_routes(template, ROOT)}


def test_iam_route_uses_sigv4(template: dict[str, Any]) -> None:
    assert authorizers(template)[("POST", "/iam/token")] == "AWS_IAM"


@pytest.mark.parametrize(
    "route",
    [("GET", "/token"), ("POST", "/token"), ("GET", "/certificates")],
    ids=["get-token", "post-token", "certificates"],
)
def test_public_routes_without_authorizer(template: dict[str, Any], route: tuple[str, str]) -> None:
    assert authorizers(template)[route] == ""


def test_resource_policy_public_routes(template: dict[str, Any]) -> None:
    public = [s for s in statements(template) if s["Principal"] == "*"]
    assert set().union(*(resources_of(s) for s in public)) == PUBLIC_RESOURCES


def test_resource_policy_iam_route_not_public(template: dict[str, Any]) -> None:
    public = [s for s in statements(template) if s["Principal"] == "*"]
    assert all(IAM_RESOURCE not in resources_of(s) for s in public)


def test_resource_policy_iam_route_partners(template: dict[str, Any]) -> None:
    (statement,) = [s for s in statements(template) if IAM_RESOURCE in resources_of(s)]
    assert statement["Principal"]["AWS"] == {
        "Fn::If": [
            "HasPartnerAccounts",
            {"Fn::Split": [",", {"Ref": "PartnerAccountIds"}]},
            {"Ref": "AWS::AccountId"},
        ]
    }


def test_resource_policy_allows_only(template: dict[str, Any]) -> None:
    assert {s["Effect"] for s in statements(template)} == {"Allow"}


def test_partner_accounts_pattern(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["PartnerAccountIds"]
    assert parameter["AllowedPattern"] == "^([0-9]{12}(,[0-9]{12})*)?$"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REGAUTH_IAM_SERVER_ID", {"Ref": "IamServerId"}),
        ("REGAUTH_IAM_REGIONS", {"Ref": "IamStsRegions"}),
    ],
    ids=["server-id", "regions"],
)
def test_iam_settings_in_environment(template: dict[str, Any], name: str, value: object) -> None:
    assert template["Globals"]["Function"]["Environment"]["Variables"][name] == value


def test_sts_endpoint_not_in_environment(template: dict[str, Any]) -> None:
    assert "REGAUTH_IAM_STS_ENDPOINT" not in json.dumps(template)


def test_iam_token_audit_lines_archived(template: dict[str, Any]) -> None:
    events = template["Resources"]["ArchiveAuditFunction"]["Properties"]["Events"]
    groups = [event["Properties"]["LogGroupName"] for event in events.values()]
    assert {"Ref": "IamTokenLogGroup"} in groups


def test_local_gateway_rejects_iam_route() -> None:
    calls: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        return {"statusCode": 200, "body": "{}"}

    route = ApiRoute("POST", "/iam/token", "Fn", Path("."), "app", "lambda_handler", "AWS_IAM")
    gateway = LocalGateway({("POST", "/iam/token"): (route, handler)})
    status, _, body = gateway.invoke("POST", "/iam/token", [], b"", "127.0.0.1")
    assert status == 501
    assert "AWS_IAM" in json.loads(body)["message"]
    assert calls == []
