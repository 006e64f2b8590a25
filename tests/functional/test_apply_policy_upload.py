"""The apply function: `policy.yaml` uploaded to the policy bucket, with moto's S3."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from functions.apply_policy import app
from regauth.audit import MemoryAuditSink
from regauth.policy_apply import PolicyUploadHandler
from regauth.stores import DynamoStore
from tests.functional.conftest import TABLE

BUCKET = "regauth-policy-test"

VALID = """\
users:
  - name: dana
grants:
  - id: dana-own
    to: user:dana
    repositories: ["users/{name}/**"]
    actions: [pull, push]
"""

INVALID = """\
users:
  - name: dana
grants:
  - to: user:ghost
    repositories: ["a"]
    actions: [pull, fly]
"""


@pytest.fixture
def s3(key_id: str) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture
def handler(s3: Any, audit: MemoryAuditSink) -> PolicyUploadHandler:
    return PolicyUploadHandler(s3, boto3.client("dynamodb"), TABLE, audit)


def upload(s3: Any, text: str, key: str = "policy.yaml") -> dict[str, Any]:
    """Put the object and return the S3 event notification that S3 would send."""
    response = s3.put_object(Bucket=BUCKET, Key=key, Body=text.encode())
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
                "requestParameters": {"sourceIPAddress": "203.0.113.9"},
                "s3": {
                    "bucket": {"name": BUCKET},
                    "object": {"key": key, "versionId": response.get("VersionId")},
                },
            }
        ]
    }


def result_file(s3: Any) -> dict[str, Any]:
    body = s3.get_object(Bucket=BUCKET, Key="policy.yaml.result.json")["Body"].read()
    result: dict[str, Any] = json.loads(body)
    return result


def test_upload_applies_policy(s3: Any, handler: PolicyUploadHandler) -> None:
    app.handle(upload(s3, VALID), handler, "req-1")
    result = result_file(s3)
    assert result["status"] == "applied"
    assert result["version"] == 1
    assert result["problems"] == []
    dana = DynamoStore(boto3.client("dynamodb"), TABLE).get_principal("user:dana")
    assert dana is not None
    assert [grant.pattern for grant in dana.grants] == ["users/dana/**"]


def test_upload_audited_with_actor(
    s3: Any, handler: PolicyUploadHandler, audit: MemoryAuditSink
) -> None:
    app.handle(upload(s3, VALID), handler, "req-1")
    event = audit.events[-1]
    assert event.event_type == "policy.applied"
    assert event.principal == "AWS:AIDAEXAMPLE"
    assert event.details["version"] == "1"
    assert event.context.source_ip == "203.0.113.9"


def test_upload_same_file_unchanged(
    s3: Any, handler: PolicyUploadHandler, audit: MemoryAuditSink
) -> None:
    app.handle(upload(s3, VALID), handler)
    app.handle(upload(s3, VALID), handler)
    result = result_file(s3)
    assert result["status"] == "unchanged"
    assert result["version"] == 1
    applied = [e for e in audit.events if e.event_type == "policy.applied"]
    assert [e.details["changed"] for e in applied] == [True, False]


def test_invalid_upload_rejected(
    s3: Any, handler: PolicyUploadHandler, audit: MemoryAuditSink
) -> None:
    app.handle(upload(s3, VALID), handler)
    app.handle(upload(s3, INVALID), handler)
    result = result_file(s3)
    assert result["status"] == "rejected"
    assert result["version"] is None
    assert len(result["problems"]) == 2
    assert result["problems"][0].startswith(f"s3://{BUCKET}/policy.yaml?versionId=")
    assert ":4:9: grants[0].to: unknown user 'user:ghost'" in result["problems"][0]
    assert ":6:21: grants[0].actions[1]: unknown action 'fly'" in result["problems"][1]
    assert audit.events[-1].event_type == "policy.rejected"
    dana = DynamoStore(boto3.client("dynamodb"), TABLE).get_principal("user:dana")
    assert dana is not None


def test_deeply_nested_upload_rejected(
    s3: Any, handler: PolicyUploadHandler, audit: MemoryAuditSink
) -> None:
    # 5,000 levels once raised RecursionError, which left no result file and no audit.
    app.handle(upload(s3, "users: " + "[" * 5000 + "]" * 5000 + "\n"), handler)
    result = result_file(s3)
    assert result["status"] == "rejected"
    assert ":1:23: lists and mappings are nested more than 16 levels" in result["problems"][0]
    assert audit.events[-1].event_type == "policy.rejected"


def test_other_keys_ignored(s3: Any, handler: PolicyUploadHandler) -> None:
    outcome = app.handle(upload(s3, VALID, key="drafts/policy.yaml"), handler)
    assert outcome == {"outcomes": []}


def test_non_utf8_rejected(s3: Any, handler: PolicyUploadHandler) -> None:
    event = upload(s3, "")
    s3.put_object(Bucket=BUCKET, Key="policy.yaml", Body=b"\xff\xfe")
    event["Records"][0]["s3"]["object"]["versionId"] = None
    app.handle(event, handler)
    assert result_file(s3)["status"] == "rejected"
