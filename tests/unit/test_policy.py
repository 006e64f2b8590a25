"""Tests for loading, compiling and authorizing against a policy file."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from regauth.errors import PolicyError, PolicyProblem
from regauth.models import AccessEntry, Grant, Principal, Scope
from regauth.passwords import verify_password
from regauth.policy import (
    NO_MATCHING_GRANT,
    UNKNOWN_ACTION,
    UNSUPPORTED_TYPE,
    CompiledPolicy,
    Dropped,
    Policy,
    PolicyGrant,
    PolicyGroup,
    PolicyUser,
    authorize,
    authorize_with_reasons,
    compile_policy,
)
from regauth.policy_file import load_policy

EXAMPLE_POLICY = Path(__file__).parents[2] / "examples" / "policy.yaml"

# Well-formed hashes, so that the format check accepts them. No test verifies a password
# against them.
ARGON2_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$BUcBnzk8yT7oCgPOf0LhCw$"
    "yTH3nKdwk9UPWBQ36wU1nIoCm1J8F0Oa2wMW0fNaIr0"
)
BCRYPT_HASH = "$2y$12$W4K/fQ8kHGxNDinh4CxybujlRF0GHiCgPHY5xrPjLE8eCbA8kcA0a"

BRIEF_POLICY = f"""\
users:
  - name: alice
    password_hash: "{ARGON2_HASH}"
  - name: ops
    password_hash: "{BCRYPT_HASH}"
groups:
  - name: developers
    members: [user:alice]
grants:
  - to: group:developers
    repositories: ["team/**"]
    actions: [pull, push]
  - to: anonymous
    repositories: ["public/*"]
    actions: [pull]
  - to: user:ops
    registry: [catalog]
