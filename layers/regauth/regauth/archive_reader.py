"""Read the S3 audit archive: list objects, search records and verify the hash chain."""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from regauth.archive import (
    ARCHIVE_PREFIX,
    CHAIN_HEAD_KEY,
    GENESIS_DIGEST,
    MAX_BODY_BYTES,
    ChainLink,
    archive_has_objects,
    chain_digest,
    translate_aws_errors,
)
from regauth.errors import InvalidAuditPayloadError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEY_PATTERN = re.compile(
    r"^audit/year=(\d{4})/month=(\d{2})/day=(\d{2})/hour=(\d{2})/(\d{12})-([0-9a-f]{16})\.jsonl\.gz$"
)


@dataclass(frozen=True, slots=True)
class ArchivedObject:
    """An object in the archive, with the hour and sequence its key names."""

    key: str
    hour: datetime
    sequence: int


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """The first place where the chain does not hold, and why."""

    key: str
    sequence: int
    problem: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of a chain check: objects checked and the first broken link, if any."""

    objects: int
    events: int
    first_sequence: int | None
    last_sequence: int | None
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class ArchiveReader:
    """Read audit objects from one bucket."""

    def __init__(self, s3: S3Client, bucket: str, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._max_body_bytes = max_body_bytes

    def list_objects(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> list[ArchivedObject]:
        """List archived objects whose hour overlaps `[start, end)`, in sequence order.

        Keys that do not have the archive's key format are skipped, because the
        chain check reads every object through its key anyway.
        """
        objects = []
        for prefix in _day_prefixes(start, end):
            for key in self._keys(prefix):
                archived = parse_key(key)
                if archived is not None and _in_range(archived, start, end):
                    objects.append(archived)
        return sorted(objects, key=lambda item: (item.sequence, item.key))

    def read_body(self, key: str) -> tuple[bytes, dict[str, str]]:
        """Return an object's uncompressed body and its user metadata.

        Raises `InvalidAuditPayloadError` if the object is not gzip or if its stored or
        uncompressed size exceeds the reader's `max_body_bytes`.
        """
        limit = self._max_body_bytes
        with translate_aws_errors("s3:GetObject"):
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
            stream = response["Body"]
            try:
                # Reading one byte past the limit distinguishes an object at the limit
                # from a larger one without downloading the rest.
                compressed = stream.read(limit + 1)
            finally:
                stream.close()
        if len(compressed) > limit:
            raise InvalidAuditPayloadError(f"object {key} is larger than {limit} bytes")
        return decompress_body(key, compressed, limit), dict(response.get("Metadata") or {})

    def records(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield each record once, by event id, from the objects in the time range."""
        seen: set[str] = set()
        for archived in self.list_objects(start, end):
            body, _ = self.read_body(archived.key)
            for record in _parse_records(archived.key, body):
                if record["event_id"] in seen:
                    continue
                seen.add(record["event_id"])
                yield record

    def verify(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        head: ChainLink | None = None,
    ) -> VerifyReport:
        """Check the chain over the objects in the time range and name the first broken link.

        Without `start` the chain must begin at sequence 1 with the genesis digest.
        Without `end`, `head` must be the table's chain head item and the last object
        must match it, so deleting the newest objects is detected. A `head` of None
        then means the item is missing, which is a broken link once any object exists.
        Every archive key in the range must have exactly one version and no delete
        marker, because the archiver writes each key once into a versioned bucket.
        """
        objects = self.list_objects(start, end)
        changed = self._changed_keys(start, end)
        previous: tuple[int, str] | None = None if start is not None else (0, GENESIS_DIGEST)
        events = 0
        for archived in objects:
            try:
                body, metadata = self.read_body(archived.key)
            except InvalidAuditPayloadError as exc:
                broken = BrokenLink(archived.key, archived.sequence, str(exc))
                return _report(objects, events, broken)
            events += body.count(b"\n")
            problem = _link_problem(archived, body, metadata, previous)
            if problem is not None:
                broken = BrokenLink(archived.key, archived.sequence, problem)
                return _report(objects, events, broken)
            if archived.key in changed:
                return _report(objects, events, changed[archived.key])
            previous = (archived.sequence, metadata["chain-digest"])

        if end is None:
            broken_head = self._head_problem(head, previous, objects)
            if broken_head is not None:
                return _report(objects, events, broken_head)
        # The keys left are hidden by a delete marker, so the walk above did not see them.
        hidden = sorted(changed.values(), key=lambda link: (link.sequence, link.key))
        return _report(objects, events, hidden[0] if hidden else None)

    def _head_problem(
        self,
        head: ChainLink | None,
        previous: tuple[int, str] | None,
        objects: Sequence[ArchivedObject],
    ) -> BrokenLink | None:
        last = previous[0] if previous is not None else 0
        if head is None:
            if not objects and not archive_has_objects(self._s3, self._bucket):
                return None
            return BrokenLink(
                CHAIN_HEAD_KEY,
                last,
                "the chain head item is missing from the table, so deleted newer objects "
                f"cannot be detected. The last object found is sequence {last}",
            )
        if last < head.sequence:
            return BrokenLink(
                head.key,
                head.sequence,
                f"the chain head is sequence {head.sequence}, but the last object found "
                f"is sequence {last}: newer objects are missing",
            )
        if previous is not None and previous[1] != head.digest:
            return BrokenLink(head.key, head.sequence, "digest differs from the chain head")
        return None

    def _changed_keys(self, start: datetime | None, end: datetime | None) -> dict[str, BrokenLink]:
        """Return a broken link for each archive key with more than one version or a delete marker.

        The bucket has versioning and Object Lock, so an overwrite or a delete adds a
        version or a delete marker instead of replacing the archived object.
        """
        versions: Counter[str] = Counter()
        delete_markers: Counter[str] = Counter()
        for prefix in _day_prefixes(start, end):
            for key, is_delete_marker in self._versions(prefix):
                if is_delete_marker:
                    delete_markers[key] += 1
                else:
                    versions[key] += 1

        changed = {}
        for key in versions.keys() | delete_markers.keys():
            archived = parse_key(key)
            if archived is None or not _in_range(archived, start, end):
                continue
            if versions[key] == 1 and delete_markers[key] == 0:
                continue
            problem = (
                f"found {versions[key]} object version(s) and {delete_markers[key]} delete "
                "marker(s), but the archiver writes each key once: the object was overwritten "
                "or deleted"
            )
            changed[key] = BrokenLink(key, archived.sequence, problem)
        return changed

    def _versions(self, prefix: str) -> Iterator[tuple[str, bool]]:
        paginator = self._s3.get_paginator("list_object_versions")
        with translate_aws_errors("s3:ListObjectVersions"):
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for version in page.get("Versions", []):
                    yield version["Key"], False
                for marker in page.get("DeleteMarkers", []):
                    yield marker["Key"], True

    def _keys(self, prefix: str) -> Iterator[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        with translate_aws_errors("s3:ListObjectsV2"):
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]


