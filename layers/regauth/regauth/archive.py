"""Archive audit events to S3 as hash-chained, gzip-compressed JSON Lines objects.

Token functions print audit events to their log groups. A CloudWatch Logs
subscription sends the lines to the archiver function, which calls `AuditArchiver`.
The local server calls it directly.

Every delivery becomes one object, `audit/year=YYYY/month=MM/day=DD/hour=HH/
<sequence>-<batch id>.jsonl.gz`, partitioned by the hour in which it was archived, so
that sequence order and key order agree. Object metadata records the chain:

- `chain-sequence`: the object's position in the chain, starting at 1.
- `chain-previous`: the digest of the object with the previous sequence.
- `chain-digest`: SHA-256 over `chain-previous`, a newline and the uncompressed body.

Editing, deleting or reordering an object therefore changes a digest that the next
object records. The chain head (the last sequence and digest) lives in the DynamoDB
table, so deleting the newest object is detected too. A missing head starts a new
chain only while the archive is empty, because otherwise deleting the head item
would hide the deletion of the newest objects.

Concurrent archivers reserve the next link with one DynamoDB transaction that moves
the head only if no other archiver moved it since it was read. Duplicate deliveries are
recognized by the batch id, a digest of the delivery's sorted event ids: the
reservation item is keyed by it, so a second delivery reuses the first reservation
and appends nothing new to the chain. Objects are written with a conditional
PutObject (`If-None-Match: *`), so a retry never adds a second version of an object
and every key of an intact archive has exactly one version.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from regauth.audit import RECORD_FIELDS
from regauth.errors import ArchiveUnavailableError, InvalidAuditPayloadError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

logger = logging.getLogger(__name__)

ARCHIVE_PREFIX = "audit/"
CHAIN_HEAD_KEY = "audit-chain#head"
CHAIN_BATCH_PREFIX = "audit-chain#batch#"
GENESIS_DIGEST = "0" * 64
# A redelivery can come from the dead-letter queue, whose messages live at most 14
# days, so a reservation is kept longer than that and then expires through the
# table's TTL attribute.
RESERVATION_TTL = timedelta(days=35)
MAX_RESERVE_ATTEMPTS = 20
# PutLogEvents accepts at most 10,000 events and 1,048,576 bytes per call. Audit
# events are under 4 KiB, so 200 events stay well below the byte limit.
LOG_BATCH_SIZE = 200
# The largest object body, compressed or not, that the archiver writes and the reader
# decompresses. A delivery is one asynchronous Lambda invocation, whose payload is at
# most 1 MB of base64 gzip (Lambda Invoke API reference). That is about 22 MB of log
# lines at an estimated 30:1 compression ratio, and the archived body keeps only part
# of each line. The reader stops at the limit, so a gzip bomb cannot exhaust its memory.
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One archived object's place in the chain."""

    sequence: int
    key: str
    previous_digest: str
    digest: str


class LogsClient(Protocol):
    """The CloudWatch Logs calls the archiver makes, as boto3's `logs` client has them."""

    def create_log_stream(self, *, logGroupName: str, logStreamName: str) -> Any: ...  # noqa: N803

    def put_log_events(
        self,
        *,
        logGroupName: str,  # noqa: N803
        logStreamName: str,  # noqa: N803
        logEvents: Sequence[Mapping[str, Any]],  # noqa: N803
    ) -> Any: ...


