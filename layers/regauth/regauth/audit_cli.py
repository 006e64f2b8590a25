"""`regauth audit`: search, tail, verify and replay the S3 audit archive.

The archive is found either through `STATE_DIR/local.json`, which `regauth serve`
writes, or through the outputs of a deployed CloudFormation stack (`--stack`), read
with the standard AWS configuration and credentials.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regauth.errors import RegauthError

if TYPE_CHECKING:
    from regauth.archive import AuditArchiver, ChainLink
    from regauth.archive_reader import ArchiveReader

# Creates a boto3 client for a service name, bound to one endpoint and credentials.
ClientFactory = Callable[..., Any]
DURATION = re.compile(r"^(\d+)([smhd])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class AuditCommandError(Exception):
    """The command cannot run: the archive was not found or an argument is invalid."""


@dataclass(frozen=True, slots=True)
class ArchiveLocation:
    """The location of one deployment's archive, chain head and dead-letter queue."""

    bucket: str
    table: str
    queue_url: str = ""


def add_audit_parser(commands: Any) -> None:
    """Add the `audit` command and its subcommands to the `regauth` parser."""
    audit = commands.add_parser("audit", help="search, tail, verify or replay the audit archive")
    actions = audit.add_subparsers(dest="audit_command", required=True)

    search = actions.add_parser("search", help="print archived events that match every filter")
    _add_location_arguments(search)
    search.add_argument("--principal", help="principal, with or without `user:` (alice)")
    search.add_argument("--event-type", help="event type, for example authentication.failed")
    search.add_argument("--since", default="24h", help="start: 1h, 30m, 7d or a date (24h)")
    search.add_argument("--until", help="end: a duration ago or a date (now)")
    search.add_argument("--json", action="store_true", help="print JSON Lines records")

    tail = actions.add_parser("tail", help="print the newest events, and with --follow new ones")
    _add_location_arguments(tail)
    tail.add_argument("--since", default="15m", help="how far back to start (15m)")
    tail.add_argument("--follow", action="store_true", help="keep printing new events")
    tail.add_argument("--interval", type=float, default=2.0, help="poll interval in seconds (2)")
    tail.add_argument("--json", action="store_true", help="print JSON Lines records")

    verify = actions.add_parser("verify", help="check the hash chain, naming the first broken link")
    _add_location_arguments(verify)
    verify.add_argument("--from", dest="start", help="first hour to check: a date or duration")
    verify.add_argument("--to", dest="end", help="end of the range, exclusive (now)")

    replay = actions.add_parser("replay", help="archive the payloads in the dead-letter queue")
    _add_location_arguments(replay)
    replay.add_argument("--queue-url", help="dead-letter queue URL (the stack's output)")


def _add_location_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".regauth"),
        help="state directory of a running `regauth serve` (.regauth)",
    )
    parser.add_argument("--stack", help="read a deployed stack's archive, found by stack name")


