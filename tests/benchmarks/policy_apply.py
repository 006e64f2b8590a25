"""Measure applying a large policy against moto: 10,000 users, 2,000 hosts, 500 grants.

Run with `make bench` (`python -m tests.benchmarks.policy_apply` from the checkout).
The script applies the policy to an empty table, then a changed version on top of
it, then that version again. It exits 1 when either of the first two applies takes a
minute or more, or when the repeated apply changes anything.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
USERS = 10_000
HOSTS = 2_000
GROUPS = 100
GRANTS = 500
TARGET_SECONDS = 60.0


def policy_text(grant_actions: str) -> str:
    """Build the policy: users and hosts in 100 groups, grants to groups and principals."""
    lines = ["users:"]
    lines += [f"  - name: user{index:05d}" for index in range(USERS)]
    lines.append("hosts:")
    lines += [f"  - name: host{index:04d}" for index in range(HOSTS)]

    lines.append("groups:")
    for group in range(GROUPS):
        members = [f"user:user{index:05d}" for index in range(group, USERS, GROUPS)]
        members += [f"host:host{index:04d}" for index in range(group, HOSTS, GROUPS)]
        lines += [f"  - name: team{group:03d}", f"    members: [{', '.join(members)}]"]
    everybody = ", ".join(f"group:team{group:03d}" for group in range(GROUPS))
    lines += ["  - name: everybody", f"    members: [{everybody}]"]

    # 100 grants to groups, 300 to single users, 99 to single hosts and one personal
    # namespace for everyone: 500 grants.
    lines.append("grants:")
    for group in range(GROUPS):
        lines += [
            f"  - id: team{group:03d}",
            f"    to: group:team{group:03d}",
            f'    repositories: ["team{group:03d}/**"]',
            f"    actions: [{grant_actions}]",
        ]
    for index in range(300):
        lines += [
            f"  - id: user-extra-{index}",
            f"    to: user:user{index * 33:05d}",
            f'    repositories: ["extra/{index}/*"]',
            "    actions: [pull]",
        ]
    for index in range(99):
        lines += [
            f"  - id: host-build-{index}",
            f"    to: host:host{index * 20:04d}",
            f'    repositories: ["build/{index}/**"]',
            "    actions: [pull, push]",
            '    source_ips: ["10.0.0.0/8"]',
        ]
    lines += [
        "  - id: personal",
        "    to: group:everybody",
        '    repositories: ["users/{name}/**"]',
        "    actions: [pull, push]",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    with mock_aws():
        return run()


def run() -> int:
    import boto3

    from regauth.local import provision
    from regauth.policy import compile_policy
    from regauth.policy_file import load_policy
    from regauth.policy_store import PolicyStore
    from regauth.template import load_template

    provision(load_template(ROOT / "template.yaml"), "bench")
    store = PolicyStore(boto3.client("dynamodb"), "bench")
    first, second = policy_text("pull"), policy_text("pull, push")
    rules = first.count("  - id: ")
    print(f"policy: {USERS} users, {HOSTS} hosts, {GROUPS + 1} groups, {rules} grants")

    failures = []
    results = {}
    for label, text in (("first apply", first), ("changed apply", second), ("same file", second)):
        started = time.perf_counter()
        policy = load_policy(text)
        parsed = time.perf_counter()
        compiled = compile_policy(policy)
        compiled_at = time.perf_counter()
        result = store.apply(compiled, actor="bench", text=text)
        finished = time.perf_counter()
        total = finished - started
        results[label] = result
        print(
            f"{label}: {total:.1f} s (parse {parsed - started:.1f} s, compile "
            f"{compiled_at - parsed:.1f} s, DynamoDB {finished - compiled_at:.1f} s), "
            f"version {result.version}, changed {result.changed}"
        )
        if label != "same file" and total >= TARGET_SECONDS:
            failures.append(f"{label} took {total:.1f} s, not under {TARGET_SECONDS:.0f} s")

    if results["same file"].changed:
        failures.append("applying the same file again created a new version")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