def parse_key(key: str) -> ArchivedObject | None:
    """Return the hour and sequence an archive key names, or None for other keys."""
    match = KEY_PATTERN.match(key)
    if match is None:
        return None
    year, month, day, hour, sequence, _ = match.groups()
    moment = datetime(int(year), int(month), int(day), int(hour), tzinfo=UTC)
    return ArchivedObject(key=key, hour=moment, sequence=int(sequence))


def decompress_body(key: str, compressed: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """Return the gzip-decompressed `compressed`, reading at most `limit` bytes of output.

    Raises `InvalidAuditPayloadError` if the data is not gzip or decompresses to more
    than `limit` bytes, which also stops a gzip bomb before it fills the memory.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            body = stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError, a truncated stream raises EOFError and a
        # corrupt deflate stream raises zlib.error.
        raise InvalidAuditPayloadError(
            f"object {key} is not valid gzip: {type(exc).__name__}"
        ) from None
    if len(body) > limit:
        raise InvalidAuditPayloadError(f"object {key} decompresses to more than {limit} bytes")
    return body


def _parse_records(key: str, body: bytes) -> list[dict[str, Any]]:
    try:
        # UnicodeDecodeError and json.JSONDecodeError are both ValueErrors.
        records = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    except ValueError as exc:
        raise InvalidAuditPayloadError(
            f"object {key} is not JSON Lines: {type(exc).__name__}"
        ) from None
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("event_id"), str):
            raise InvalidAuditPayloadError(f"object {key} has a line without an event_id")
    return records


def _in_range(archived: ArchivedObject, start: datetime | None, end: datetime | None) -> bool:
    if start is not None and archived.hour + timedelta(hours=1) <= start:
        return False
    return end is None or archived.hour < end


def _link_problem(
    archived: ArchivedObject,
    body: bytes,
    metadata: dict[str, str],
    previous: tuple[int, str] | None,
) -> str | None:
    try:
        sequence = int(metadata["chain-sequence"])
        recorded_previous = metadata["chain-previous"]
        recorded_digest = metadata["chain-digest"]
    except (KeyError, ValueError):
        return "chain metadata is missing or malformed"

    if sequence != archived.sequence:
        return f"metadata names sequence {sequence}, the key names {archived.sequence}"
    if previous is not None:
        expected_sequence, expected_previous = previous[0] + 1, previous[1]
        if sequence != expected_sequence:
            return f"expected sequence {expected_sequence}: the objects between are missing"
        if recorded_previous != expected_previous:
            return "previous digest does not match the digest of the object before it"
    if chain_digest(recorded_previous, body) != recorded_digest:
        return "content does not match its recorded digest"
    return None


def _report(
    objects: Sequence[ArchivedObject], events: int, broken: BrokenLink | None
) -> VerifyReport:
    return VerifyReport(
        objects=len(objects),
        events=events,
        first_sequence=objects[0].sequence if objects else None,
        last_sequence=objects[-1].sequence if objects else None,
        broken=broken,
    )


def _day_prefixes(start: datetime | None, end: datetime | None) -> list[str]:
    """Return the day prefixes to list for a time range, or the whole archive without a start."""
    if start is None:
        return [ARCHIVE_PREFIX]
    end = end or datetime.now(UTC) + timedelta(hours=1)
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    prefixes = []
    while day < end:
        prefixes.append(f"{ARCHIVE_PREFIX}year={day:%Y}/month={day:%m}/day={day:%d}/")
        day += timedelta(days=1)
    return prefixes
