"""Policy `roles`: IAM principal ARN patterns mapped to `role:NAME` principals."""

from __future__ import annotations

import json

import pytest

from regauth.errors import PolicyError, PolicyProblem
from regauth.iam import RoleMap
from regauth.models import Principal
from regauth.policy import CompiledPolicy, compile_policy, policy_version
from regauth.policy_diff import diff_policies, format_diff
from regauth.policy_file import load_policy
from regauth.roles import RoleMapCache
from regauth.stores import decode_role_map, encode_role_map, principal_from_items, version_entry

ACCOUNT = "111122223333"
CI_ARN = f"arn:aws:iam::{ACCOUNT}:role/ci-*"

POLICY = f"""\
roles:
  - name: partner-ci
    description: Partner CI
    arns: ["{CI_ARN}", "arn:aws:iam::{ACCOUNT}:user/robot"]
  - name: partner-all
    arns: ["arn:aws:iam::444455556666:*"]
groups:
  - name: partners
    members: [role:partner-ci]
grants:
  - id: partner-pull
    to: group:partners
    repositories: ["partner/*"]
    actions: [pull]
  - id: own
    to: role:partner-all
    repositories: ["vendors/{{name}}/*"]
    actions: [pull, push]
denies:
  - id: no-delete
    to: everyone
    except: [role:partner-all]
    repositories: ["**"]
    actions: [delete]
"""

# A file of the format before roles existed, and its content hash as that code
# computed it: adding roles must not change the version of such a file.
OLD_POLICY = """\
users:
  - name: alice
hosts:
  - name: ci-runner
groups:
  - name: dev
    members: [user:alice, host:ci-runner]
grants:
  - to: group:dev
    repositories: ["team/**"]
    actions: [pull]
"""
OLD_POLICY_VERSION = "f7762b53c0710629bfdc06efa9a165d483b383685c83c9db05c69cf94c18160a"


def problems_of(text: str) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    return list(caught.value.problems)


def principal_named(compiled: CompiledPolicy, name: str) -> Principal:
    return next(principal for principal in compiled.principals if principal.name == name)


def test_roles_loaded() -> None:
    role = load_policy(POLICY).roles[0]
    assert (role.name, role.description) == ("partner-ci", "Partner CI")
    assert role.arns == (CI_ARN, f"arn:aws:iam::{ACCOUNT}:user/robot")


def test_roles_compiled_with_patterns() -> None:
    principal = principal_named(compile_policy(load_policy(POLICY)), "role:partner-ci")
    assert principal.arn_patterns == (CI_ARN, f"arn:aws:iam::{ACCOUNT}:user/robot")


def test_roles_grant_through_group() -> None:
    principal = principal_named(compile_policy(load_policy(POLICY)), "role:partner-ci")
    allowed = [grant.rule_id for grant in principal.grants if grant.effect == "allow"]
    assert allowed == ["partner-pull"]


def test_roles_excluded_from_deny() -> None:
    principal = principal_named(compile_policy(load_policy(POLICY)), "role:partner-all")
    assert [grant.rule_id for grant in principal.grants] == ["own"]


def test_roles_name_placeholder() -> None:
    principal = principal_named(compile_policy(load_policy(POLICY)), "role:partner-all")
    assert principal.grants[0].pattern == "vendors/partner-all/*"


def test_roles_principal_order() -> None:
    names = [principal.name for principal in compile_policy(load_policy(POLICY)).principals]
    assert names == ["anonymous", "role:partner-ci", "role:partner-all"]


def test_roles_role_map() -> None:
    role_map = compile_policy(load_policy(POLICY)).role_map()
    assert role_map.resolve(f"arn:aws:iam::{ACCOUNT}:role/ci-build") == "role:partner-ci"


def test_roles_role_map_whole_account() -> None:
    role_map = compile_policy(load_policy(POLICY)).role_map()
    assert role_map.resolve("arn:aws:iam::444455556666:role/any/path") == "role:partner-all"


def test_roles_display_name() -> None:
    assert Principal("role:partner-ci", ()).display_name == "role/partner-ci"


def test_roles_old_policy_version_kept() -> None:
    assert policy_version(load_policy(OLD_POLICY)) == OLD_POLICY_VERSION


def test_roles_empty_section_version_kept() -> None:
    assert policy_version(load_policy(OLD_POLICY + "roles: []\n")) == OLD_POLICY_VERSION


