"""`regauth policy validate|diff|apply` and `regauth admin ACTION`.

Each command reaches regauth in one of these ways:

- `--state-dir DIR`: the local service that `regauth serve --state-dir DIR` runs,
  through the embedded moto server recorded in `DIR/local.json`;
- `--table NAME`: a deployed stack's table, directly with your AWS credentials
  (`policy diff` and `policy apply` only);
- `--stack NAME` or `--function-name NAME`: a deployed stack's admin function,
  invoked with boto3 `lambda.invoke` (`policy diff` and `admin` only). `--stack`
  reads the function name from the stack's `AdminFunctionName` output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regauth.admin import ACTIONS
from regauth.errors import PolicyError, RegauthError

LOCAL_STATE_FILE = "local.json"
ADMIN_OUTPUT = "AdminFunctionName"

Output = Callable[[str], None]


class CommandError(Exception):
    """A command cannot run as given. The message states what to change."""


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """The embedded AWS of a running `regauth serve`."""

    endpoint: str
    region: str
    table: str
    bucket: str = ""


def add_policy_parser(commands: Any) -> None:
    """Add `regauth policy validate|diff|apply` to the `regauth` parser."""
    policy = commands.add_parser("policy", help="validate, diff and apply policy files")
    actions = policy.add_subparsers(dest="policy_command", required=True)

    validate = actions.add_parser("validate", help="check policy files and list every problem")
    validate.add_argument("files", type=Path, nargs="+")

    diff = actions.add_parser("diff", help="show what applying a file would change")
    diff.add_argument("file", type=Path)
    _add_target_arguments(diff, table=True, function=True)

    apply = actions.add_parser("apply", help="validate a file and apply it as a new version")
    apply.add_argument("file", type=Path)
    apply.add_argument("--actor", default="regauth-cli", help="name recorded in the audit event")
    _add_target_arguments(apply, table=True, function=False)


def add_admin_parser(commands: Any) -> None:
    """Add `regauth admin ACTION` to the `regauth` parser."""
    admin = commands.add_parser(
        "admin", help="run an admin action against the local service or a deployed stack"
    )
    admin.add_argument("action", choices=ACTIONS)
    admin.add_argument("--principal", help="user:NAME, host:NAME, role:NAME or anonymous")
    admin.add_argument(
        "--scope", action="append", help="scope to explain, such as repository:prod/api:push"
    )
    admin.add_argument("--source-ip", help="client address to explain conditions for")
    admin.add_argument("--time", help="RFC 3339 time to explain conditions for (now)")
    admin.add_argument(
        "--password-hash",
        help="hash for set_password_hash (regauth hash-password prints one); '-' reads stdin",
    )
    admin.add_argument("--expires-at", help="RFC 3339 expiry of a new host API key")
    admin.add_argument("--version", type=int, help="policy version for show_policy and rollback")
    admin.add_argument(
        "--include-source", action="store_true", help="show_policy: include the policy file"
    )
    admin.add_argument("--actor", default="regauth-cli", help="name recorded in the audit event")
    _add_target_arguments(admin, table=False, function=True)


def _add_target_arguments(parser: argparse.ArgumentParser, *, table: bool, function: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--state-dir", type=Path, help="state directory of a running `regauth serve`"
    )
    if table:
        group.add_argument("--table", help="a deployed stack's TableName output")
    if function:
        group.add_argument("--stack", help="deployed stack name, for its AdminFunctionName")
        group.add_argument("--function-name", help="the admin function's name or ARN")


def run_policy(args: argparse.Namespace, out: Output = print) -> int:
    """Run a `regauth policy` command and return the exit status."""
    try:
        if args.policy_command == "validate":
            return _validate(args.files, out)
        if args.policy_command == "diff":
            return _diff(args, out)
        return _apply(args, out)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (CommandError, RegauthError, OSError) as exc:
        print(f"regauth: {exc}", file=sys.stderr)
        return 1


def run_admin(args: argparse.Namespace, out: Output = print) -> int:
    """Run a `regauth admin` action, print its JSON response, and return the exit status."""
    try:
        payload = admin_payload(args)
        if args.state_dir is not None:
            response = _admin_local(args.state_dir, payload)
        else:
            response = invoke_admin_function(_function_name(args), payload)
    except (CommandError, RegauthError, OSError) as exc:
        print(f"regauth: {exc}", file=sys.stderr)
        return 1
    out(json.dumps(response, indent=2))
    return 0 if response.get("ok") else 1


def admin_payload(args: argparse.Namespace) -> dict[str, Any]:
    """Build the admin function's payload from the command-line options."""
    payload: dict[str, Any] = {"action": args.action, "actor": args.actor}
    if args.principal:
        payload["principal"] = args.principal
    if args.scope:
        payload["scope"] = args.scope
    if args.source_ip:
        payload["source_ip"] = args.source_ip
    if args.time:
        payload["time"] = args.time
    if args.password_hash:
        value = args.password_hash
        payload["password_hash"] = sys.stdin.readline().strip() if value == "-" else value
    if args.expires_at:
        payload["expires_at"] = args.expires_at
    if args.version is not None:
        payload["version"] = args.version
    if args.include_source:
        payload["include_source"] = True
    return payload