def decode_subscription_payload(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the audit records in a CloudWatch Logs subscription event.

    The payload is `{"awslogs": {"data": base64(gzip(json))}}`, as documented in
    "Using CloudWatch Logs subscription filters" (Lambda example). CONTROL_MESSAGE
    payloads, which CloudWatch sends to check the destination, contain no records.
    """
    try:
        data = event["awslogs"]["data"]
        document = json.loads(gzip.decompress(base64.b64decode(data, validate=True)))
    except (KeyError, TypeError, binascii.Error, OSError, EOFError, ValueError) as exc:
        raise InvalidAuditPayloadError(
            f"not a CloudWatch Logs subscription payload: {type(exc).__name__}"
        ) from None

    if document.get("messageType") == "CONTROL_MESSAGE":
        return []
    records = []
    for log_event in document.get("logEvents") or []:
        record = record_from_log_message(str(log_event.get("message", "")))
        if record is None:
            # The subscription filter passes audit lines only, so this line was
            # written by something else. It is logged by id, never by content.
            logger.error(
                "log event is not an audit record",
                extra={"log_event_id": log_event.get("id"), "log_group": document.get("logGroup")},
            )
            continue
        records.append(record)
    return records


def record_from_log_message(message: str) -> dict[str, Any] | None:
    """Extract the audit record from one log line, or return None if it contains none.

    Powertools adds `level`, `location`, `timestamp` and other keys to every line. Only
    the record's own fields are kept, so archived records match the JSON Schema.
    """
    try:
        line = json.loads(message)
    except ValueError:
        return None
    if not isinstance(line, dict):
        return None
    # Lambda's JSON log format may wrap a structured line in `message`.
    if line.get("audit") is not True and isinstance(line.get("message"), dict):
        line = line["message"]
    if line.get("audit") is not True:
        return None
    if not isinstance(line.get("event_id"), str) or not isinstance(line.get("time"), str):
        return None
    return {name: line.get(name) for name in RECORD_FIELDS}


def encode_records(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Return the JSON Lines body: one canonical line per event id, in time order.

    Keys are sorted and separators fixed, so the same records always give the same
    bytes and a redelivered batch gives the same digest.
    """
    unique = {str(record["event_id"]): record for record in records}
    ordered = sorted(unique.values(), key=lambda record: (record["time"], record["event_id"]))
    lines = [json.dumps(record, sort_keys=True, separators=(",", ":")) for record in ordered]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def batch_id(records: Iterable[Mapping[str, Any]]) -> str:
    """Return the SHA-256 hex digest of the batch's sorted, unique event ids."""
    event_ids = sorted({str(record["event_id"]) for record in records})
    return hashlib.sha256("\n".join(event_ids).encode("utf-8")).hexdigest()


def chain_digest(previous_digest: str, body: bytes) -> str:
    """Return the digest that links `body` to the object before it."""
    return hashlib.sha256(previous_digest.encode("ascii") + b"\n" + body).hexdigest()


def partition_of(moment: datetime) -> str:
    """Return the Hive-style partition path of an hour, as the Glue table projects it."""
    moment = moment.astimezone(UTC)
    return f"year={moment:%Y}/month={moment:%m}/day={moment:%d}/hour={moment:%H}"


def object_key(moment: datetime, sequence: int, batch: str) -> str:
    # The zero-padded sequence makes keys within an hour list in chain order.
    return f"{ARCHIVE_PREFIX}{partition_of(moment)}/{sequence:012d}-{batch[:16]}.jsonl.gz"


class AuditLogWriter:
    """Copy archived events into the dedicated audit log group with PutLogEvents."""

    def __init__(self, client: LogsClient, group_name: str) -> None:
        self._client = client
        self._group_name = group_name
        self._stream_name: str | None = None

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write `records` as JSON log events, timestamped with the event time."""
        events = sorted(
            (
                {
                    "timestamp": int(_parse_time(str(record["time"])).timestamp() * 1000),
                    "message": json.dumps(record, sort_keys=True, separators=(",", ":")),
                }
                for record in records
            ),
            key=lambda event: int(str(event["timestamp"])),
        )
        stream = self._stream()
        for start in range(0, len(events), LOG_BATCH_SIZE):
            with translate_aws_errors("logs:PutLogEvents"):
                # NOTE: CloudWatch rejects events older than 14 days without an error
                # (rejectedLogEventsInfo), so a late replay reaches S3 but not the log group.
                self._client.put_log_events(
                    logGroupName=self._group_name,
                    logStreamName=stream,
                    logEvents=events[start : start + LOG_BATCH_SIZE],
                )

    def _stream(self) -> str:
        if self._stream_name is None:
            # One stream per function instance, because sequence tokens are no longer
            # needed but concurrent writers to one stream are still throttled together.
            name = f"archiver/{datetime.now(UTC):%Y/%m/%d}/{uuid.uuid4().hex}"
            with translate_aws_errors("logs:CreateLogStream"):
                self._client.create_log_stream(logGroupName=self._group_name, logStreamName=name)
            self._stream_name = name
        return self._stream_name


class AuditArchiver:
    """Write batches of audit records to the S3 archive and extend the hash chain."""

    def __init__(
        self,
        s3: S3Client,
        dynamodb: DynamoDBClient,
        bucket: str,
        table_name: str,
        *,
        log_writer: AuditLogWriter | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._s3 = s3
        self._dynamodb = dynamodb
        self._bucket = bucket
        self._table = table_name
        self._log_writer = log_writer
        self._clock = clock
        self._sleep = sleep

    def archive(self, records: Sequence[Mapping[str, Any]]) -> ChainLink | None:
        """Archive `records` as one object and return its link, or None if there are none.

        Raises `ArchiveUnavailableError` if S3, DynamoDB or CloudWatch Logs fails, so
        that the caller's invocation fails and is retried. A retry of the same records
        completes the reservation made by the failed attempt. It is also raised when
        the chain head item is missing but the archive contains objects, because a new
        chain would hide deleted objects. Raises `InvalidAuditPayloadError` if the
        records encode to more than `MAX_BODY_BYTES`.
        """
        if not records:
            return None
        body = encode_records(records)
        if len(body) > MAX_BODY_BYTES:
            # The reader reports a larger object as broken, so it is never written.
            raise InvalidAuditPayloadError(
                f"batch of {len(records)} records encodes to {len(body)} bytes, more than "
                f"the {MAX_BODY_BYTES}-byte object limit"
            )
        batch = batch_id(records)

        link, state = self._reserve(batch, body)
        if state == "archived":
            logger.info("batch already archived", extra={"key": link.key, "batch_id": batch})
            return link

        self._put_object(link, body)
        if self._log_writer is not None:
            self._log_writer.write(records)
        self._mark_archived(batch)
        logger.info(
            "batch archived",
            extra={"key": link.key, "sequence": link.sequence, "events": len(records)},
        )
        return link

    def chain_head(self) -> ChainLink | None:
        """Return the newest link of the chain, or None before the first object."""
        item = self._get(CHAIN_HEAD_KEY)
        return None if item is None else _link_from_item(item)

    def _reserve(self, batch: str, body: bytes) -> tuple[ChainLink, str]:
        for attempt in range(MAX_RESERVE_ATTEMPTS):
            existing = self._get(CHAIN_BATCH_PREFIX + batch)
            if existing is not None:
                return _link_from_item(existing), existing["state"]["S"]

            head = self._get(CHAIN_HEAD_KEY)
            if head is None:
                self._check_archive_empty()
            previous = GENESIS_DIGEST if head is None else head["digest"]["S"]
            sequence = 1 if head is None else int(head["sequence"]["N"]) + 1
            now = datetime.fromtimestamp(self._clock(), UTC)
            link = ChainLink(
                sequence=sequence,
                key=object_key(now, sequence, batch),
                previous_digest=previous,
                digest=chain_digest(previous, body),
            )
            if self._try_reserve(batch, link, head, now):
                return link, "pending"

            # Another archiver moved the head or reserved this batch first. Back off
            # with jitter so that concurrent instances do not collide again.
            self._sleep(random.uniform(0, 0.05 * (attempt + 1)))  # noqa: S311 - jitter only
        raise ArchiveUnavailableError(
            f"could not reserve a chain link after {MAX_RESERVE_ATTEMPTS} attempts"
        )

    def _check_archive_empty(self) -> None:
        # One ListObjectsV2 call, made only while the head item is missing: before the
        # first object, or after someone deleted the item.
        if not archive_has_objects(self._s3, self._bucket):
            return
        # Another archiver may have started the chain between our read of the head
        # and the listing. Then the head exists now, and the caller's conditional
        # reservation fails and retries with it.
        if self._get(CHAIN_HEAD_KEY) is not None:
            return
        raise ArchiveUnavailableError(
            f"the chain head item {CHAIN_HEAD_KEY!r} is missing from table {self._table!r}, "
            f"but bucket {self._bucket!r} already contains objects under {ARCHIVE_PREFIX!r}, so a "
            "new chain would hide deleted objects. Run `regauth audit verify`, restore the "
            "head item from the newest object's chain metadata, then `regauth audit replay` "
            "(see 'Restoring the chain head' in docs/audit.md)"
        )

    def _try_reserve(
        self, batch: str, link: ChainLink, head: Mapping[str, Any] | None, now: datetime
    ) -> bool:
        expires_at = int((now + RESERVATION_TTL).timestamp())
        link_attributes = {
            "sequence": {"N": str(link.sequence)},
            "key": {"S": link.key},
            "previous_digest": {"S": link.previous_digest},
            "digest": {"S": link.digest},
        }
        head_put: dict[str, Any] = {
            "TableName": self._table,
            "Item": {"pk": {"S": CHAIN_HEAD_KEY}, **link_attributes},
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        if head is not None:
            head_put["ConditionExpression"] = "#sequence = :expected"
            head_put["ExpressionAttributeNames"] = {"#sequence": "sequence"}
            head_put["ExpressionAttributeValues"] = {":expected": head["sequence"]}
        try:
            self._dynamodb.transact_write_items(
                TransactItems=[
                    {"Put": head_put},  # type: ignore[typeddict-item]
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": {
                                "pk": {"S": CHAIN_BATCH_PREFIX + batch},
                                **link_attributes,
                                "state": {"S": "pending"},
                                "expires_at": {"N": str(expires_at)},
                            },
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise _unavailable("dynamodb:TransactWriteItems", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("dynamodb:TransactWriteItems", exc) from exc
        return True

    def _put_object(self, link: ChainLink, body: bytes) -> None:
        # mtime=0 makes the compressed bytes depend on the body alone.
        compressed = gzip.compress(body, mtime=0)
        try:
            # `If-None-Match: *` fails with 412 if the key has a current version, so a
            # retry of a reservation whose object was already written adds no second
            # version (S3 user guide, "How to prevent object overwrites with
            # conditional writes").
            self._s3.put_object(
                Bucket=self._bucket,
                Key=link.key,
                Body=compressed,
                ContentType="application/x-ndjson",
                ContentEncoding="gzip",
                ChecksumAlgorithm="SHA256",
                IfNoneMatch="*",
                Metadata={
                    "chain-sequence": str(link.sequence),
                    "chain-previous": link.previous_digest,
                    "chain-digest": link.digest,
                },
            )
        except ClientError as exc:
            if _error_code(exc) != "PreconditionFailed":
                raise _unavailable("s3:PutObject", exc) from exc
            self._check_written(link)
        except BotoCoreError as exc:
            raise _unavailable("s3:PutObject", exc) from exc

    def _check_written(self, link: ChainLink) -> None:
        """Raise unless the existing object at `link.key` records this link's digest."""
        with translate_aws_errors("s3:HeadObject"):
            existing = self._s3.head_object(Bucket=self._bucket, Key=link.key)
        recorded = (existing.get("Metadata") or {}).get("chain-digest")
        if recorded != link.digest:
            raise ArchiveUnavailableError(
                f"object {link.key!r} already exists with chain digest {recorded!r}, not the "
                f"reserved {link.digest!r}: the archive was changed outside the archiver. "
                "Run `regauth audit verify`"
            )
        logger.info("object already written by an earlier attempt", extra={"key": link.key})

    def _mark_archived(self, batch: str) -> None:
        with translate_aws_errors("dynamodb:UpdateItem"):
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"pk": {"S": CHAIN_BATCH_PREFIX + batch}},
                UpdateExpression="SET #state = :archived",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":archived": {"S": "archived"}},
            )

    def _get(self, key: str) -> dict[str, Any] | None:
        with translate_aws_errors("dynamodb:GetItem"):
            response = self._dynamodb.get_item(
                TableName=self._table, Key={"pk": {"S": key}}, ConsistentRead=True
            )
        item = response.get("Item")
        return None if item is None else dict(item)