"""


def problems_of(text: str) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(textwrap.dedent(text), source="test.yaml")
    return caught.value.problems


def only_problem(text: str) -> PolicyProblem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def principal_named(compiled: CompiledPolicy, name: str) -> Principal:
    return next(principal for principal in compiled.principals if principal.name == name)


def principal_with(*grants: Grant) -> Principal:
    return Principal(name="user:test", grants=grants)


def repository_grant(pattern: str, *actions: str, rule_id: str = "rule") -> Grant:
    return Grant("repository", pattern, frozenset(actions), rule_id)


def scope(resource_type: str, name: str, *actions: str) -> Scope:
    return Scope(resource_type, name, frozenset(actions))


# Loading: the accepted format -------------------------------------------------------


def test_load_policy_brief_example() -> None:
    policy = load_policy(BRIEF_POLICY)

    assert policy.users == (
        PolicyUser("alice", ARGON2_HASH, disabled=False),
        PolicyUser("ops", BCRYPT_HASH, disabled=False),
    )
    assert policy.groups == (PolicyGroup("developers", ("user:alice",)),)
    assert policy.grants[0] == PolicyGrant(
        "grants[0]", "group:developers", "repository", ("team/**",), frozenset({"pull", "push"})
    )
    assert policy.grants[1] == PolicyGrant(
        "grants[1]", "anonymous", "repository", ("public/*",), frozenset({"pull"})
    )
    assert policy.grants[2] == PolicyGrant(
        "grants[2]", "user:ops", "registry", ("catalog",), frozenset({"*"})
    )


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# only a comment\n", "~\n", "---\n"],
    ids=["empty", "blank-lines", "comment", "null", "document-marker"],
)
def test_load_policy_empty(text: str) -> None:
    assert load_policy(text) == Policy()


def test_load_policy_empty_sections() -> None:
    assert load_policy("users:\ngroups: []\ngrants:\n") == Policy()


def test_load_policy_version_one() -> None:
    assert load_policy("version: 1\n") == Policy()


def test_load_policy_optional_user_fields() -> None:
    policy = load_policy("users:\n  - name: carol\n    disabled: true\n")
    assert policy.users == (PolicyUser("carol", None, disabled=True),)


@pytest.mark.parametrize(
    "name",
    ["alice", "a", "0", "alice.smith", "alice_smith", "alice-smith", "alice@example.com"],
    ids=["plain", "one-letter", "digit", "dot", "underscore", "dash", "email"],
)
def test_load_policy_user_name_valid(name: str) -> None:
    policy = load_policy(f"users:\n  - name: '{name}'\n")
    assert policy.users[0].name == name


def test_load_policy_user_name_max_length() -> None:
    name = "a" * 64
    assert load_policy(f"users:\n  - name: {name}\n").users[0].name == name


def test_load_policy_grant_fields() -> None:
    policy = load_policy(
        textwrap.dedent(
            """\
        users:
          - name: alice
        grants:
          - id: alice-team
            description: Alice works on team/.
            to: user:alice
            repositories: ["team/*", "team/**", "team/*"]
            actions: [delete, pull, "*", pull]
        """
        )
    )
    assert policy.grants == (
        PolicyGrant(
            "alice-team",
            "user:alice",
            "repository",
            ("team/*", "team/**"),
            frozenset({"pull", "delete", "*"}),
            "Alice works on team/.",
        ),
    )


def test_load_policy_registry_star_action() -> None:
    policy = load_policy(
        "users:\n  - name: ops\ngrants:\n  - to: user:ops\n    registry: [catalog]\n"
        "    actions: ['*']\n"
    )
    assert policy.grants[0].actions == frozenset({"*"})


def test_load_policy_group_defined_after_use() -> None:
    policy = load_policy(
        textwrap.dedent(
            """\
        users:
          - name: alice
        groups:
          - name: all
            members: [group:developers]
          - name: developers
            members: [user:alice]
        grants:
          - to: group:all
            repositories: ["**"]
            actions: [pull]
        """
        )
    )
    assert [group.name for group in policy.groups] == ["all", "developers"]


def test_load_policy_group_without_members() -> None:
    policy = load_policy("groups:\n  - name: empty\n")
    assert policy.groups == (PolicyGroup("empty", ()),)


def test_load_policy_example_file() -> None:
    text = EXAMPLE_POLICY.read_text(encoding="utf-8")
    policy = load_policy(text, source=str(EXAMPLE_POLICY))
    assert [user.name for user in policy.users] == ["alice", "bob", "carol", "ops"]


def test_example_hashes_match_passwords() -> None:
    # The example documents its passwords in a comment, so the hashes must match them.
    # One Argon2id check and the bcrypt check keep this test fast.
    policy = load_policy(EXAMPLE_POLICY.read_text(encoding="utf-8"))
    hashes = {user.name: user.password_hash or "" for user in policy.users}
    assert verify_password(hashes["alice"], "alice-example-password")
    assert verify_password(hashes["ops"], "ops-example-password")
    assert hashes["ops"].startswith("$2y$")


# Loading: problems with positions ---------------------------------------------------


def test_load_policy_unknown_top_level_key() -> None:
    problem = only_problem("users: []\nuser: []\n")
    assert problem == PolicyProblem(
        "unknown key 'user' in the policy "
        "(allowed: version, users, hosts, roles, groups, grants, denies)",
        2,
        1,
        "test.yaml",
    )


def test_load_policy_unknown_user_key() -> None:
    problem = only_problem(
        """\
        users:
          - name: alice
            pasword_hash: x
        """
    )
    assert problem.message == (
        "unknown key 'pasword_hash' in users[0] (allowed: name, password_hash, disabled)"
    )
    assert problem.line == 3
    assert problem.column == 5


def test_load_policy_unknown_group_key() -> None:
    problem = only_problem("groups:\n  - name: dev\n    member: []\n")
    assert problem.message == "unknown key 'member' in groups[0] (allowed: name, members)"
    assert (problem.line, problem.column) == (3, 5)


def test_load_policy_unknown_grant_key() -> None:
    problem = only_problem(
        "grants:\n"
        "  - to: anonymous\n"
        "    repositories: [public/*]\n"
        "    actions: [pull]\n"
        "    expires: 2030-01-01\n"
    )
    assert problem.message == (
        "unknown key 'expires' in grants[0] "
        "(allowed: id, description, to, repositories, registry, actions, "
        "source_ips, not_before, not_after)"
    )
    assert (problem.line, problem.column) == (5, 5)


def test_load_policy_unknown_keys_all_reported() -> None:
    problems = problems_of(
        """\
        colour: blue
        users:
          - name: alice
            admin: true
        grants:
          - to: user:alice
            repositories: ["**"]
            actions: [pull]
            flag: 1
        """
    )
    positions = [(problem.line, problem.column) for problem in problems]
    assert positions == [(1, 1), (4, 5), (9, 5)]


def test_load_policy_non_string_key() -> None:
    problem = only_problem("users:\n  - name: alice\n    [a]: 1\n")
    assert problem.message.startswith("unknown key a list in users[0]")
    assert (problem.line, problem.column) == (3, 5)


def test_load_policy_duplicate_key() -> None:
    problem = only_problem("users:\n  - name: alice\n    name: bob\n")
    assert problem.message == "duplicate key 'name' in users[0] (first at line 2)"
    assert (problem.line, problem.column) == (3, 5)


def test_load_policy_duplicate_top_level_key() -> None:
    problem = only_problem("users: []\ngrants: []\nusers: []\n")
    assert problem.message == "duplicate key 'users' in the policy (first at line 1)"
    assert (problem.line, problem.column) == (3, 1)


def test_load_policy_syntax_error() -> None:
    problem = only_problem("users:\n  - name: [alice\n")
    assert problem.message.startswith("invalid YAML: expected ',' or ']'")
    assert problem.line == 3
    assert problem.column == 1


def test_load_policy_syntax_error_bad_indentation() -> None:
    problem = only_problem("users:\n  - name: alice\n   password_hash: x\n")
    assert problem.message.startswith("invalid YAML:")
    assert problem.line == 3


def test_load_policy_several_documents() -> None:
    problem = only_problem("users: []\n---\ngroups: []\n")
    assert problem.message == (
        "invalid YAML: but found another document (expected a single document in the stream)"
    )
    assert (problem.line, problem.column) == (2, 1)


def test_load_policy_control_character() -> None:
    problem = only_problem("users:\n  - name: al\x07ice\n")
    assert problem.message == "invalid YAML: special characters are not allowed (character 0x7)"
    assert (problem.line, problem.column) == (2, 13)


def test_load_policy_alias_rejected() -> None:
    problems = problems_of(
        """\
        users:
          - name: alice
        grants:
          - to: user:alice
            repositories: &team ["team/**"]
            actions: [pull]
          - to: anonymous
            repositories: *team
            actions: [pull]
        """
    )
    assert problems == [
        PolicyProblem("YAML aliases are not supported: write the value out", 8, 19, "test.yaml")
    ]


NESTING_MESSAGE = (
    "lists and mappings are nested more than 16 levels deep, but a policy needs at most 4"
)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("users: " + "[" * 5000 + "]" * 5000 + "\n", 1, 23),
        ("users:\n" + "".join(" " * (2 * level) + "- \n" for level in range(1, 3000)), 17, 33),
    ],
    ids=["flow", "block"],
)
def test_load_policy_deep_nesting_rejected(text: str, line: int, column: int) -> None:
    # Composing 5,000 levels raised RecursionError instead of a PolicyError.
    problem = only_problem(text)
    assert problem.message == NESTING_MESSAGE
    assert (problem.line, problem.column) == (line, column)


def test_load_policy_nesting_limit_allows_16() -> None:
    problem = only_problem("users: " + "[" * 15 + "]" * 15 + "\n")
    assert problem.message == "users[0] must be a mapping, got a list"


def test_load_policy_source_in_problem() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy("bogus: 1\n", source="policies/prod.yaml")
    assert str(caught.value).startswith("policies/prod.yaml:1:1: unknown key 'bogus'")


def test_load_policy_top_level_list() -> None:
    problem = only_problem("- name: alice\n")
    assert problem.message == "the policy must be a mapping, got a list"
    assert (problem.line, problem.column) == (1, 1)


def test_load_policy_users_not_a_list() -> None:
    problem = only_problem("users:\n  name: alice\n")
    assert problem.message == "users must be a list, got a mapping"
    assert (problem.line, problem.column) == (2, 3)


def test_load_policy_user_not_a_mapping() -> None:
    problem = only_problem("users:\n  - alice\n")
    assert problem.message == "users[0] must be a mapping, got a string"
    assert (problem.line, problem.column) == (2, 5)


def test_load_policy_user_name_missing() -> None:
    problem = only_problem("users:\n  - disabled: true\n")
    assert problem.message == "users[0] is missing the required key 'name'"
    assert (problem.line, problem.column) == (2, 5)


def test_load_policy_user_name_integer() -> None:
    problem = only_problem("users:\n  - name: 007\n")
    assert problem.message == (
        "users[0].name must be a string, got an integer (put it in quotes to make it a string)"
    )
    assert (problem.line, problem.column) == (2, 11)


def test_load_policy_user_name_null() -> None:
    problem = only_problem("users:\n  - name:\n")
    assert problem.message == "users[0].name must be a string, got null"


def test_load_policy_custom_tag() -> None:
    problem = only_problem("users:\n  - name: !secret alice\n")
    assert problem.message == "users[0].name must be a string, got a value tagged !secret"


def test_load_policy_disabled_not_boolean() -> None:
    problem = only_problem("users:\n  - name: alice\n    disabled: 'true'\n")
    assert problem.message == "users[0].disabled must be true or false, got a string"
    assert (problem.line, problem.column) == (3, 15)


@pytest.mark.parametrize("value", ["2", "'1'", "1.0"], ids=["two", "string", "float"])
def test_load_policy_version_invalid(value: str) -> None:
    problem = only_problem(f"version: {value}\n")
    assert problem.message == "version must be 1, the only policy format version"
    assert (problem.line, problem.column) == (1, 10)


@pytest.mark.parametrize(
    "name",
    ["Alice", "-alice", ".alice", "al ice", "alice:x", "a" * 65, "", "ali/ce"],
    ids=[
        "upper-case",
        "leading-dash",
        "leading-dot",
        "space",
        "colon",
        "too-long",
        "empty",
        "slash",
    ],
)
def test_load_policy_user_name_invalid(name: str) -> None:
    problem = only_problem(f"users:\n  - name: '{name}'\n")
    assert problem.message == (
        f"users[0].name: invalid user name {name!r}: use 1 to 64 lower-case letters, digits, "
        "'.', '_', '-' or '@', starting with a letter or digit"
    )


def test_load_policy_user_name_anonymous_reserved() -> None:
    problem = only_problem("users:\n  - name: anonymous\n")
    assert problem.message == (
        "users[0].name: the user name 'anonymous' is reserved for unauthenticated requests"
    )


def test_load_policy_user_name_aws_iam_reserved() -> None:
    problem = only_problem("users:\n  - name: aws-iam\n")
    assert problem.message == (
        "users[0].name: the user name 'aws-iam' is reserved for AWS IAM sign-in "
        "and cannot sign in with a password"
    )
    assert (problem.line, problem.column) == (2, 11)


def test_load_policy_duplicate_user() -> None:
    problem = only_problem("users:\n  - name: alice\n  - name: bob\n  - name: alice\n")
    assert problem.message == "users[2].name: duplicate user name 'alice' (first at line 2)"
    assert (problem.line, problem.column) == (4, 11)


def test_load_policy_duplicate_group() -> None:
    problem = only_problem("groups:\n  - name: dev\n  - name: dev\n")
    assert problem.message == "groups[1].name: duplicate group name 'dev' (first at line 2)"
    assert (problem.line, problem.column) == (3, 11)


def test_load_policy_group_name_invalid() -> None:
    problem = only_problem("groups:\n  - name: dev@team\n")
    assert problem.message == (
        "groups[0].name: invalid group name 'dev@team': use 1 to 64 lower-case letters, "
        "digits, '.', '_' or '-', starting with a letter or digit"
    )


HASH_SUGGESTION = (
    ". Use an Argon2id PHC string ($argon2id$...) or a bcrypt hash with the prefix $2b$ or $2y$"
)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("$2a$" + BCRYPT_HASH.removeprefix("$2y$"), "bcrypt $2a$ hashes are not supported"),
        ("$apr1$abcdefgh$0123456789abcdefghijkl", "Apache MD5 ($apr1$) hashes are not supported"),
        ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1 ({SHA}) hashes are not supported"),
        ("$6$salt$hash", "SHA-512-crypt ($6$) hashes are not supported"),
        (
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "Argon2i hashes are not supported",
        ),
        ("$argon2id$v=19$m=19456", "the hash is malformed"),
        ("$2b$12$tooshort", "the hash is malformed"),
        ("hunter2", "the value is not a password hash (plaintext is rejected)"),
    ],
    ids=[
        "bcrypt-2a",
        "apr1",
        "sha1",
        "sha512-crypt",
        "argon2i",
        "argon2id-short",
        "bcrypt-short",
        "plaintext",
    ],
)
def test_load_policy_password_hash_rejected(value: str, problem: str) -> None:
    found = only_problem(f"users:\n  - name: alice\n    password_hash: '{value}'\n")
    assert found.message == f"users[0].password_hash: {problem}{HASH_SUGGESTION}"
    assert (found.line, found.column) == (3, 20)


def test_load_policy_password_hash_not_echoed() -> None:
    # A password put where the hash belongs must not appear in the error, which may be
    # logged.
    problem = only_problem("users:\n  - name: alice\n    password_hash: s3cret-Passw0rd\n")
    assert "s3cret-Passw0rd" not in str(problem)


def test_load_policy_unknown_member() -> None:
    problem = only_problem(
        "users:\n  - name: alice\ngroups:\n  - name: dev\n    members: [user:bob]\n"
    )
    assert problem.message == "groups[0].members[0]: unknown member 'user:bob': no user named 'bob'"
    assert (problem.line, problem.column) == (5, 15)


def test_load_policy_unknown_group_member() -> None:
    problem = only_problem("groups:\n  - name: dev\n    members: [group:ops]\n")
    assert problem.message == (
        "groups[0].members[0]: unknown member 'group:ops': no group named 'ops'"
    )


def test_load_policy_invalid_member() -> None:
    problem = only_problem(
        "users:\n  - name: alice\ngroups:\n  - name: dev\n    members: [alice]\n"
    )
    assert problem.message == (
        "groups[0].members[0]: invalid member 'alice': "
        "use 'user:NAME', 'host:NAME', 'role:NAME' or 'group:NAME'"
    )


def test_load_policy_member_index() -> None:
    problems = problems_of("groups:\n  - name: dev\n    members: [1, user:bob]\n")
    messages = [problem.message for problem in problems]
    assert messages == [
        "groups[0].members[0] must be a string, got an integer "
        "(put it in quotes to make it a string)",
        "groups[0].members[1]: unknown member 'user:bob': no user named 'bob'",
    ]


def test_load_policy_group_cycle() -> None:
    problem = only_problem(
        """\
        groups:
          - name: a
            members: [group:b]
          - name: b
            members: [group:c]
          - name: c
            members: [group:a]
        """
    )
    assert problem.message == (
        "groups contain each other in a cycle: group:a -> group:b -> group:c -> group:a"
    )
    assert (problem.line, problem.column) == (7, 15)


def test_load_policy_group_self_member() -> None:
    problem = only_problem("groups:\n  - name: a\n    members: [group:a]\n")
    assert problem.message == "groups contain each other in a cycle: group:a -> group:a"
    assert (problem.line, problem.column) == (3, 15)


def test_load_policy_group_diamond_is_not_cycle() -> None:
    policy = load_policy(
        textwrap.dedent(
            """\
        groups:
          - name: top
            members: [group:left, group:right]
          - name: left
            members: [group:bottom]
          - name: right
            members: [group:bottom]
          - name: bottom
        """
        )
    )
    assert len(policy.groups) == 4


def test_load_policy_deep_group_nesting() -> None:
    # Deeper than Python's default recursion limit of 1000, to show the search is iterative.
    depth = 1500
    lines = ["groups:"]
    for index in range(depth):
        lines.append(f"  - name: g{index}")
        if index + 1 < depth:
            lines.append(f"    members: [group:g{index + 1}]")
    policy = load_policy("\n".join(lines) + "\n")
    assert len(policy.groups) == depth


GRANT_PROBLEMS = [
    # (grant body, expected message, line, column)
    (
        "  - to: user:bob\n    repositories: [a]\n    actions: [pull]\n",
        "grants[0].to: unknown user 'user:bob': no user named 'bob'",
        2,
        9,
    ),
    (
        "  - to: group:ops\n    repositories: [a]\n    actions: [pull]\n",
        "grants[0].to: unknown group 'group:ops': no group named 'ops'",
        2,
        9,
    ),
    (
        "  - to: alice\n    repositories: [a]\n    actions: [pull]\n",
        "grants[0].to: invalid target 'alice': "
        "use 'user:NAME', 'host:NAME', 'role:NAME', 'group:NAME' or 'anonymous'",
        2,
        9,
    ),
    (
        "  - repositories: [a]\n    actions: [pull]\n",
        "grants[0] is missing the required key 'to'",
        2,
        5,
    ),
    (
        "  - to: anonymous\n    repositories: [a]\n    registry: [catalog]\n",
        "grants[0] must have exactly one of 'repositories' or 'registry'",
        2,
        5,
    ),
    (
        "  - to: anonymous\n    actions: [pull]\n",
        "grants[0] must have exactly one of 'repositories' or 'registry'",
        2,
        5,
    ),
    (
        "  - to: anonymous\n    repositories: [a]\n",
        "grants[0] grants repositories but has no 'actions'",
        3,
        19,
    ),
    (
        "  - to: anonymous\n    repositories: [a]\n    actions: [pull, write]\n",
        "grants[0].actions[1]: unknown action 'write' (allowed: pull, push, delete, *)",
        4,
        21,
    ),
    (
        "  - to: anonymous\n    repositories: [a]\n    actions: []\n",
        "grants[0].actions is empty: list at least one value",
        4,
        14,
    ),
    (
        "  - to: anonymous\n    repositories: []\n    actions: [pull]\n",
        "grants[0].repositories is empty: list at least one value",
        3,
        19,
    ),
    (
        "  - to: anonymous\n    repositories:\n    actions: [pull]\n",
        "grants[0].repositories must be a list, got null",
        3,
        18,
    ),
    (
        "  - to: anonymous\n    repositories: team/*\n    actions: [pull]\n",
        "grants[0].repositories must be a list, got a string",
        3,
        19,
    ),
    (
        "  - to: anonymous\n    repositories: [ok, 'team/a**b']\n    actions: [pull]\n",
        "grants[0].repositories[1]: repository pattern 'team/a**b' uses '**' inside the "
        "segment 'a**b': '**' must be a whole segment such as 'team/**', and '*' matches "
        "within a segment",
        3,
        24,
    ),
    (
        "  - to: anonymous\n    registry: [tags]\n",
        "grants[0].registry[0]: unknown registry resource 'tags' (allowed: catalog)",
        3,
        16,
    ),
    (
        "  - to: anonymous\n    registry: [catalog]\n    actions: [pull]\n",
        "grants[0].actions must be absent or ['*'] for a registry grant",
        4,
        14,
    ),
    (
        "  - to: anonymous\n    registry: [catalog]\n    actions: []\n",
        "grants[0].actions must be absent or ['*'] for a registry grant",
        4,
        14,
    ),
    (
        "  - id: ''\n    to: anonymous\n    registry: [catalog]\n",
        "grants[0].id must be 1 to 128 printable characters",
        2,
        9,
    ),
    (
        "  - to: anonymous\n    registry: [catalog]\n    description: 5\n",
        "grants[0].description must be a string, got an integer "
        "(put it in quotes to make it a string)",
        4,
        18,
    ),
]


@pytest.mark.parametrize(
    ("grant", "message", "line", "column"),
    GRANT_PROBLEMS,
    ids=[
        "unknown-user",
        "unknown-group",
        "invalid-target",
        "missing-to",
        "both-kinds",
        "neither-kind",
        "missing-actions",
        "unknown-action",
        "empty-actions",
        "empty-repositories",
        "null-repositories",
        "repositories-string",
        "invalid-pattern",
        "unknown-registry-resource",
        "registry-pull",
        "registry-empty-actions",
        "empty-id",
        "description-integer",
    ],
)
def test_load_policy_grant_problem(grant: str, message: str, line: int, column: int) -> None:
    problem = only_problem("grants:\n" + grant)
    assert problem.message == message
    assert problem.line == line
    assert problem.column == column


def test_load_policy_duplicate_grant_id() -> None:
    problem = only_problem(
        "grants:\n"
        "  - id: pull-public\n    to: anonymous\n    registry: [catalog]\n"
        "  - id: pull-public\n    to: anonymous\n    registry: [catalog]\n"
    )
    assert problem.message == "grants[1]: duplicate grant id 'pull-public' (first at line 2)"
    assert (problem.line, problem.column) == (5, 9)


def test_load_policy_default_id_collision() -> None:
    problem = only_problem(
        "grants:\n"
        "  - id: grants[1]\n    to: anonymous\n    registry: [catalog]\n"
        "  - to: anonymous\n    registry: [catalog]\n"
    )
    assert problem.message == "grants[1]: duplicate grant id 'grants[1]' (first at line 2)"
    assert (problem.line, problem.column) == (5, 5)


def test_load_policy_collects_every_problem() -> None:
    problems = problems_of(
        """\
        users:
          - name: Alice
          - name: bob
            password_hash: plain
        groups:
          - name: dev
            members: [user:carol]
        grants:
          - to: group:ops
            repositories: ["Team/**"]
            actions: [pull]
        """
    )
    assert [(problem.line, problem.column) for problem in problems] == [
        (2, 11),
        (4, 20),
        (7, 15),
        (9, 9),
        (10, 20),
    ]


def test_load_policy_problems_in_file_order() -> None:
    # Grants are read after groups whatever their place in the file, yet problems are
    # reported in file order.
    problems = problems_of(
        "grants:\n  - to: user:nobody\n    registry: [catalog]\ngroups:\n  - name: Bad\n"
    )
    assert [problem.line for problem in problems] == [2, 5]


# Compiling --------------------------------------------------------------------------


def test_compile_policy_principal_names() -> None:
    compiled = compile_policy(load_policy(BRIEF_POLICY))
    assert [principal.name for principal in compiled.principals] == [
        "anonymous",
        "user:alice",
        "user:ops",
    ]


def test_compile_policy_anonymous_has_no_password() -> None:
    compiled = compile_policy(load_policy(BRIEF_POLICY))
    anonymous = principal_named(compiled, "anonymous")
    assert anonymous.password_hash is None
    assert anonymous.grants == (Grant("repository", "public/*", frozenset({"pull"}), "grants[1]"),)


def test_compile_policy_user_grants() -> None:
    compiled = compile_policy(load_policy(BRIEF_POLICY))
    alice = principal_named(compiled, "user:alice")
    assert alice.password_hash == ARGON2_HASH
    assert alice.grants == (
        Grant("repository", "team/**", frozenset({"pull", "push"}), "grants[0]"),
        Grant("repository", "public/*", frozenset({"pull"}), "grants[1]"),
    )


def test_compile_policy_registry_grant() -> None:
    compiled = compile_policy(load_policy(BRIEF_POLICY))
    ops = principal_named(compiled, "user:ops")
    assert ops.grants == (
        Grant("repository", "public/*", frozenset({"pull"}), "grants[1]"),
        Grant("registry", "catalog", frozenset({"*"}), "grants[2]"),
    )


def test_compile_policy_disabled_user() -> None:
    compiled = compile_policy(load_policy("users:\n  - name: carol\n    disabled: yes\n"))
    assert principal_named(compiled, "user:carol").disabled is True


NESTED_POLICY = """\
users:
  - name: alice
  - name: bob
  - name: carol