# policy validate, diff, apply.


def _validate(files: list[Path], out: Output) -> int:
    from regauth.policy import compile_policy
    from regauth.policy_file import load_policy

    status = 0
    for path in files:
        try:
            compiled = compile_policy(load_policy(path.read_text(encoding="utf-8"), str(path)))
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        out(
            f"{path}: valid, {len(compiled.principals)} principals, "
            f"content hash {compiled.version[:12]}"
        )
    return status


def _diff(args: argparse.Namespace, out: Output) -> int:
    from regauth.policy_diff import diff_policies, format_diff
    from regauth.policy_file import load_policy

    new = load_policy(args.file.read_text(encoding="utf-8"), source=str(args.file))
    applied_text, applied_label = _applied_source(args)
    old = None if applied_text is None else load_policy(applied_text, source=applied_label)
    out(f"--- {applied_label}")
    out(f"+++ {args.file}")
    out(format_diff(diff_policies(old, new)))
    return 0


def _applied_source(args: argparse.Namespace) -> tuple[str | None, str]:
    if args.state_dir is not None or args.table is not None:
        with _table_target(args) as (client, table):
            from regauth.policy_store import PolicyStore

            store = PolicyStore(client, table)
            current = store.current()
            if current is None:
                return None, "no applied version"
            text = store.source_text(current.seq)
            if text is None:
                raise CommandError(f"the source of applied version {current.seq} is not stored")
            return text, f"applied version {current.seq}"

    response = invoke_admin_function(
        _function_name(args), {"action": "show_policy", "include_source": True}
    )
    if not response.get("ok"):
        raise CommandError(f"show_policy failed: {response.get('error')}")
    result = response["result"]
    if result.get("active") is None:
        return None, "no applied version"
    text = result.get("source_text")
    if text is None:
        raise CommandError(f"the source of applied version {result['active']} is not stored")
    return str(text), f"applied version {result['active']}"


def _apply(args: argparse.Namespace, out: Output) -> int:
    from regauth.policy_apply import apply_policy_text
    from regauth.policy_store import PolicyStore

    text = args.file.read_text(encoding="utf-8")
    with _table_target(args) as (client, table), _audit_sink(args) as audit:
        outcome = apply_policy_text(
            PolicyStore(client, table), audit, text, source=str(args.file), actor=args.actor
        )
    if outcome.status == "rejected":
        for problem in outcome.problems:
            print(problem, file=sys.stderr)
        return 1
    if outcome.status == "unchanged":
        out(f"{args.file}: unchanged, version {outcome.version} is already active")
    else:
        out(
            f"{args.file}: applied as version {outcome.version} "
            f"(previous {outcome.previous}), content hash {outcome.content_hash[:12]}"
        )
    return 0


