"""The SAM template: the resources the token service needs and what local mode reads."""

import tomllib
from pathlib import Path

import pytest

from regauth.template import (
    TemplateError,
    api_routes,
    load_template,
    single_resource_properties,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(ROOT / "template.yaml")


def test_routes_match_handlers(template: dict) -> None:
    routes = {(r.method, r.path): r for r in api_routes(template, ROOT)}
    assert set(routes) == {
        ("GET", "/token"),
        ("POST", "/token"),
        ("GET", "/certificates"),
        ("POST", "/iam/token"),
    }
    for route in routes.values():
        assert (route.code_dir / f"{route.module}.py").is_file()
        assert route.handler == "lambda_handler"


def test_signing_key_is_p256_sign_verify(template: dict) -> None:
    key = single_resource_properties(template, "AWS::KMS::Key")
    assert key["KeySpec"] == "ECC_NIST_P256"
    assert key["KeyUsage"] == "SIGN_VERIFY"


def test_table_key_schema(template: dict) -> None:
    table = single_resource_properties(template, "AWS::DynamoDB::Table")
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_rest_api_v1(template: dict) -> None:
    types = {resource["Type"] for resource in template["Resources"].values()}
    assert "AWS::Serverless::Api" in types
    assert "AWS::Serverless::HttpApi" not in types


def test_functions_use_layer_and_runtime(template: dict) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Layers"] == [{"Ref": "RegauthLayer"}]


def test_intrinsic_tags_parsed(template: dict) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["REGAUTH_KEY_ID"] == {"Fn::GetAtt": ["SigningKey", "Arn"]}
    assert env["REGAUTH_TABLE"] == {"Ref": "TokenTable"}


def test_missing_resources_section(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text("AWSTemplateFormatVersion: '2010-09-09'\n")
    with pytest.raises(TemplateError, match="no Resources"):
        load_template(path)


def test_layer_requirements_match_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = (ROOT / "layers/regauth/requirements.txt").read_text().split()
    assert requirements == pyproject["project"]["dependencies"], "run make layer-requirements"
