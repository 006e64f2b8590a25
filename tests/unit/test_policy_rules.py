"""Hosts, denies, conditions, `{name}` and explanations in the policy language."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime

import pytest

from regauth.errors import PolicyError
from regauth.hosts import check_api_key, hash_api_key, new_api_key, principal_name_for
from regauth.models import Principal, Scope
from regauth.policy import (
    CONDITION_FAILED,
    DENIED,
    NO_MATCHING_GRANT,
    authorize_with_reasons,
    compile_policy,
    explain,
)
from regauth.policy_diff import diff_policies, format_diff
from regauth.policy_file import load_policy

RULES = """\
users:
  - name: alice
  - name: rel
  - name: dev.one@example.com
hosts:
  - name: ci
groups:
  - name: release
    members: [user:rel, group:bots]
  - name: bots
    members: [host:ci]
grants:
  - id: everyone-prod-pull
    to: anonymous
    repositories: ["prod/**"]
    actions: [pull]
  - id: alice-all
    to: user:alice
    repositories: ["**"]
    actions: ["*"]
  - id: release-prod
    to: group:release
    repositories: ["prod/**"]
    actions: [push]
denies:
  - id: only-release-pushes-prod
    description: Only the release group pushes to prod.
    to: everyone
    except: [group:release]
    repositories: ["prod/**"]
    actions: [push, delete]
"""

JAN_1 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
FEB_1 = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())


def principal(text: str, name: str) -> Principal:
    compiled = compile_policy(load_policy(text))
    return next(p for p in compiled.principals if p.name == name)


def granted(
    subject: Principal, scope: str, source_ip: str = "", now: int = JAN_1
) -> tuple[str, ...]:
    kind, name, actions = scope.split(":")
    entries, _ = authorize_with_reasons(
        subject, [Scope(kind, name, frozenset(actions.split(",")))], source_ip=source_ip, now=now
    )
    return entries[0].actions


@pytest.mark.parametrize(
    ("name", "scope", "expected"),
    [
        ("user:alice", "repository:prod/api:push", ()),
        ("user:alice", "repository:prod/api:pull", ("pull",)),
        ("user:alice", "repository:prod/api:*", ()),
        ("user:alice", "repository:team/api:*", ("*",)),
        ("user:rel", "repository:prod/api:push", ("push",)),
        ("host:ci", "repository:prod/api:pull,push", ("pull", "push")),
        ("anonymous", "repository:prod/api:pull,push", ("pull",)),
    ],
    ids=[
        "grant-star-denied",
        "pull-kept",
        "star-request-denied",
        "other-repo",
        "release",
        "nested-host",
        "anonymous",
    ],
)
def test_deny_wins(name: str, scope: str, expected: tuple[str, ...]) -> None:
    assert granted(principal(RULES, name), scope) == expected


def test_rules_order_independent() -> None:
    policy = load_policy(RULES)
    alice = next(p for p in compile_policy(policy).principals if p.name == "user:alice")
    scope = [Scope("repository", "prod/api", frozenset({"pull", "push", "delete"}))]
    expected = authorize_with_reasons(alice, scope, now=JAN_1)[0]
    for order in itertools.permutations(alice.grants):
        shuffled = Principal(alice.name, tuple(order))
        assert authorize_with_reasons(shuffled, scope, now=JAN_1)[0] == expected


def test_dropped_names_deny_rule() -> None:
    alice = principal(RULES, "user:alice")
    scope = [Scope("repository", "prod/api", frozenset({"push"}))]
    _, dropped = authorize_with_reasons(alice, scope, now=JAN_1)
    assert dropped[0].reason == DENIED
    assert dropped[0].rules[0].rule_id == "only-release-pushes-prod"
    assert dropped[0].rules[0].effect == "deny"


def test_group_cycle_through_hosts_rejected() -> None:
    text = (
        "hosts:\n  - name: ci\ngroups:\n  - name: a\n    members: [host:ci, group:b]\n"
        "  - name: b\n    members: [group:a]\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert "groups contain each other in a cycle: group:a -> group:b -> group:a" in str(
        caught.value
    )


CONDITIONS = """\
users:
  - name: alice
grants:
  - id: office
    to: user:alice
    repositories: ["team/**"]
    actions: [push]
    source_ips: ["192.0.2.0/24", "2001:db8::/32"]
  - id: january
    to: user:alice
    repositories: ["temp/**"]
    actions: [pull]
    not_before: 2026-01-01T00:00:00Z
    not_after: "2026-02-01T00:00:00+00:00"
