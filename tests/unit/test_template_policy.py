"""The SAM template's policy bucket, apply function and admin function."""

from pathlib import Path
from typing import Any

import pytest

from regauth.template import load_template

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    resources: dict[str, Any] = load_template(ROOT / "template.yaml")["Resources"]
    return resources


def test_policy_bucket_versioned_private(resources: dict[str, Any]) -> None:
    bucket = resources["PolicyBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}


def test_policy_bucket_tls_only(resources: dict[str, Any]) -> None:
    (statement,) = resources["PolicyBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_upload_event_selects_policy_yaml(resources: dict[str, Any]) -> None:
    event = resources["ApplyPolicyFunction"]["Properties"]["Events"]["PolicyUpload"]
    assert event["Type"] == "S3"
    assert event["Properties"]["Bucket"] == {"Ref": "PolicyBucket"}
    rules = event["Properties"]["Filter"]["S3Key"]["Rules"]
    assert rules == [
        {"Name": "prefix", "Value": "policy.yaml"},
        {"Name": "suffix", "Value": "policy.yaml"},
    ]


def test_apply_function_bucket_access_minimal(resources: dict[str, Any]) -> None:
    statements = resources["ApplyPolicyBucketAccess"]["Properties"]["PolicyDocument"]["Statement"]
    assert [statement["Action"] for statement in statements] == [
        ["s3:GetObject", "s3:GetObjectVersion"],
        "s3:PutObject",
    ]
    assert statements[1]["Resource"] == {"Fn::Sub": "${PolicyBucket.Arn}/policy.yaml.result.json"}


@pytest.mark.parametrize(
    ("function", "handler_dir"),
    [("AdminFunction", "functions/admin/"), ("ApplyPolicyFunction", "functions/apply_policy/")],
    ids=["admin", "apply-policy"],
)
def test_function_code_exists(resources: dict[str, Any], function: str, handler_dir: str) -> None:
    properties = resources[function]["Properties"]
    assert properties["CodeUri"] == handler_dir
    assert (ROOT / handler_dir / "app.py").is_file()


def test_admin_function_has_no_api(resources: dict[str, Any]) -> None:
    assert "Events" not in resources["AdminFunction"]["Properties"]