def test_roles_change_version() -> None:
    changed = POLICY.replace("ci-*", "ci-build")
    assert policy_version(load_policy(changed)) != policy_version(load_policy(POLICY))


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        (
            "roles:\n  - name: ci\n    arns: ['arn:aws:iam::*:role/ci']\n",
            "roles[0].arns[0]: invalid ARN pattern 'arn:aws:iam::*:role/ci': use "
            "arn:aws:iam::ACCOUNT:role/NAME, arn:aws:iam::ACCOUNT:user/NAME or "
            "arn:aws:iam::ACCOUNT:* with a 12-digit account",
            3,
            12,
        ),
        (
            "roles:\n  - name: ci\n",
            "roles[0] is missing the required key 'arns'",
            2,
            5,
        ),
        (
            "roles:\n  - name: ci\n    arns: []\n",
            "roles[0].arns is empty: list at least one value",
            3,
            11,
        ),
        (
            f"roles:\n  - name: Ci\n    arns: ['{CI_ARN}']\n",
            "roles[0].name: invalid role name 'Ci': use 1 to 64 lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit",
            2,
            11,
        ),
        (
            f"roles:\n  - name: ci\n    arns: ['{CI_ARN}']\n"
            f"  - name: ci\n    arns: ['{CI_ARN}x']\n",
            "roles[1].name: duplicate role name 'ci' (first at line 2)",
            4,
            11,
        ),
        (
            f"roles:\n  - name: a\n    arns: ['{CI_ARN}']\n  - name: b\n    arns: ['{CI_ARN}']\n",
            f"roles[1].arns[0]: duplicate ARN pattern '{CI_ARN}' (first at line 3)",
            5,
            12,
        ),
        (
            f"roles:\n  - name: ci\n    arns: ['{CI_ARN}']\n    policy: x\n",
            "unknown key 'policy' in roles[0] (allowed: name, arns, description)",
            4,
            5,
        ),
        (
            "grants:\n  - to: role:ci\n    repositories: [a]\n    actions: [pull]\n",
            "grants[0].to: unknown role 'role:ci': no role named 'ci'",
            2,
            9,
        ),
        (
            "groups:\n  - name: g\n    members: [role:ci]\n",
            "groups[0].members[0]: unknown member 'role:ci': no role named 'ci'",
            3,
            15,
        ),
    ],
    ids=[
        "wildcard-account",
        "missing-arns",
        "empty-arns",
        "invalid-name",
        "duplicate-name",
        "duplicate-arn",
        "unknown-key",
        "unknown-target",
        "unknown-member",
    ],
)
def test_roles_rejected(text: str, message: str, line: int, column: int) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].message == message
    assert (problems[0].line, problems[0].column) == (line, column)


def test_roles_diff_lists_role_added() -> None:
    diff = diff_policies(
        load_policy(OLD_POLICY), load_policy(OLD_POLICY + POLICY[: POLICY.index("groups:")])
    )
    assert diff.added == ("role:partner-ci", "role:partner-all")


def test_roles_diff_lists_arns() -> None:
    changed = POLICY.replace("ci-*", "ci-build")
    text = format_diff(diff_policies(load_policy(POLICY), load_policy(changed)))
    assert "    + IAM ARN arn:aws:iam::111122223333:role/ci-build" in text.splitlines()
    assert "    - IAM ARN arn:aws:iam::111122223333:role/ci-*" in text.splitlines()


def test_roles_stored_patterns_round_trip() -> None:
    principal = principal_named(compile_policy(load_policy(POLICY)), "role:partner-ci")
    grants = {"versions": json.dumps({"3": version_entry(principal)})}
    loaded = principal_from_items("role:partner-ci", 3, None, grants)
    assert loaded is not None
    assert loaded.arn_patterns == principal.arn_patterns


def test_roles_role_map_round_trip() -> None:
    role_map = compile_policy(load_policy(POLICY)).role_map()
    assert decode_role_map(encode_role_map(role_map)) == role_map


def test_roles_role_map_absent() -> None:
    assert decode_role_map(None) == RoleMap()


class FakeRoleMapStore:
    def __init__(self) -> None:
        self.seq: int | None = 1
        self.maps = {
            1: RoleMap((("role:a", (CI_ARN,)),)),
            2: RoleMap(),
        }
        self.loads: list[int] = []

    def get_policy_seq(self) -> int | None:
        return self.seq

    def get_role_map(self, version: int) -> RoleMap:
        self.loads.append(version)
        return self.maps[version]


def test_role_map_cache_loads_once() -> None:
    store = FakeRoleMapStore()
    cache = RoleMapCache(store)
    cache.latest()
    cache.latest()
    cache.for_version(1)
    assert store.loads == [1]


def test_role_map_cache_switches_version() -> None:
    store = FakeRoleMapStore()
    cache = RoleMapCache(store)
    cache.latest()
    cache.for_version(2)
    assert cache.latest().role_map == RoleMap()


def test_role_map_cache_no_policy() -> None:
    store = FakeRoleMapStore()
    store.seq = None
    assert RoleMapCache(store).latest().version is None


def test_role_map_cache_evicts_oldest() -> None:
    store = FakeRoleMapStore()
    cache = RoleMapCache(store, max_versions=1)
    cache.for_version(1)
    cache.for_version(2)
    cache.for_version(1)
    assert store.loads == [1, 2, 1]