"""


@pytest.mark.parametrize(
    ("source_ip", "expected"),
    [
        ("192.0.2.1", ("push",)),
        ("192.0.2.255", ("push",)),
        ("192.0.3.0", ()),
        ("2001:db8::1", ("push",)),
        ("::ffff:192.0.2.7", ("push",)),
        ("", ()),
        ("not-an-ip", ()),
    ],
    ids=["inside", "last", "outside", "ipv6", "mapped-ipv4", "missing", "garbage"],
)
def test_cidr_condition(source_ip: str, expected: tuple[str, ...]) -> None:
    alice = principal(CONDITIONS, "user:alice")
    assert granted(alice, "repository:team/app:push", source_ip=source_ip) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (JAN_1 - 1, ()),
        (JAN_1, ("pull",)),
        (FEB_1, ("pull",)),
        (FEB_1 + 1, ()),
    ],
    ids=["before", "start", "end", "after"],
)
def test_time_window_condition(now: int, expected: tuple[str, ...]) -> None:
    alice = principal(CONDITIONS, "user:alice")
    assert granted(alice, "repository:temp/x:pull", now=now) == expected


def test_explain_failed_condition_detail() -> None:
    alice = principal(CONDITIONS, "user:alice")
    scopes = [Scope("repository", "temp/x", frozenset({"pull"}))]
    (decision,) = explain(alice, scopes, now=FEB_1 + 1, descriptions={"january": "temporary"})
    assert decision.granted is False
    assert decision.reason == CONDITION_FAILED
    assert decision.rules[0].detail == "not_after 2026-02-01T00:00:00Z has passed"
    assert decision.rules[0].description == "temporary"


def test_explain_no_rule() -> None:
    alice = principal(CONDITIONS, "user:alice")
    (decision,) = explain(alice, [Scope("repository", "other", frozenset({"pull"}))], now=JAN_1)
    assert decision.reason == NO_MATCHING_GRANT
    assert decision.rules == ()


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("    source_ips: ['10.0.0.1/8']\n", "grants[0].source_ips[0]: invalid CIDR range"),
        ("    not_before: 2026-01-01\n", "must be an RFC 3339 time with a time zone"),
        (
            "    not_before: 2026-02-01T00:00:00Z\n    not_after: 2026-01-01T00:00:00Z\n",
            "grants[0].not_after is earlier than not_before",
        ),
        ("    except: [user:alice]\n", "unknown key 'except' in grants[0]"),
    ],
    ids=["host-bits", "date-only", "reversed-window", "except-on-grant"],
)
def test_condition_errors(snippet: str, message: str) -> None:
    text = (
        "users:\n  - name: alice\ngrants:\n  - to: user:alice\n"
        "    repositories: [a]\n    actions: [pull]\n" + snippet
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert message in str(caught.value)


def test_everyone_only_in_denies() -> None:
    text = "grants:\n  - to: everyone\n    repositories: [a]\n    actions: [pull]\n"
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert "'everyone' is for denies" in str(caught.value)


PLACEHOLDER = """\
users:
  - name: alice
hosts:
  - name: ci
groups:
  - name: staff
    members: [user:alice, host:ci]
grants:
  - id: own
    to: group:staff
    repositories: ["users/{name}/**"]
    actions: [pull, push]
