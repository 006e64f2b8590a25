"""The `regauth` command: the local service, policies, administration, audit and sign-in."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from regauth.audit_cli import add_audit_parser, run_audit
from regauth.errors import PolicyError
from regauth.login import add_login_parser, run_login_password
from regauth.policy_cli import add_admin_parser, add_policy_parser, run_admin, run_policy

DEFAULT_SERVICE = "registry.local"
DEFAULT_ISSUER = "regauth-local"


def _default_template() -> Path:
    """Find `template.yaml` in the current directory or in the checkout of this package."""
    candidates = [
        Path.cwd() / "template.yaml",
        Path(__file__).resolve().parents[3] / "template.yaml",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regauth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the token service locally, with an embedded moto server as AWS"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=5001, help="port to listen on (5001)")
    serve.add_argument(
        "--policy",
        type=Path,
        default=Path("examples/policy.yaml"),
        help="policy file to apply at start (examples/policy.yaml, relative to the current "
        "directory)",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".regauth"),
        help="directory for root-certificates.pem (.regauth)",
    )
    serve.add_argument(
        "--service",
        action="append",
        help=f"registry service name tokens are issued for; repeatable ({DEFAULT_SERVICE})",
    )
    serve.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"JWT issuer ({DEFAULT_ISSUER})")
    serve.add_argument(
        "--token-ttl", type=int, default=300, help="access token lifetime in seconds (300)"
    )
    serve.add_argument(
        "--template", type=Path, default=None, help="SAM template to read routes from"
    )
    serve.add_argument(
        "--iam-server-id",
        default="",
        help="server id that aws-iam sign-in proofs must sign, usually the registry host "
        "as in `regauth login-password --registry HOST` (the first --service)",
    )

    commands.add_parser(
        "hash-password",
        help="read a password on standard input and print its Argon2id hash",
    )

    validate = commands.add_parser(
        "validate-policy", help="check a policy file (the older name of `policy validate`)"
    )
    validate.add_argument("policy", type=Path)

    add_audit_parser(commands)
    add_policy_parser(commands)
    add_admin_parser(commands)
    add_login_parser(commands)

    apply = commands.add_parser(
        "apply-policy",
        help="apply a policy file to a table (the older name of `policy apply --table`)",
    )
    apply.add_argument("policy", type=Path)
    apply.add_argument(
        "--table", required=True, help="the stack's TableName output (uses your AWS credentials)"
    )
    return parser


def _hash_password() -> int:
    from regauth.passwords import hash_password

    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat: ") != password:
                print("regauth: passwords do not match", file=sys.stderr)
                return 1
        else:
            # Only the line terminator is removed, so passwords may start or end with spaces.
            password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    except (EOFError, KeyboardInterrupt):
        print("\nregauth: no password entered", file=sys.stderr)
        return 1
    if not password:
        print("regauth: the password is empty", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _validate_policy(path: Path) -> int:
    from regauth.policy import compile_policy
    from regauth.policy_file import load_policy

    try:
        compiled = compile_policy(load_policy(path.read_text(encoding="utf-8"), source=str(path)))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"regauth: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    count = len(compiled.principals)
    noun = "principal" if count == 1 else "principals"
    print(f"{path}: valid, version {compiled.version[:12]}, {count} {noun}")
    return 0


def _apply_policy(path: Path, table: str) -> int:
    import boto3
    from botocore.exceptions import NoCredentialsError, NoRegionError

    from regauth.errors import RegauthError
    from regauth.policy import compile_policy
    from regauth.policy_file import load_policy
    from regauth.stores import DynamoStore

    try:
        compiled = compile_policy(load_policy(path.read_text(encoding="utf-8"), source=str(path)))
        DynamoStore(boto3.client("dynamodb"), table).apply_policy(compiled)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except RegauthError as exc:
        print(f"regauth: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"regauth: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except (NoRegionError, NoCredentialsError) as exc:
        print(f"regauth: {exc}: set AWS_REGION and AWS credentials first", file=sys.stderr)
        return 1
    print(f"{path}: applied version {compiled.version[:12]} to {table}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per command
    args = _parser().parse_args(argv)
    if args.command == "audit":
        return run_audit(args)
    if args.command == "policy":
        return run_policy(args)
    if args.command == "admin":
        return run_admin(args)
    if args.command == "login-password":
        return run_login_password(args)
    if args.command == "hash-password":
        return _hash_password()
    if args.command == "validate-policy":
        return _validate_policy(args.policy)
    if args.command == "apply-policy":
        return _apply_policy(args.policy, args.table)

    from regauth.local import ServeError, ServeOptions, serve

    options = ServeOptions(
        host=args.host,
        port=args.port,
        policy=args.policy,
        state_dir=args.state_dir,
        services=tuple(args.service or [DEFAULT_SERVICE]),
        issuer=args.issuer,
        template=args.template or _default_template(),
        token_ttl=args.token_ttl,
        iam_server_id=args.iam_server_id,
    )
    if not options.policy.is_file():
        print(
            f"regauth: policy file not found: {options.policy} "
            "(pass --policy FILE, or run from the checkout to use examples/policy.yaml)",
            file=sys.stderr,
        )
        return 1
    try:
        serve(options, ready=lambda text: print(text, flush=True))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (ServeError, OSError) as exc:
        print(f"regauth: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