def replay_queue(
    sqs: SQSClient,
    queue_url: str,
    archiver: AuditArchiver,
    *,
    max_messages: int = 1000,
) -> int:
    """Archive the payloads in the archiver's dead-letter queue; return how many were replayed.

    A message is deleted only after its payload is archived, so a failure leaves it in
    the queue for the next replay. Bodies are either the original invocation event
    (a Lambda `DeadLetterQueue`) or an invocation record with `requestPayload` (an
    `OnFailure` destination).
    """
    replayed = 0
    while replayed < max_messages:
        with translate_aws_errors("sqs:ReceiveMessage"):
            response = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
        messages = response.get("Messages") or []
        if not messages:
            break
        for message in messages:
            archiver.archive(decode_subscription_payload(_payload_of(message.get("Body", ""))))
            with translate_aws_errors("sqs:DeleteMessage"):
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            replayed += 1
    return replayed


def _payload_of(body: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise InvalidAuditPayloadError("dead-letter message body is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidAuditPayloadError("dead-letter message body is not a JSON object")
    payload = document.get("requestPayload", document)
    return payload if isinstance(payload, dict) else {}


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """Settings of the archiver function.

    Environment variables: `REGAUTH_AUDIT_BUCKET` (the archive bucket),
    `REGAUTH_TABLE` (the table holding the chain head) and `REGAUTH_AUDIT_LOG_GROUP`
    (the dedicated audit log group; empty to skip the copy).
    """

    bucket: str
    table_name: str
    log_group: str = ""


def load_archive_settings(environ: Mapping[str, str] | None = None) -> ArchiveSettings:
    env = os.environ if environ is None else environ
    bucket = env.get("REGAUTH_AUDIT_BUCKET", "").strip()
    table = env.get("REGAUTH_TABLE", "").strip()
    if not bucket or not table:
        raise ValueError("REGAUTH_AUDIT_BUCKET and REGAUTH_TABLE must both be set")
    return ArchiveSettings(bucket, table, env.get("REGAUTH_AUDIT_LOG_GROUP", "").strip())


def build_archiver(
    settings: ArchiveSettings, session: boto3.Session | None = None
) -> AuditArchiver:
    """Create the archiver and its clients. Endpoints come from the standard AWS configuration."""
    from regauth.runtime import AWS_CLIENT_CONFIG

    session = session or boto3.Session()
    log_writer = None
    if settings.log_group:
        log_writer = AuditLogWriter(
            session.client("logs", config=AWS_CLIENT_CONFIG), settings.log_group
        )
    return AuditArchiver(
        session.client("s3", config=AWS_CLIENT_CONFIG),
        session.client("dynamodb", config=AWS_CLIENT_CONFIG),
        settings.bucket,
        settings.table_name,
        log_writer=log_writer,
    )


@functools.cache
def get_archiver() -> AuditArchiver:
    """Return this function instance's archiver, built from the environment on first use."""
    return build_archiver(load_archive_settings())


def archive_has_objects(s3: S3Client, bucket: str) -> bool:
    """Return whether any object is listed under the archive prefix, with one request.

    Objects hidden by a delete marker are not listed, so deleted objects are not
    counted. `ArchiveReader.verify` finds those through their versions.
    """
    with translate_aws_errors("s3:ListObjectsV2"):
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=ARCHIVE_PREFIX, MaxKeys=1)
    return listed.get("KeyCount", 0) > 0


def _link_from_item(item: Mapping[str, Any]) -> ChainLink:
    return ChainLink(
        sequence=int(item["sequence"]["N"]),
        key=item["key"]["S"],
        previous_digest=item.get("previous_digest", {}).get("S", ""),
        digest=item["digest"]["S"],
    )


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "Unknown")


def _unavailable(operation: str, exc: Exception) -> ArchiveUnavailableError:
    if isinstance(exc, ClientError):
        return ArchiveUnavailableError(f"{operation} failed with {_error_code(exc)}")
    return ArchiveUnavailableError(f"{operation} failed with {type(exc).__name__}")


@contextmanager
def translate_aws_errors(operation: str) -> Iterator[None]:
    """Re-raise boto3 errors of one AWS call as `ArchiveUnavailableError`."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _unavailable(operation, exc) from exc