"""


@pytest.mark.parametrize(
    ("name", "repository", "expected"),
    [
        ("user:alice", "users/alice/app", ("pull",)),
        ("user:alice", "users/ci/app", ()),
        ("host:ci", "users/ci/app", ("pull",)),
        ("user:alice", "users/alicex/app", ()),
    ],
    ids=["own", "other", "host", "anchored"],
)
def test_name_placeholder(name: str, repository: str, expected: tuple[str, ...]) -> None:
    assert granted(principal(PLACEHOLDER, name), f"repository:{repository}:pull") == expected


def test_placeholder_invalid_for_name() -> None:
    text = PLACEHOLDER.replace("name: alice", "name: a@example.com").replace(
        "user:alice", "user:a@example.com"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert "repositories[0] for user:a@example.com" in str(caught.value)


def test_placeholder_name_shared_by_host_rejected() -> None:
    # Without the check, host:alice got push on users/alice/app through `own`.
    text = PLACEHOLDER.replace("name: ci", "name: alice").replace("host:ci", "host:alice")
    with pytest.raises(PolicyError) as caught:
        load_policy(text, source="test.yaml")
    assert [str(problem) for problem in caught.value.problems] == [
        "test.yaml:4:11: hosts[0].name: host name 'alice' is already the name of "
        "'user:alice' (line 2). Users, hosts and roles need distinct names, because {name} "
        "in a repository pattern is replaced by the name without its kind"
    ]


ROLE = "  - name: {name}\n    arns: ['arn:aws:iam::111122223333:role/ci']\n"


@pytest.mark.parametrize(
    ("text", "kind", "other", "line"),
    [
        ("users:\n  - name: ci\nhosts:\n  - name: ci\n", "host", "user", 4),
        ("users:\n  - name: ci\nroles:\n" + ROLE.format(name="ci"), "role", "user", 4),
        ("hosts:\n  - name: ci\nroles:\n" + ROLE.format(name="ci"), "role", "host", 4),
        # Hosts are read before roles, so the role is reported even when it comes first.
        ("roles:\n" + ROLE.format(name="ci") + "hosts:\n  - name: ci\n", "role", "host", 2),
    ],
    ids=["user-host", "user-role", "host-role", "role-first"],
)
def test_name_shared_across_kinds_rejected(text: str, kind: str, other: str, line: int) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    problems = caught.value.problems
    assert len(problems) == 1
    assert problems[0].message.startswith(
        f"{kind}s[0].name: {kind} name 'ci' is already the name of '{other}:ci'"
    )
    assert (problems[0].line, problems[0].column) == (line, 11)


def test_same_name_group_and_user_allowed() -> None:
    # `{name}` is never replaced by a group's name, so groups may share names.
    text = "users:\n  - name: ci\ngroups:\n  - name: ci\n    members: [user:ci]\n"
    assert load_policy(text).groups[0].name == "ci"


def test_placeholder_rejected_for_anonymous() -> None:
    text = "grants:\n  - to: anonymous\n    repositories: ['u/{name}']\n    actions: [pull]\n"
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    assert "{name} cannot be used in a grant to 'anonymous'" in str(caught.value)


def test_old_policy_version_unchanged() -> None:
    # A policy without the new keys keeps the content hash it had before they existed:
    # the SHA-256 of the first format's canonical JSON.
    text = "users:\n  - name: a\ngrants:\n  - to: user:a\n    registry: [catalog]\n"
    canonical = {
        "format": 1,
        "users": [{"name": "a", "password_hash": None, "disabled": False}],
        "groups": [],
        "grants": [
            {
                "id": "grants[0]",
                "to": "user:a",
                "type": "registry",
                "resources": ["catalog"],
                "actions": ["*"],
                "description": "",
            }
        ],
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    assert compile_policy(load_policy(text)).version == hashlib.sha256(encoded).hexdigest()


def test_diff_no_changes() -> None:
    policy = load_policy(RULES)
    assert format_diff(diff_policies(policy, policy)) == "no changes"


def test_diff_group_change_reaches_members() -> None:
    old = load_policy(RULES)
    new = load_policy(RULES.replace("members: [user:rel, group:bots]", "members: [user:rel]"))
    diff = diff_policies(old, new)
    assert [change.principal for change in diff.changes] == ["host:ci"]
    lost = {right.describe() for right in diff.changes[0].lost}
    assert "allow push on repository prod/** (rule release-prod)" in lost
    gained = {right.describe() for right in diff.changes[0].gained}
    assert "deny push on repository prod/** (rule only-release-pushes-prod)" in gained


def test_host_username_maps_to_host() -> None:
    assert principal_name_for("host/ci") == "host:ci"
    assert principal_name_for("alice") == "user:alice"
    assert Principal("host:ci", ()).display_name == "host/ci"


def test_api_key_check() -> None:
    key = new_api_key()
    host = Principal("host:ci", (), api_key_hash=hash_api_key(key), api_key_expires_at=JAN_1)
    assert check_api_key(host, key, JAN_1 - 1) is None
    assert check_api_key(host, key, JAN_1) == "expired_api_key"
    assert check_api_key(host, key + "x", JAN_1 - 1) == "wrong_api_key"
    assert check_api_key(Principal("host:ci", ()), key, JAN_1) == "no_api_key"


def test_api_keys_random() -> None:
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith("rgk1_") and len(key) == 48 for key in keys)


def test_deny_to_anonymous_spares_users() -> None:
    text = """\
users:
  - name: alice
grants:
  - to: anonymous
    repositories: ["team/**"]
    actions: [pull]
  - to: user:alice
    repositories: ["team/**"]
    actions: [pull]
denies:
  - to: anonymous
    repositories: ["team/secret"]
    actions: [pull]
"""
    # A deny to anonymous reaches unauthenticated requests only, even though grants
    # to anonymous reach every principal.
    anonymous = principal(text, "anonymous")
    alice = principal(text, "user:alice")
    assert granted(anonymous, "repository:team/secret:pull") == ()
    assert granted(alice, "repository:team/secret:pull") == ("pull",)
    assert granted(anonymous, "repository:team/open:pull") == ("pull",)