groups:
  - name: everyone
    members: [group:staff]
  - name: staff
    members: [group:developers, user:bob]
  - name: developers
    members: [user:alice]
grants:
  - id: own
    to: user:alice
    repositories: ["alice/**"]
    actions: ["*"]
  - id: developers
    to: group:developers
    repositories: ["team/**", "tools/*"]
    actions: [pull, push]
  - id: staff
    to: group:staff
    repositories: ["team/**"]
    actions: [pull]
  - id: everyone
    to: group:everyone
    repositories: ["docs/*"]
    actions: [pull]
  - id: developers-again
    to: group:developers
    repositories: ["tools/*"]
    actions: [push, pull]
  - id: floor
    to: anonymous
    repositories: ["public/*"]
    actions: [pull]
"""


def test_compile_policy_nested_groups() -> None:
    compiled = compile_policy(load_policy(NESTED_POLICY))
    alice = principal_named(compiled, "user:alice")
    assert [(grant.pattern, grant.rule_id) for grant in alice.grants] == [
        ("alice/**", "own"),
        ("team/**", "developers"),
        ("tools/*", "developers"),
        ("team/**", "staff"),
        ("docs/*", "everyone"),
        ("public/*", "floor"),
    ]


def test_compile_policy_outer_group_member() -> None:
    compiled = compile_policy(load_policy(NESTED_POLICY))
    bob = principal_named(compiled, "user:bob")
    assert [grant.rule_id for grant in bob.grants] == ["staff", "everyone", "floor"]


def test_compile_policy_anonymous_floor() -> None:
    compiled = compile_policy(load_policy(NESTED_POLICY))
    carol = principal_named(compiled, "user:carol")
    assert carol.grants == (Grant("repository", "public/*", frozenset({"pull"}), "floor"),)


def test_compile_policy_deduplicates() -> None:
    # `developers-again` repeats `tools/*` with the same actions, so only the first
    # grant of that pattern remains.
    compiled = compile_policy(load_policy(NESTED_POLICY))
    alice = principal_named(compiled, "user:alice")
    rule_ids = [grant.rule_id for grant in alice.grants]
    assert "developers-again" not in rule_ids


def test_compile_policy_version_is_sha256_hex() -> None:
    version = compile_policy(load_policy(BRIEF_POLICY)).version
    assert len(version) == 64
    assert set(version) <= set("0123456789abcdef")


def test_compile_policy_version_deterministic() -> None:
    first = compile_policy(load_policy(BRIEF_POLICY))
    second = compile_policy(load_policy(BRIEF_POLICY))
    assert first.version == second.version


def test_compile_policy_version_ignores_formatting() -> None:
    reformatted = "# A comment changes nothing.\n" + BRIEF_POLICY.replace(
        "members: [user:alice]", "members:\n      - 'user:alice'"
    )
    original = compile_policy(load_policy(BRIEF_POLICY)).version
    assert compile_policy(load_policy(reformatted)).version == original


def test_compile_policy_version_changes_with_content() -> None:
    changed = BRIEF_POLICY.replace("actions: [pull, push]", "actions: [pull]")
    original = compile_policy(load_policy(BRIEF_POLICY)).version
    assert compile_policy(load_policy(changed)).version != original


def test_compile_policy_version_changes_with_hash() -> None:
    changed = BRIEF_POLICY.replace(BCRYPT_HASH, "$2b$" + BCRYPT_HASH.removeprefix("$2y$"))
    original = compile_policy(load_policy(BRIEF_POLICY)).version
    assert compile_policy(load_policy(changed)).version != original


def test_compile_policy_version_on_principals() -> None:
    compiled = compile_policy(load_policy(BRIEF_POLICY))
    versions = {principal.policy_version for principal in compiled.principals}
    assert versions == {compiled.version}


def test_compile_policy_empty() -> None:
    compiled = compile_policy(Policy())
    assert compiled.principals == (
        Principal(name="anonymous", grants=(), policy_version=compiled.version),
    )


def test_compile_policy_cycle_terminates() -> None:
    policy = Policy(
        users=(PolicyUser("alice"),),
        groups=(PolicyGroup("a", ("group:b", "user:alice")), PolicyGroup("b", ("group:a",))),
        grants=(PolicyGrant("g", "group:b", "repository", ("x/*",), frozenset({"pull"})),),
    )
    alice = principal_named(compile_policy(policy), "user:alice")
    assert [grant.rule_id for grant in alice.grants] == ["g"]


# Authorizing ------------------------------------------------------------------------

AUTHORIZE_CASES = [
    # (grants, requested scopes, expected actions per entry)
    ([("team/**", "pull", "push")], [("team/app", "pull", "push")], [("pull", "push")]),
    ([("team/**", "pull")], [("team/app", "pull", "push")], [("pull",)]),
    ([("team/**", "pull")], [("other/app", "pull")], [()]),
    ([("team/*", "pull")], [("team/app/web", "pull")], [()]),
    ([("team/**", "*")], [("team/app", "pull", "push", "delete")], [("pull", "push", "delete")]),
    ([("team/**", "*")], [("team/app", "*")], [("*",)]),
    ([("team/**", "pull", "push", "delete")], [("team/app", "*")], [()]),
    ([("team/**", "pull", "push", "delete")], [("team/app", "*", "pull")], [("pull",)]),
    (
        [("team/**", "pull"), ("team/app", "push")],
        [("team/app", "push", "pull")],
        [("pull", "push")],
    ),
    ([("team/**", "pull")], [("team/app",)], [()]),
    ([], [("team/app", "pull")], [()]),
    ([("**", "pull")], [("team/app", "pull"), ("a", "pull")], [("pull",), ("pull",)]),
    ([("**", "*")], [("team/app", "push", "frobnicate")], [("push",)]),
    ([("**", "pull")], [("Team/App", "pull")], [()]),
]


@pytest.mark.parametrize(
    ("grants", "requested", "expected"),
    AUTHORIZE_CASES,
    ids=[
        "exact",
        "intersection",
        "no-match",
        "star-one-segment",
        "star-action-satisfies-each",
        "star-action-satisfies-star",
        "star-needs-star-grant",
        "star-dropped-pull-kept",
        "union-of-grants",
        "no-actions-requested",
        "no-grants",
        "two-resources",
        "unknown-action",
        "invalid-name",
    ],
)
def test_authorize_repository_table(
    grants: list[tuple[str, ...]],
    requested: list[tuple[str, ...]],
    expected: list[tuple[str, ...]],
) -> None:
    principal = principal_with(
        *(repository_grant(pattern, *actions) for pattern, *actions in grants)
    )
    scopes = [scope("repository", name, *actions) for name, *actions in requested]

    entries = authorize(principal, scopes)

    assert [entry.actions for entry in entries] == expected


def test_authorize_merges_duplicate_scopes() -> None:
    principal = principal_with(repository_grant("team/**", "pull", "push"))
    scopes = [
        scope("repository", "team/a", "pull"),
        scope("repository", "team/b", "pull"),
        scope("repository", "team/a", "push"),
    ]
    assert authorize(principal, scopes) == (
        AccessEntry("repository", "team/a", ("pull", "push")),
        AccessEntry("repository", "team/b", ("pull",)),
    )


def test_authorize_first_request_order() -> None:
    principal = principal_with(repository_grant("**", "pull"))
    names = ["z/app", "a/app", "m/app"]
    entries = authorize(principal, [scope("repository", name, "pull") for name in names])
    assert [entry.name for entry in entries] == names


def test_authorize_no_scopes() -> None:
    assert authorize(principal_with(repository_grant("**", "*")), []) == ()


def test_authorize_catalog_granted() -> None:
    principal = principal_with(Grant("registry", "catalog", frozenset({"*"}), "ops"))
    assert authorize(principal, [scope("registry", "catalog", "*")]) == (
        AccessEntry("registry", "catalog", ("*",)),
    )


def test_authorize_catalog_needs_registry_grant() -> None:
    # `**` with `*` covers every repository but is not a registry grant.
    principal = principal_with(repository_grant("**", "*"))
    assert authorize(principal, [scope("registry", "catalog", "*")]) == (
        AccessEntry("registry", "catalog", ()),
    )


def test_authorize_registry_grant_scope() -> None:
    principal = principal_with(Grant("registry", "catalog", frozenset({"*"}), "ops"))
    assert authorize(principal, [scope("repository", "catalog", "pull")]) == (
        AccessEntry("repository", "catalog", ()),
    )


def test_authorize_unknown_type() -> None:
    principal = principal_with(repository_grant("**", "*"))
    assert authorize(principal, [scope("plugin", "team/app", "pull")]) == (
        AccessEntry("plugin", "team/app", ()),
    )


def test_authorize_with_reasons_dropped() -> None:
    principal = principal_with(repository_grant("team/**", "pull"))
    scopes = [
        scope("repository", "team/app", "pull", "push", "delete"),
        scope("repository", "team/app", "frobnicate"),
        scope("plugin", "team/app", "pull"),
    ]

    entries, dropped = authorize_with_reasons(principal, scopes)

    assert entries == (
        AccessEntry("repository", "team/app", ("pull",)),
        AccessEntry("plugin", "team/app", ()),
    )
    assert dropped == (
        Dropped("repository", "team/app", "push", NO_MATCHING_GRANT),
        Dropped("repository", "team/app", "delete", NO_MATCHING_GRANT),
        Dropped("repository", "team/app", "frobnicate", UNKNOWN_ACTION),
        Dropped("plugin", "team/app", "pull", UNSUPPORTED_TYPE),
    )


def test_authorize_with_reasons_nothing_dropped() -> None:
    principal = principal_with(repository_grant("team/**", "pull"))
    _, dropped = authorize_with_reasons(principal, [scope("repository", "team/app", "pull")])
    assert dropped == ()


class ExampleCase(NamedTuple):
    principal: str
    resource_type: str
    name: str
    requested: tuple[str, ...]
    granted: tuple[str, ...]


EXAMPLE_CASES = [
    ExampleCase("user:alice", "repository", "team/app", ("pull", "push"), ("pull", "push")),
    ExampleCase(
        "user:alice", "repository", "team/app/web", ("pull", "push", "delete"), ("pull", "push")
    ),
    ExampleCase("user:alice", "repository", "public/base", ("pull", "push"), ("pull", "push")),
    ExampleCase("user:bob", "repository", "team/app", ("pull", "push"), ("pull",)),
    ExampleCase("user:carol", "repository", "team/app", ("pull",), ()),
    ExampleCase("user:carol", "repository", "public/base", ("pull",), ("pull",)),
    ExampleCase("user:ops", "registry", "catalog", ("*",), ("*",)),
    ExampleCase("user:ops", "repository", "any/where/app", ("pull", "push"), ("pull",)),
    ExampleCase("user:alice", "registry", "catalog", ("*",), ()),
    ExampleCase("anonymous", "repository", "public/base", ("pull", "push"), ("pull",)),
    ExampleCase("anonymous", "repository", "public/a/b", ("pull",), ()),
    ExampleCase("anonymous", "repository", "team/app", ("pull",), ()),
]


@pytest.fixture(scope="module")
def example_compiled() -> CompiledPolicy:
    return compile_policy(load_policy(EXAMPLE_POLICY.read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    "case",
    EXAMPLE_CASES,
    ids=[f"{case.principal}|{case.name}|{'+'.join(case.requested)}" for case in EXAMPLE_CASES],
)
def test_authorize_example_policy(example_compiled: CompiledPolicy, case: ExampleCase) -> None:
    principal = principal_named(example_compiled, case.principal)
    requested = scope(case.resource_type, case.name, *case.requested)

    entries = authorize(principal, [requested])

    assert entries == (AccessEntry(case.resource_type, case.name, case.granted),)


def test_load_policy_reports_placeholder_with_other_problems() -> None:
    text = (
        "users:\n"
        "  - name: alice\n"
        "    pasword_hash: x\n"
        "grants:\n"
        "  - to: anonymous\n"
        "    repositories: ['users/{name}/**']\n"
        "    actions: [pull]\n"
    )
    messages = [problem.message for problem in problems_of(text)]
    assert len(messages) == 2
    assert "pasword_hash" in messages[0]
    assert "{name} cannot be used in a grant to 'anonymous'" in messages[1]
