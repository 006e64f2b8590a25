"""The audit archiver against moto: payload decoding, chaining, verification, no loss."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import jsonschema
import pytest
from botocore.exceptions import ClientError

from functions.archive_audit import app
from regauth.archive import (
    CHAIN_HEAD_KEY,
    GENESIS_DIGEST,
    MAX_BODY_BYTES,
    AuditArchiver,
    AuditLogWriter,
    ChainLink,
    chain_digest,
    replay_queue,
)
from regauth.archive_reader import ArchiveReader
from regauth.audit import AuditEvent, MemoryAuditSink, RequestContext
from regauth.audit_cli import add_audit_parser, parse_moment, run_audit
from regauth.errors import ArchiveUnavailableError, InvalidAuditPayloadError
from regauth.local import provision_audit_bucket
from regauth.runtime import Runtime
from regauth.template import load_template
from tests.functional.conftest import ROOT, TABLE, Users, basic, load_event
from tests.functional.test_issue_token import issue_get

BUCKET = "regauth-audit-test"
SCHEMA = json.loads((ROOT / "docs" / "audit-event.schema.json").read_text())


@pytest.fixture
def bucket(key_id: str) -> str:
    # `key_id` provisions the table; the bucket is made from the template's definition.
    return provision_audit_bucket(load_template(ROOT / "template.yaml"), BUCKET)


@pytest.fixture
def archiver(bucket: str) -> AuditArchiver:
    return AuditArchiver(boto3.client("s3"), boto3.client("dynamodb"), bucket, TABLE)


@pytest.fixture
def reader(bucket: str) -> ArchiveReader:
    return ArchiveReader(boto3.client("s3"), bucket)


def audit_line(principal: str = "user:alice", **fields: Any) -> dict[str, Any]:
    """A Powertools audit log line, with the extra keys Powertools adds."""
    event = AuditEvent(
        event_type="token.issued",
        outcome="success",
        context=RequestContext("req-1", "198.51.100.7", "docker/27", "registry.test"),
        principal=principal,
        auth_method="password",
        details={"requested": [], "granted": [], "dropped": [], "jti": "j1", "expires_at": 1},
    )
    return {"level": "INFO", "service": "regauth", "audit": True, **event.to_record(), **fields}


def payload(lines: list[dict[str, Any]], message_type: str = "DATA_MESSAGE") -> dict[str, Any]:
    """Encode log lines as a CloudWatch Logs subscription event (gzip, then base64)."""
    document = {
        "messageType": message_type,
        "owner": "123456789012",
        "logGroup": "/aws/lambda/regauth-issue-token",
        "logStream": "2025/01/01/[$LATEST]abc",
        "subscriptionFilters": ["audit"],
        "logEvents": [
            {"id": str(index), "timestamp": 0, "message": json.dumps(line)}
            for index, line in enumerate(lines)
        ],
    }
    data = base64.b64encode(gzip.compress(json.dumps(document).encode())).decode()
    return {"awslogs": {"data": data}}


def archive_batches(archiver: AuditArchiver, count: int) -> list[ChainLink]:
    links = []
    for _ in range(count):
        link = archiver.archive([audit_line()])
        assert link is not None
        links.append(link)
    return links


def test_archiver_decodes_sample_payload(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    result = app.handle(load_event("cloudwatch_logs_audit.json"), archiver)
    records = list(reader.records())

    assert result["events"] == 2
    assert [r["event_type"] for r in records] == ["token.issued", "authentication.failed"]
    assert records[0]["principal"] == "user:alice"
    assert "level" not in records[0]
    assert "xray_trace_id" not in records[0]


def test_archiver_records_match_schema(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    app.handle(load_event("cloudwatch_logs_audit.json"), archiver)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in reader.records():
        assert list(validator.iter_errors(record)) == []


def test_archiver_writes_hour_partition(archiver: AuditArchiver, bucket: str) -> None:
    now = datetime.now(UTC)
    link = archiver.archive([audit_line()])
    assert link is not None

    expected_prefix = f"audit/year={now:%Y}/month={now:%m}/day={now:%d}/hour={now:%H}/000000000001-"
    assert link.key.startswith(expected_prefix)
    assert link.key.endswith(".jsonl.gz")
    head = boto3.client("s3").head_object(Bucket=bucket, Key=link.key)
    assert head["ContentEncoding"] == "gzip"


def test_archiver_chains_digests(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    links = archive_batches(archiver, 3)

    assert links[0].previous_digest == GENESIS_DIGEST
    assert links[1].previous_digest == links[0].digest
    assert links[2].previous_digest == links[1].digest
    assert [link.sequence for link in links] == [1, 2, 3]
    body, metadata = reader.read_body(links[1].key)
    assert metadata["chain-digest"] == chain_digest(links[0].digest, body)
    assert archiver.chain_head() == links[2]


def test_verify_head_digest_mismatch(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    archive_batches(archiver, 3)
    head = archiver.chain_head()
    assert head is not None
    report = reader.verify(head=dataclasses.replace(head, digest="0" * 64))

    assert not report.ok
    assert report.broken is not None
    assert report.broken.problem == "digest differs from the chain head"


def test_verify_intact_chain(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    archive_batches(archiver, 3)
    report = reader.verify(head=archiver.chain_head())

    assert report.ok
    assert report.objects == 3
    assert report.events == 3


def _modify(s3: Any, bucket: str, links: list[ChainLink]) -> None:
    original = s3.get_object(Bucket=bucket, Key=links[1].key)
    body = gzip.decompress(original["Body"].read()).replace(b"user:alice", b"user:mallo")
    s3.put_object(
        Bucket=bucket, Key=links[1].key, Body=gzip.compress(body), Metadata=original["Metadata"]
    )


def _delete(s3: Any, bucket: str, links: list[ChainLink]) -> None:
    s3.delete_object(Bucket=bucket, Key=links[1].key)


def _reorder(s3: Any, bucket: str, links: list[ChainLink]) -> None:
    second = s3.get_object(Bucket=bucket, Key=links[1].key)
    third = s3.get_object(Bucket=bucket, Key=links[2].key)
    second_body, third_body = second["Body"].read(), third["Body"].read()
    s3.put_object(Bucket=bucket, Key=links[1].key, Body=third_body, Metadata=third["Metadata"])
    s3.put_object(Bucket=bucket, Key=links[2].key, Body=second_body, Metadata=second["Metadata"])


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_modify, "content does not match its recorded digest"),
        (_delete, "expected sequence 2"),
        (_reorder, "metadata names sequence 3"),
    ],
    ids=["modified", "deleted", "reordered"],
)
def test_verify_names_first_broken_link(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str, tamper: Any, problem: str
) -> None:
    links = archive_batches(archiver, 4)
    tamper(boto3.client("s3"), bucket, links)
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert problem in report.broken.problem
    expected_key = links[2].key if tamper is _delete else links[1].key
    assert report.broken.key == expected_key


def test_verify_detects_deleted_newest(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str
) -> None:
    links = archive_batches(archiver, 3)
    boto3.client("s3").delete_object(Bucket=bucket, Key=links[2].key)
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.sequence == 3
    assert "newer objects are missing" in report.broken.problem


def test_verify_date_range(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    archive_batches(archiver, 2)
    now = datetime.now(UTC)
    inside = reader.verify(now - timedelta(hours=1), now + timedelta(hours=1))
    outside = reader.verify(now - timedelta(days=3), now - timedelta(days=2))

    assert inside.ok
    assert inside.objects == 2
    assert outside.objects == 0


def _delete_head() -> None:
    boto3.client("dynamodb").delete_item(TableName=TABLE, Key={"pk": {"S": CHAIN_HEAD_KEY}})


def _put_head(link: ChainLink) -> None:
    boto3.client("dynamodb").put_item(
        TableName=TABLE,
        Item={
            "pk": {"S": CHAIN_HEAD_KEY},
            "sequence": {"N": str(link.sequence)},
            "key": {"S": link.key},
            "previous_digest": {"S": link.previous_digest},
            "digest": {"S": link.digest},
        },
    )


def _version_counts(bucket: str, key: str) -> tuple[int, int]:
    listed = boto3.client("s3").list_object_versions(Bucket=bucket, Prefix=key)
    return len(listed.get("Versions", [])), len(listed.get("DeleteMarkers", []))


def test_verify_reports_missing_head(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    archive_batches(archiver, 2)
    _delete_head()
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.key == CHAIN_HEAD_KEY
    assert "chain head item is missing" in report.broken.problem


def test_verify_missing_head_hides_no_truncation(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str
) -> None:
    links = archive_batches(archiver, 3)
    boto3.client("s3").delete_object(Bucket=bucket, Key=links[2].key)
    _delete_head()
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.key == CHAIN_HEAD_KEY
    assert report.broken.sequence == 2


def test_verify_empty_archive_without_head(reader: ArchiveReader) -> None:
    report = reader.verify(head=None)

    assert report.ok
    assert report.objects == 0


def test_archiver_rejects_new_chain_over_archive(archiver: AuditArchiver, bucket: str) -> None:
    archive_batches(archiver, 2)
    _delete_head()

    with pytest.raises(ArchiveUnavailableError, match="chain head item 'audit-chain#head'"):
        archiver.archive([audit_line(principal="user:bob")])
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="audit/")
    assert listed["KeyCount"] == 2
    assert archiver.chain_head() is None


def test_archiver_resumes_after_head_restored(
    archiver: AuditArchiver, reader: ArchiveReader
) -> None:
    links = archive_batches(archiver, 2)
    _delete_head()
    with pytest.raises(ArchiveUnavailableError):
        archiver.archive([audit_line(principal="user:bob")])
    _put_head(links[1])
    link = archiver.archive([audit_line(principal="user:bob")])

    assert link is not None
    assert link.sequence == 3
    assert link.previous_digest == links[1].digest
    assert reader.verify(head=archiver.chain_head()).ok


def _rechain_from_second(bucket: str, links: list[ChainLink]) -> None:
    """Rewrite the second object's content, then re-chain every later object and the head.

    An insider who can write both the bucket and the table can do this. Only the extra
    object versions that the versioned bucket keeps show the change.
    """
    s3 = boto3.client("s3")
    previous = links[0].digest
    for index, link in enumerate(links[1:], start=1):
        original = s3.get_object(Bucket=bucket, Key=link.key)
        body = gzip.decompress(original["Body"].read())
        if index == 1:
            body = body.replace(b"user:alice", b"user:mallo")
        digest = chain_digest(previous, body)
        s3.put_object(
            Bucket=bucket,
            Key=link.key,
            Body=gzip.compress(body),
            Metadata={
                "chain-sequence": str(link.sequence),
                "chain-previous": previous,
                "chain-digest": digest,
            },
        )
        rewritten = ChainLink(link.sequence, link.key, previous, digest)
        previous = digest
    _put_head(rewritten)


def test_verify_detects_rechained_rewrite(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str
) -> None:
    links = archive_batches(archiver, 3)
    _rechain_from_second(bucket, links)
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.key == links[1].key
    assert "found 2 object version(s) and 0 delete marker(s)" in report.broken.problem


def test_verify_detects_rewound_head(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str
) -> None:
    links = archive_batches(archiver, 3)
    boto3.client("s3").delete_object(Bucket=bucket, Key=links[2].key)
    _put_head(links[1])
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.key == links[2].key
    assert "found 1 object version(s) and 1 delete marker(s)" in report.broken.problem


def test_verify_detects_deleted_archive(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str
) -> None:
    links = archive_batches(archiver, 2)
    for link in links:
        boto3.client("s3").delete_object(Bucket=bucket, Key=link.key)
    _delete_head()
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.key == links[0].key
    assert "delete marker" in report.broken.problem


def _truncated_gzip() -> bytes:
    return gzip.compress(b'{"event_id":"e1"}\n' * 100)[:-12]


@pytest.mark.parametrize(
    ("content", "limit", "problem"),
    [
        (b"plain text, not gzip", MAX_BODY_BYTES, "is not valid gzip: BadGzipFile"),
        (_truncated_gzip(), MAX_BODY_BYTES, "is not valid gzip: EOFError"),
        (
            gzip.compress(bytes(MAX_BODY_BYTES + 1)),
            MAX_BODY_BYTES,
            f"decompresses to more than {MAX_BODY_BYTES} bytes",
        ),
        (b"x" * 4096, 1024, "is larger than 1024 bytes"),
    ],
    ids=["not-gzip", "truncated", "gzip-bomb", "stored-too-large"],
)
def test_verify_reports_unreadable_object(
    archiver: AuditArchiver, bucket: str, content: bytes, limit: int, problem: str
) -> None:
    links = archive_batches(archiver, 3)
    boto3.client("s3").put_object(Bucket=bucket, Key=links[1].key, Body=content)
    reader = ArchiveReader(boto3.client("s3"), bucket, max_body_bytes=limit)
    report = reader.verify(head=archiver.chain_head())

    assert report.broken is not None
    assert report.broken.key == links[1].key
    assert problem in report.broken.problem


class FailingS3:
    """Delegates to a real client but fails the first `failures` PutObject calls."""

    def __init__(self, client: Any, failures: int) -> None:
        self._client = client
        self.failures = failures

    def put_object(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            error = {"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_failure_then_retry_loses_nothing(bucket: str, reader: ArchiveReader) -> None:
    s3 = FailingS3(boto3.client("s3"), failures=1)
    archiver = AuditArchiver(s3, boto3.client("dynamodb"), bucket, TABLE)  # type: ignore[arg-type]
    event = payload([audit_line(), audit_line(principal="user:bob")])

    with pytest.raises(ArchiveUnavailableError):
        app.handle(event, archiver)
    app.handle(event, archiver)
    records = list(reader.records())

    assert sorted(r["principal"] for r in records) == ["user:alice", "user:bob"]
    assert reader.verify(head=archiver.chain_head()).ok
    assert archiver.chain_head() is not None
    assert archiver.chain_head().sequence == 1  # type: ignore[union-attr]


class FailingDynamoDB:
    """Delegates to a real client but fails the first `failures` UpdateItem calls."""

    def __init__(self, client: Any, failures: int) -> None:
        self._client = client
        self.failures = failures

    def update_item(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            error = {"Error": {"Code": "InternalServerError", "Message": "injected"}}
            raise ClientError(error, "UpdateItem")  # type: ignore[arg-type]
        return self._client.update_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_retry_after_write_keeps_one_version(bucket: str, reader: ArchiveReader) -> None:
    dynamodb = FailingDynamoDB(boto3.client("dynamodb"), failures=1)
    archiver = AuditArchiver(boto3.client("s3"), dynamodb, bucket, TABLE)  # type: ignore[arg-type]
    event = payload([audit_line()])

    with pytest.raises(ArchiveUnavailableError):
        app.handle(event, archiver)
    result = app.handle(event, archiver)

    assert _version_counts(bucket, result["key"]) == (1, 0)
    assert reader.verify(head=archiver.chain_head()).ok


def test_retry_rejects_foreign_object(bucket: str) -> None:
    dynamodb = FailingDynamoDB(boto3.client("dynamodb"), failures=1)
    archiver = AuditArchiver(boto3.client("s3"), dynamodb, bucket, TABLE)  # type: ignore[arg-type]
    event = payload([audit_line()])
    with pytest.raises(ArchiveUnavailableError):
        app.handle(event, archiver)
    head = archiver.chain_head()
    assert head is not None
    boto3.client("s3").put_object(
        Bucket=bucket, Key=head.key, Body=gzip.compress(b"{}\n"), Metadata={"chain-digest": "0"}
    )

    with pytest.raises(ArchiveUnavailableError, match="already exists with chain digest '0'"):
        app.handle(event, archiver)


def test_duplicate_delivery_archives_once(
    archiver: AuditArchiver, reader: ArchiveReader, bucket: str
) -> None:
    event = payload([audit_line(), audit_line()])
    first = app.handle(event, archiver)
    second = app.handle(event, archiver)
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="audit/")

    assert first["key"] == second["key"]
    assert listed["KeyCount"] == 1
    assert len(list(reader.records())) == 2


def test_concurrent_archivers_keep_chain(bucket: str, reader: ArchiveReader) -> None:
    errors: list[BaseException] = []
    # DynamoDB applies a transaction atomically, but moto 5.2 checks and writes without
    # a lock, so two threads can both pass the same condition. A lock around each
    # transaction restores DynamoDB's guarantee; everything else still interleaves.
    transaction_lock = threading.Lock()

    def atomic_dynamodb() -> Any:
        client = boto3.client("dynamodb")
        transact = client.transact_write_items

        def locked(**kwargs: Any) -> Any:
            with transaction_lock:
                return transact(**kwargs)

        client.transact_write_items = locked  # type: ignore[method-assign]
        return client

    def run() -> None:
        archiver = AuditArchiver(boto3.client("s3"), atomic_dynamodb(), bucket, TABLE)
        try:
            archive_batches(archiver, 3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    head = AuditArchiver(boto3.client("s3"), boto3.client("dynamodb"), bucket, TABLE).chain_head()
    report = reader.verify(head=head)

    assert errors == []
    assert report.ok, report.broken
    assert report.objects == 12


def test_replay_from_dead_letter_queue(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="archive-dlq")["QueueUrl"]
    plain = payload([audit_line(principal="user:alice")])
    wrapped = {"requestPayload": payload([audit_line(principal="user:bob")])}
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(plain))
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(wrapped))

    replayed = replay_queue(sqs, queue_url, archiver)
    remaining = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0).get("Messages", [])

    assert replayed == 2
    assert remaining == []
    assert sorted(r["principal"] for r in reader.records()) == ["user:alice", "user:bob"]


def test_replay_twice_is_harmless(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="archive-dlq")["QueueUrl"]
    event = payload([audit_line()])
    app.handle(event, archiver)
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    replay_queue(sqs, queue_url, archiver)

    assert len(list(reader.records())) == 1
    assert archiver.chain_head().sequence == 1  # type: ignore[union-attr]


def test_archiver_copies_to_audit_log_group(bucket: str) -> None:
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName="/regauth/test/audit")
    archiver = AuditArchiver(
        boto3.client("s3"),
        boto3.client("dynamodb"),
        bucket,
        TABLE,
        log_writer=AuditLogWriter(logs, "/regauth/test/audit"),
    )
    app.handle(payload([audit_line()]), archiver)
    stream = logs.describe_log_streams(logGroupName="/regauth/test/audit")["logStreams"][0]
    events = logs.get_log_events(
        logGroupName="/regauth/test/audit", logStreamName=stream["logStreamName"]
    )["events"]

    assert len(events) == 1
    assert json.loads(events[0]["message"])["principal"] == "user:alice"


def test_control_message_archives_nothing(archiver: AuditArchiver) -> None:
    result = app.handle(payload([], message_type="CONTROL_MESSAGE"), archiver)
    assert result == {"events": 0, "key": None}


def test_non_audit_lines_skipped(archiver: AuditArchiver, reader: ArchiveReader) -> None:
    event = payload([audit_line(), {"level": "INFO", "message": "request"}])
    result = app.handle(event, archiver)
    assert result["events"] == 1


@pytest.mark.parametrize(
    "event",
    [{}, {"awslogs": {"data": "not base64!"}}, {"awslogs": {"data": "aGVsbG8="}}],
    ids=["missing", "not-base64", "not-gzip"],
)
def test_invalid_payload_rejected(archiver: AuditArchiver, event: dict[str, Any]) -> None:
    with pytest.raises(InvalidAuditPayloadError):
        app.handle(event, archiver)


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    import argparse

    parser = argparse.ArgumentParser()
    add_audit_parser(parser.add_subparsers(dest="command"))
    lines: list[str] = []
    status = run_audit(parser.parse_args(argv), out=lines.append)
    return status, lines


STACK_TEMPLATE = {
    "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "dlq"}}},
    "Outputs": {
        "AuditBucketName": {"Value": BUCKET},
        "TableName": {"Value": TABLE},
        "AuditDeadLetterQueueUrl": {"Value": {"Ref": "Queue"}},
    },
}


@pytest.fixture
def stack(bucket: str) -> str:
    boto3.client("cloudformation").create_stack(
        StackName="regauth-test", TemplateBody=json.dumps(STACK_TEMPLATE)
    )
    return "regauth-test"


def test_cli_search_by_principal(archiver: AuditArchiver, stack: str) -> None:
    archiver.archive([audit_line(principal="user:alice"), audit_line(principal="user:bob")])
    status, lines = _cli(
        ["audit", "search", "--stack", stack, "--principal", "alice", "--since", "1h", "--json"]
    )

    assert status == 0
    assert [json.loads(line)["principal"] for line in lines] == ["user:alice"]


def test_cli_verify_reports_broken(archiver: AuditArchiver, stack: str, bucket: str) -> None:
    links = archive_batches(archiver, 2)
    boto3.client("s3").delete_object(Bucket=bucket, Key=links[0].key)
    status, lines = _cli(["audit", "verify", "--stack", stack])

    assert status == 2
    assert lines[0].startswith("BROKEN at sequence 2")


def test_cli_verify_reports_missing_head(archiver: AuditArchiver, stack: str) -> None:
    archive_batches(archiver, 2)
    _delete_head()
    status, lines = _cli(["audit", "verify", "--stack", stack])

    assert status == 2
    assert lines[0].startswith("BROKEN at sequence 2, audit-chain#head:")


def test_cli_search_reports_unreadable_object(
    archiver: AuditArchiver, stack: str, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    link = archiver.archive([audit_line()])
    assert link is not None
    boto3.client("s3").put_object(Bucket=bucket, Key=link.key, Body=b"not gzip")
    status, lines = _cli(["audit", "search", "--stack", stack, "--since", "1h"])

    assert status == 1
    assert lines == []
    assert "is not valid gzip" in capsys.readouterr().err


def test_cli_tail_prints_events(archiver: AuditArchiver, stack: str) -> None:
    archiver.archive([audit_line(principal="user:carol")])
    status, lines = _cli(["audit", "tail", "--stack", stack])

    assert status == 0
    assert "user:carol" in lines[0]
    assert "token.issued" in lines[0]


def test_cli_tail_honours_since(archiver: AuditArchiver, stack: str) -> None:
    old_time = (datetime.now(UTC) - timedelta(minutes=5)).isoformat(timespec="milliseconds")
    archiver.archive(
        [audit_line(principal="user:old", time=old_time), audit_line(principal="user:new")]
    )
    status, lines = _cli(["audit", "tail", "--since", "1m", "--stack", stack])

    assert status == 0
    assert len(lines) == 1
    assert "user:new" in lines[0]


def test_cli_replay_uses_stack_queue(archiver: AuditArchiver, stack: str) -> None:
    sqs = boto3.client("sqs")
    queue_url = sqs.get_queue_url(QueueName="dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(payload([audit_line()])))
    status, lines = _cli(["audit", "replay", "--stack", stack])

    assert status == 0
    assert lines == ["replayed 1 payloads from the dead-letter queue"]


def test_cli_missing_local_state(tmp_path: Any, aws: None) -> None:
    status, lines = _cli(["audit", "search", "--state-dir", str(tmp_path)])
    assert status == 1
    assert lines == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", datetime(2025, 1, 1, 11, 58, 30, tzinfo=UTC)),
        ("1h", datetime(2025, 1, 1, 11, tzinfo=UTC)),
        ("2d", datetime(2024, 12, 30, 12, tzinfo=UTC)),
        ("2024-12-31", datetime(2024, 12, 31, tzinfo=UTC)),
        ("2024-12-31T10:00:00+01:00", datetime(2024, 12, 31, 9, tzinfo=UTC)),
    ],
    ids=["seconds", "hours", "days", "date", "offset"],
)
def test_parse_moment(value: str, expected: datetime) -> None:
    assert parse_moment(value, datetime(2025, 1, 1, 12, tzinfo=UTC)) == expected


def test_token_request_emits_certificate_event(
    runtime: Runtime, users: Users, audit: MemoryAuditSink
) -> None:
    issue_get(runtime, ["repository:team/app:pull"], basic("alice", users.alice))
    events = [e for e in audit.events if e.event_type == "signing_certificate.issued"]
    leaf = runtime.signing.current().certificate

    assert len(events) == 1
    assert events[0].details["serial"] == format(leaf.serial_number, "x")
    assert events[0].details["not_after"] == int(leaf.not_valid_after_utc.timestamp())


def test_event_ids_unique(runtime: Runtime, users: Users, audit: MemoryAuditSink) -> None:
    for _ in range(3):
        issue_get(runtime, ["repository:team/app:pull"], basic("alice", users.alice))
    event_ids = [event.event_id for event in audit.events]
    assert len(set(event_ids)) == len(event_ids)
    assert all(uuid.UUID(event_id) for event_id in event_ids)