# Targets.


def read_local_target(state_dir: Path) -> LocalTarget:
    """Read where the embedded AWS of `regauth serve --state-dir DIR` listens."""
    path = state_dir / LOCAL_STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(
            f"{path} not found: start `regauth serve --state-dir {state_dir}` first, or name "
            "a deployed stack"
        ) from None
    return LocalTarget(
        endpoint=str(state["endpoint"]),
        region=str(state["region"]),
        table=str(state["table"]),
        bucket=str(state.get("bucket", "")),
    )


def _local_session(target: LocalTarget) -> Any:
    import boto3

    # Throwaway credentials: the endpoint is the local moto server, never AWS.
    return boto3.Session(
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto accepts any value
        region_name=target.region,
    )


@contextmanager
def _table_target(args: argparse.Namespace) -> Iterator[tuple[Any, str]]:
    import boto3

    if args.state_dir is not None:
        target = read_local_target(args.state_dir)
        client = _local_session(target).client("dynamodb", endpoint_url=target.endpoint)
        yield client, target.table
    else:
        yield boto3.client("dynamodb"), str(args.table)


@contextmanager
def _audit_sink(args: argparse.Namespace) -> Iterator[Any]:
    """Yield the sink for this command's audit events.

    Events are logged as JSON on standard error, so standard output keeps only the
    result. Against the local service they are also archived in its embedded S3,
    as the local server archives its own events.
    """
    from aws_lambda_powertools import Logger

    from regauth.audit import LoggerAuditSink

    logger = Logger(
        service="regauth",
        logger_name="regauth.audit.cli",
        logger_handler=logging.StreamHandler(sys.stderr),
    )
    log_sink = LoggerAuditSink(logger)
    target = read_local_target(args.state_dir) if args.state_dir is not None else None
    if target is None or not target.bucket:
        yield log_sink
        return

    from regauth.archive import AuditArchiver
    from regauth.audit_local import ArchivingAuditSink

    session = _local_session(target)
    archiver = AuditArchiver(
        session.client("s3", endpoint_url=target.endpoint),
        session.client("dynamodb", endpoint_url=target.endpoint),
        target.bucket,
        target.table,
    )
    sink = ArchivingAuditSink(archiver, log_sink)
    sink.start()
    try:
        yield sink
    finally:
        sink.close()


def _admin_local(state_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    from regauth.admin import AdminService

    args = argparse.Namespace(state_dir=state_dir, table=None)
    with _table_target(args) as (client, table), _audit_sink(args) as audit:
        return AdminService(client, table, audit).handle(payload)


def _function_name(args: argparse.Namespace) -> str:
    if args.function_name:
        return str(args.function_name)
    return admin_function_of_stack(args.stack)


def admin_function_of_stack(stack: str, cloudformation: Any = None) -> str:
    """Return the admin function named by a stack's `AdminFunctionName` output."""
    import boto3

    client = cloudformation or boto3.client("cloudformation")
    stacks = client.describe_stacks(StackName=stack)["Stacks"]
    for output in stacks[0].get("Outputs", []) if stacks else []:
        if output.get("OutputKey") == ADMIN_OUTPUT:
            return str(output["OutputValue"])
    raise CommandError(f"stack {stack!r} has no {ADMIN_OUTPUT} output: deploy the current template")


def invoke_admin_function(
    function_name: str, payload: dict[str, Any], lambda_client: Any = None
) -> dict[str, Any]:
    """Invoke the admin function synchronously and return its JSON response."""
    import boto3

    client = lambda_client or boto3.client("lambda")
    response = client.invoke(
        FunctionName=function_name,
        InvocationType="RequestResponse",
        Payload=json.dumps(payload).encode("utf-8"),
    )
    body = response["Payload"].read()
    if response.get("FunctionError"):
        raise CommandError(f"the admin function failed: {body.decode('utf-8', 'replace')}")
    result: dict[str, Any] = json.loads(body)
    return result
