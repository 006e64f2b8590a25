"""Client side of IAM sign-in: `regauth login-password` and `docker-credential-regauth`.

Both sign a GetCallerIdentity request with the standard AWS credential chain of
boto3 (environment, profile, SSO, container or instance role) and print it as the
password of the user `aws-iam`. A password is accepted for five minutes after it is
made, so the credential helper makes a new one for each request from Docker.

The credential helper follows Docker's protocol: the action is the first argument,
input comes on standard input and output goes to standard output. `store` and
`erase` succeed without doing anything, because nothing is ever stored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO
from urllib.parse import urlsplit

from regauth.iam import IAM_USERNAME, create_proof

DEFAULT_REGION = "us-east-1"


class LoginError(Exception):
    """AWS credentials are missing, or the registry or region is invalid."""


def server_id_of(server_url: str) -> str:
    """Return the server id for a registry as Docker names it: host and optional port.

    Docker passes `registry.example.com`, `registry.example.com:5000` or a URL such as
    `https://registry.example.com/v1/`. The scheme and path are dropped.
    """
    text = server_url.strip()
    netloc = urlsplit(text if "://" in text else f"//{text}").netloc
    if not netloc or "@" in netloc:
        raise LoginError(f"invalid registry {server_url!r}: use a host name such as r.example.com")
    return netloc.lower()


def make_password(registry: str, *, region: str | None = None, profile: str | None = None) -> str:
    """Sign a proof for `registry` with the default AWS credential chain."""
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(profile_name=profile)
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise LoginError(f"could not load AWS credentials: {exc}") from None
    if credentials is None:
        raise LoginError(
            "no AWS credentials found: configure a profile, environment variables or a role"
        )
    chosen = region or os.environ.get("REGAUTH_STS_REGION") or session.region_name
    try:
        return create_proof(
            credentials, server_id=server_id_of(registry), region=chosen or DEFAULT_REGION
        )
    except ValueError as exc:
        raise LoginError(str(exc)) from None


def add_login_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `login-password` to the `regauth` command's subcommands."""
    login = commands.add_parser(
        "login-password",
        help="print a five-minute password for `docker login -u aws-iam`, signed with your "
        "AWS credentials",
    )
    login.add_argument("--registry", required=True, help="registry host, as in `docker login HOST`")
    login.add_argument(
        "--region",
        help="STS region to sign for (REGAUTH_STS_REGION, then the profile's region, us-east-1)",
    )
    login.add_argument("--profile", help="AWS profile to use (the default credential chain)")


def run_login_password(args: argparse.Namespace) -> int:
    try:
        password = make_password(args.registry, region=args.region, profile=args.profile)
    except LoginError as exc:
        print(f"regauth: {exc}", file=sys.stderr)
        return 1
    print(password)
    return 0


def credential_helper(
    argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Run one Docker credential helper action and return the exit status."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    args = list(sys.argv[1:] if argv is None else argv)
    action = args[0] if len(args) == 1 else ""
    if action == "get":
        server_url = stdin.read().strip()
        try:
            secret = make_password(server_url)
        except LoginError as exc:
            # Docker shows standard output as the error message when the helper fails.
            print(str(exc), file=stdout)
            return 1
        json.dump({"ServerURL": server_url, "Username": IAM_USERNAME, "Secret": secret}, stdout)
        return 0
    if action in ("store", "erase"):
        stdin.read()
        return 0
    if action == "list":
        json.dump({}, stdout)
        return 0
    print("usage: docker-credential-regauth get|store|erase|list", file=sys.stderr)
    return 1


def main() -> None:
    sys.exit(credential_helper())