def run_audit(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Run one `regauth audit` subcommand and return the exit status."""
    # Imported here so that `regauth --help` and `hash-password` do not load boto3.
    from regauth.archive import AuditArchiver
    from regauth.archive_reader import ArchiveReader

    try:
        make_client, location = _locate(args)
        s3 = make_client("s3")
        reader = ArchiveReader(s3, location.bucket)
        if args.audit_command == "search":
            return _search(reader, args, out)
        if args.audit_command == "tail":
            return _tail(reader, args, out)
        archiver = AuditArchiver(s3, make_client("dynamodb"), location.bucket, location.table)
        if args.audit_command == "verify":
            return _verify(reader, archiver.chain_head(), args, out)
        return _replay(make_client, archiver, args.queue_url or location.queue_url, out)
    except (AuditCommandError, RegauthError) as exc:
        print(f"regauth: {exc}", file=sys.stderr)
        return 1


def parse_moment(value: str, now: datetime) -> datetime:
    """Parse a duration before `now` (`90s`, `30m`, `1h`, `7d`) or an ISO 8601 date or time."""
    match = DURATION.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), DURATION_UNITS[match.group(2)]
        return now - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise AuditCommandError(
            f"invalid time {value!r}: use a duration such as 1h or 30m, or a date such as "
            "2025-01-31 or 2025-01-31T12:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_record(record: dict[str, Any]) -> str:
    """Return one line for a person: time, event type, outcome, principal and the key facts."""
    details = record.get("details") or {}
    facts = []
    if record.get("reason"):
        facts.append(f"reason={record['reason']}")
    if record.get("auth_method"):
        facts.append(f"method={record['auth_method']}")
    granted = details.get("granted")
    if granted is not None:
        # An entry with no granted action shows `-`, so it does not look truncated.
        scopes = [f"{g['type']}:{g['name']}:{','.join(g['actions']) or '-'}" for g in granted]
        facts.append("granted=" + (" ".join(scopes) or "-"))
    for name in ("jti", "version", "action", "target", "serial"):
        if details.get(name):
            facts.append(f"{name}={details[name]}")
    return "  ".join(
        [
            str(record.get("time")),
            str(record.get("event_type")),
            str(record.get("outcome")),
            str(record.get("principal") or "-"),
            str(record.get("source_ip") or "-"),
            *facts,
        ]
    )


def _search(reader: ArchiveReader, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    now = datetime.now(UTC)
    start = parse_moment(args.since, now)
    end = parse_moment(args.until, now) if args.until else None
    principal = args.principal
    if principal and ":" not in principal and principal != "anonymous":
        principal = "user:" + principal

    matches = [
        record
        for record in reader.records(start, end)
        if (principal is None or record.get("principal") == principal)
        and (args.event_type is None or record.get("event_type") == args.event_type)
        and _within(record, start, end)
    ]
    _print_records(sorted(matches, key=lambda r: (r["time"], r["event_id"])), args.json, out)
    return 0


def _tail(reader: ArchiveReader, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    since = parse_moment(args.since, datetime.now(UTC))
    start = since
    printed: set[str] = set()
    while True:
        # Listing works by hour partition, so events older than `--since` in the same
        # hour are filtered out here, as `search` does.
        fresh = [
            r
            for r in reader.records(start)
            if r["event_id"] not in printed and _within(r, since, None)
        ]
        fresh.sort(key=lambda r: (r["time"], r["event_id"]))
        _print_records(fresh, args.json, out)
        printed.update(r["event_id"] for r in fresh)
        if not args.follow:
            return 0
        # Objects are partitioned by the hour they were archived in, so listing from
        # the previous hour on finds every new object.
        start = datetime.now(UTC) - timedelta(hours=1)
        time.sleep(args.interval)


def _verify(
    reader: ArchiveReader,
    head: ChainLink | None,
    args: argparse.Namespace,
    out: Callable[[str], None],
) -> int:
    now = datetime.now(UTC)
    start = parse_moment(args.start, now) if args.start else None
    end = parse_moment(args.end, now) if args.end else None
    report = reader.verify(start, end, head)
    if report.broken is not None:
        out(
            f"BROKEN at sequence {report.broken.sequence}, {report.broken.key}: "
            f"{report.broken.problem}"
        )
        return 2
    if report.objects == 0:
        out("no archived objects in this range")
        return 0
    out(
        f"OK: {report.objects} objects, sequences {report.first_sequence} to "
        f"{report.last_sequence}, {report.events} events"
    )
    return 0


def _replay(
    make_client: ClientFactory, archiver: AuditArchiver, queue_url: str, out: Callable[[str], None]
) -> int:
    if not queue_url:
        raise AuditCommandError(
            "no dead-letter queue is known: pass --stack or --queue-url. The local server "
            "archives in-process and has no queue"
        )
    from regauth.archive import replay_queue

    count = replay_queue(make_client("sqs"), queue_url, archiver)
    out(f"replayed {count} payloads from the dead-letter queue")
    return 0


def _print_records(
    records: Iterable[dict[str, Any]], as_json: bool, out: Callable[[str], None]
) -> None:
    for record in records:
        out(json.dumps(record, sort_keys=True) if as_json else format_record(record))


def _within(record: dict[str, Any], start: datetime, end: datetime | None) -> bool:
    moment = datetime.fromisoformat(str(record["time"]))
    return moment >= start and (end is None or moment < end)


def _locate(args: argparse.Namespace) -> tuple[ClientFactory, ArchiveLocation]:
    import boto3

    if args.stack:
        session = boto3.Session()
        return session.client, stack_location(session, args.stack)
    return local_location(args.state_dir)


def stack_location(session: Any, stack_name: str) -> ArchiveLocation:
    """Read the archive bucket, table and queue from a stack's outputs."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except (ClientError, BotoCoreError) as exc:
        raise AuditCommandError(f"could not describe stack {stack_name!r}: {exc}") from None
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stacks[0].get("Outputs", [])}
    missing = [name for name in ("AuditBucketName", "TableName") if not outputs.get(name)]
    if missing:
        raise AuditCommandError(
            f"stack {stack_name!r} has no output {', '.join(missing)}: deploy a template "
            "version with the audit archive"
        )
    return ArchiveLocation(
        bucket=outputs["AuditBucketName"],
        table=outputs["TableName"],
        queue_url=outputs.get("AuditDeadLetterQueueUrl", ""),
    )


def local_location(state_dir: Path) -> tuple[ClientFactory, ArchiveLocation]:
    """Point boto3 at the embedded moto server that `regauth serve` recorded in `state_dir`."""
    from regauth.local import LOCAL_STATE_FILE

    path = state_dir / LOCAL_STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditCommandError(
            f"{path} not found: start `regauth serve --state-dir {state_dir}` first, or pass "
            "--stack NAME for a deployed stack"
        ) from None
    import boto3

    # Throwaway credentials: the endpoint is the local moto server, never AWS.
    session = boto3.Session(
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto accepts any value
        region_name=state["region"],
    )
    make_client = functools.partial(session.client, endpoint_url=state["endpoint"])
    return make_client, ArchiveLocation(bucket=state["bucket"], table=state["table"])
