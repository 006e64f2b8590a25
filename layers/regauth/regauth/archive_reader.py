"""Read the S3 audit archive: list objects, search records and verify the hash chain."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from regauth.archive import (
    ARCHIVE_PREFIX,
    GENESIS_DIGEST,
    ChainLink,
    chain_digest,
    translate_aws_errors,
)

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

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

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
                if archived is None:
                    continue
                if start is not None and archived.hour + timedelta(hours=1) <= start:
                    continue
                if end is not None and archived.hour >= end:
                    continue
                objects.append(archived)
        return sorted(objects, key=lambda item: (item.sequence, item.key))

    def read_body(self, key: str) -> tuple[bytes, dict[str, str]]:
        """Return an object's uncompressed body and its user metadata."""
        with translate_aws_errors("s3:GetObject"):
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
            compressed = response["Body"].read()
        return gzip.decompress(compressed), dict(response.get("Metadata") or {})

    def records(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield each record once, by event id, from the objects in the time range."""
        seen: set[str] = set()
        for archived in self.list_objects(start, end):
            body, _ = self.read_body(archived.key)
            for line in body.decode("utf-8").splitlines():
                record: dict[str, Any] = json.loads(line)
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
        With `head` (the table's chain head) and no `end`, the last object must be the
        head, so deleting the newest objects is detected too.
        """
        objects = self.list_objects(start, end)
        previous: tuple[int, str] | None = None if start is not None else (0, GENESIS_DIGEST)
        events = 0
        for archived in objects:
            body, metadata = self.read_body(archived.key)
            events += body.count(b"\n")
            problem = _link_problem(archived, body, metadata, previous)
            if problem is not None:
                return _report(
                    objects, events, BrokenLink(archived.key, archived.sequence, problem)
                )
            previous = (archived.sequence, metadata["chain-digest"])

        if head is not None and end is None:
            last = previous[0] if previous is not None else 0
            if last < head.sequence:
                broken = BrokenLink(
                    head.key,
                    head.sequence,
                    f"the chain head is sequence {head.sequence}, but the last object found "
                    f"is sequence {last}: newer objects are missing",
                )
                return _report(objects, events, broken)
            if previous is not None and previous[1] != head.digest:
                broken = BrokenLink(head.key, head.sequence, "digest differs from the chain head")
                return _report(objects, events, broken)
        return _report(objects, events, None)

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
