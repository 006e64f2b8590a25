"""Policies: the parsed file's records, compiling them into principals, authorizing scopes.

`regauth.policy_file` reads and validates policy files and describes their format.
This module turns a `Policy` into one `Principal` per identity (`compile_policy`) and
decides requested actions against a principal's compiled rules (`authorize`,
`explain`, `decide`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from regauth.iam import RoleMap
from regauth.models import (
    ALL_ACTIONS,
    ANONYMOUS,
    CATALOG,
    DELETE,
    PULL,
    PUSH,
    REGISTRY,
    REPOSITORY,
    AccessEntry,
    Grant,
    Principal,
    Scope,
    sort_actions,
)
from regauth.patterns import (
    pattern_matches,
    substitute_name,
)

FORMAT_VERSION = 1

USER_PREFIX = "user:"
HOST_PREFIX = "host:"
ROLE_PREFIX = "role:"
GROUP_PREFIX = "group:"
# The target of a deny that applies to every principal, `anonymous` included.
EVERYONE = "everyone"
# The key under which compiling indexes grants to anonymous, which reach everyone.
_FLOOR = " floor"

REPOSITORY_ACTIONS = (PULL, PUSH, DELETE, ALL_ACTIONS)
REGISTRY_RESOURCES = (CATALOG,)

# Reasons recorded in `Dropped` for the audit record.
NO_MATCHING_GRANT = "no grant matches"
UNKNOWN_ACTION = "unknown action"
UNSUPPORTED_TYPE = "unsupported resource type"
DENIED = "denied by a rule"
CONDITION_FAILED = "a matching grant's condition failed"


@dataclass(frozen=True, slots=True)
class PolicyUser:
    """A user entry of a policy file."""

    name: str
    password_hash: str | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class PolicyHost:
    """A host entry: a machine that authenticates with an API key set by an admin."""

    name: str
    description: str = ""
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class PolicyRole:
    """A role entry: callers whose verified AWS IAM ARN matches one of `arns`."""

    name: str
    arns: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class PolicyGroup:
    """A group entry. `members` contains `user:`, `host:`, `role:` and `group:` references."""

    name: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyGrant:
    """A grant entry, or a deny entry when `effect` is deny.

    `resources` contains repository patterns when `type` is `repository`, and registry
    resource names such as `catalog` when `type` is `registry`. `excluded` lists the
    principals and groups a deny leaves out. Grants may carry conditions:
    `source_ips` (CIDR ranges) and `not_before`/`not_after` (Unix seconds).
    """

    id: str
    to: str
    type: Literal["repository", "registry"]
    resources: tuple[str, ...]
    actions: frozenset[str]
    description: str = ""
    effect: Literal["allow", "deny"] = "allow"
    excluded: tuple[str, ...] = ()
    source_ips: tuple[str, ...] = ()
    not_before: int | None = None
    not_after: int | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed and validated policy file."""

    users: tuple[PolicyUser, ...] = ()
    groups: tuple[PolicyGroup, ...] = ()
    grants: tuple[PolicyGrant, ...] = ()
    hosts: tuple[PolicyHost, ...] = ()
    denies: tuple[PolicyGrant, ...] = ()
    roles: tuple[PolicyRole, ...] = ()

    def descriptions(self) -> dict[str, str]:
        """Map each rule id to its description, for explanations."""
        return {rule.id: rule.description for rule in (*self.grants, *self.denies)}


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """Principals ready to store, with the policy version they were compiled from.

    `version` is the SHA-256 hex digest of the policy's canonical JSON form, so the same
    content gives the same version however the YAML was formatted or commented.
    """

    version: str
    principals: tuple[Principal, ...]
    # Rule id to description, for explanations: compiled grants carry only the id.
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def role_map(self) -> RoleMap:
        """Return the roles' ARN patterns, which IAM sign-in resolves caller ARNs with."""
        return RoleMap(
            tuple(
                (principal.name, principal.arn_patterns)
                for principal in self.principals
                if principal.arn_patterns
            )
        )


@dataclass(frozen=True, slots=True)
class RuleEvaluation:
    """The part one rule played in a decision on one requested action.

    `applied` is true when the rule's resource, action and conditions all matched the
    request, and `detail` states what matched or which condition failed.
    """

    rule_id: str
    effect: Literal["allow", "deny"]
    pattern: str
    applied: bool
    detail: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one requested action is granted, and every rule that decided it."""

    type: str
    name: str
    action: str
    granted: bool
    reason: str
    rules: tuple[RuleEvaluation, ...] = ()


@dataclass(frozen=True, slots=True)
class Dropped:
    """A requested action that was not granted, and why, for the audit record."""

    type: str
    name: str
    action: str
    reason: str
    rules: tuple[RuleEvaluation, ...] = ()


# Compiling -------------------------------------------------------------------------


def _rule_to_canonical(rule: PolicyGrant) -> dict[str, object]:
    canonical: dict[str, object] = {
        "id": rule.id,
        "to": rule.to,
        "type": rule.type,
        "resources": list(rule.resources),
        "actions": list(sort_actions(rule.actions)),
        "description": rule.description,
    }
    # Keys of the first format are written only when set, so that a policy without
    # them keeps the version it had before they existed.
    if rule.excluded:
        canonical["except"] = list(rule.excluded)
    if rule.source_ips:
        canonical["source_ips"] = list(rule.source_ips)
    if rule.not_before is not None:
        canonical["not_before"] = rule.not_before
    if rule.not_after is not None:
        canonical["not_after"] = rule.not_after
    return canonical


def policy_version(policy: Policy) -> str:
    """Return the SHA-256 hex digest of the policy's canonical JSON form."""
    canonical: dict[str, object] = {
        "format": FORMAT_VERSION,
        "users": [
            {"name": user.name, "password_hash": user.password_hash, "disabled": user.disabled}
            for user in policy.users
        ],
        "groups": [{"name": group.name, "members": list(group.members)} for group in policy.groups],
        "grants": [_rule_to_canonical(grant) for grant in policy.grants],
    }
    if policy.hosts:
        canonical["hosts"] = [
            {"name": host.name, "description": host.description, "disabled": host.disabled}
            for host in policy.hosts
        ]
    if policy.denies:
        canonical["denies"] = [_rule_to_canonical(deny) for deny in policy.denies]
    if policy.roles:
        canonical["roles"] = [
            {"name": role.name, "arns": list(role.arns), "description": role.description}
            for role in policy.roles
        ]
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile a policy into one principal for `anonymous`, each user, host and role.

    Each principal's grants are its own, those of every group it belongs to directly or
    through nested groups, and those to `anonymous`, followed by the denies that reach
    it. They are in file order, then in the order of each rule's resources, with `{name}`
    replaced, and a rule equal to one already present is left out. The principals are
    `anonymous` first, then the users, the hosts and the roles, in file order. A role's
    principal carries its ARN patterns. `policy` is
    expected to come from `load_policy`, which rejects unknown members and cycles.
    """
    version = policy_version(policy)
    parents = parent_groups(policy)
    accounts: dict[str, tuple[str | None, bool]] = {ANONYMOUS: (None, False)}
    for user in policy.users:
        accounts[f"{USER_PREFIX}{user.name}"] = (user.password_hash, user.disabled)
    for host in policy.hosts:
        accounts[f"{HOST_PREFIX}{host.name}"] = (None, host.disabled)
    arn_patterns = {f"{ROLE_PREFIX}{role.name}": role.arns for role in policy.roles}
    for name in arn_patterns:
        accounts[name] = (None, False)

    rules_by_target = _index_rules(policy)
    principals = []
    for name in principal_names(policy):
        password_hash, disabled = accounts[name]
        principal = Principal(
            name=name,
            grants=_rules_for(rules_by_target, name, parents),
            password_hash=password_hash,
            disabled=disabled,
            policy_version=version,
            arn_patterns=arn_patterns.get(name, ()),
        )
        principals.append(principal)
    return CompiledPolicy(
        version=version, principals=tuple(principals), descriptions=policy.descriptions()
    )


def principal_names(policy: Policy) -> list[str]:
    names = [ANONYMOUS]
    names += [f"{USER_PREFIX}{user.name}" for user in policy.users]
    names += [f"{HOST_PREFIX}{host.name}" for host in policy.hosts]
    names += [f"{ROLE_PREFIX}{role.name}" for role in policy.roles]
    return names


def own_name(principal: str) -> str:
    """Return the value of `{name}` for a principal: its name without the kind prefix."""
    return principal.partition(":")[2] or principal


def rule_reaches(
    target: str, excluded: Sequence[str], principal: str, parents: dict[str, list[str]]
) -> bool:
    """Return whether a rule to `target` that leaves out `excluded` applies to `principal`.

    This is the rule's own reach: the anonymous floor of grants is added by the caller.
    """
    memberships = {principal} | _groups_of(principal, parents)
    if any(entry in memberships for entry in excluded):
        return False
    return target == EVERYONE or target in memberships


def _rules_for(
    rules_by_target: Mapping[str, list[tuple[int, PolicyGrant]]],
    principal: str,
    parents: dict[str, list[str]],
) -> tuple[Grant, ...]:
    bare_name = own_name(principal)
    memberships = {principal} | _groups_of(principal, parents)
    # Grants to anonymous are a floor for every principal, and denies to anonymous
    # only reach unauthenticated requests.
    candidates = [*rules_by_target.get(EVERYONE, []), *rules_by_target.get(_FLOOR, [])]
    for target in memberships:
        candidates += rules_by_target.get(target, [])
    compiled: list[Grant] = []
    # A rule equal to an earlier one except for its id adds nothing.
    seen: set[Grant] = set()

    # Sorting by position restores file order, grants before denies.
    for _, rule in sorted(candidates, key=lambda candidate: candidate[0]):
        if any(entry in memberships for entry in rule.excluded):
            continue
        for resource in rule.resources:
            pattern = substitute_name(resource, bare_name) if rule.type == REPOSITORY else resource
            grant = Grant(
                type=rule.type,
                pattern=pattern,
                actions=rule.actions,
                rule_id=rule.id,
                effect=rule.effect,
                source_ips=rule.source_ips,
                not_before=rule.not_before,
                not_after=rule.not_after,
            )
            key = replace(grant, rule_id="")
            if key not in seen:
                seen.add(key)
                compiled.append(grant)
    return tuple(compiled)


def _index_rules(policy: Policy) -> dict[str, list[tuple[int, PolicyGrant]]]:
    """Map each target to its rules with their position, so compiling reads only those."""
    index: dict[str, list[tuple[int, PolicyGrant]]] = {}
    for position, rule in enumerate((*policy.grants, *policy.denies)):
        target = _FLOOR if rule.effect == "allow" and rule.to == ANONYMOUS else rule.to
        index.setdefault(target, []).append((position, rule))
    return index


def parent_groups(policy: Policy) -> dict[str, list[str]]:
    """Map each member reference to the `group:NAME` references that list it."""
    parents: dict[str, list[str]] = {}
    for group in policy.groups:
        for member in group.members:
            parents.setdefault(member, []).append(f"{GROUP_PREFIX}{group.name}")
    return parents


def _groups_of(member: str, parents: dict[str, list[str]]) -> set[str]:
    """Return every group `member` belongs to, directly or through nested groups."""
    found: set[str] = set()
    pending = list(parents.get(member, []))
    while pending:
        group = pending.pop()
        # The check on `found` also ends the walk on a cycle in a hand-built Policy.
        if group not in found:
            found.add(group)
            pending.extend(parents.get(group, []))
    return found


# Authorizing -----------------------------------------------------------------------


def authorize(principal: Principal, scopes: Sequence[Scope]) -> tuple[AccessEntry, ...]:
    """Return the access entries to put in a token: requested actions that are granted.

    See `authorize_with_reasons`, which also returns the actions that were dropped.
    Conditions are checked against the current time and no source address.
    """
    entries, _ = authorize_with_reasons(principal, scopes)
    return entries


def authorize_with_reasons(
    principal: Principal,
    scopes: Sequence[Scope],
    *,
    source_ip: str = "",
    now: int | None = None,
) -> tuple[tuple[AccessEntry, ...], tuple[Dropped, ...]]:
    """Intersect the requested scopes with the principal's grants, minus its denies.

    Scopes for the same type and name are merged, and each distinct resource gets one
    entry in first-request order, with its actions in canonical order and possibly
    none: the token specification requires a token with fewer rights, not an error.
    Every requested action that is not granted is returned as a `Dropped` with its
    reason and the rules that decided it. See `explain` for the rules of a decision.
    """
    requested: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        requested.setdefault((scope.type, scope.name), set()).update(scope.actions)

    moment = int(time.time()) if now is None else now
    entries: list[AccessEntry] = []
    dropped: list[Dropped] = []
    for (resource_type, name), actions in requested.items():
        allowed = set()
        for action in sort_actions(actions):
            decision = decide(
                principal, resource_type, name, action, source_ip=source_ip, now=moment
            )
            if decision.granted:
                allowed.add(action)
            else:
                dropped.append(
                    Dropped(resource_type, name, action, decision.reason, decision.rules)
                )
        entries.append(AccessEntry(resource_type, name, sort_actions(allowed)))
    return tuple(entries), tuple(dropped)


def explain(
    principal: Principal,
    scopes: Sequence[Scope],
    *,
    source_ip: str = "",
    now: int | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> tuple[Decision, ...]:
    """Decide each requested action and list every rule that decided it.

    Uses the same rules as `authorize_with_reasons`, so an explanation always agrees
    with the token. `descriptions` maps rule ids to their descriptions, which compiled
    grants do not carry.
    """
    moment = int(time.time()) if now is None else now
    decisions = []
    seen: set[tuple[str, str, str]] = set()
    for scope in scopes:
        for action in sort_actions(scope.actions):
            key = (scope.type, scope.name, action)
            if key in seen:
                continue
            seen.add(key)
            decision = decide(
                principal, scope.type, scope.name, action, source_ip=source_ip, now=moment
            )
            if descriptions:
                rules = tuple(
                    replace(rule, description=descriptions.get(rule.rule_id, ""))
                    for rule in decision.rules
                )
                decision = replace(decision, rules=rules)
            decisions.append(decision)
    return tuple(decisions)


def decide(
    principal: Principal, resource_type: str, name: str, action: str, *, source_ip: str, now: int
) -> Decision:
    """Decide one requested action.

    An action is granted when a grant covers it and no deny does. A grant covers it
    when its resource matches and all its conditions hold, and a granted `*` satisfies
    `pull`, `push`, `delete` and `*`, but a requested `*` needs a grant of `*` itself.
    A deny covers an action it lists, every action when it lists `*`, and a requested
    `*` when it lists any action. The order of the rules never matters.
    """
    if resource_type not in (REPOSITORY, REGISTRY):
        return Decision(resource_type, name, action, False, UNSUPPORTED_TYPE)
    if action not in REPOSITORY_ACTIONS:
        return Decision(resource_type, name, action, False, UNKNOWN_ACTION)

    allows: list[RuleEvaluation] = []
    denies: list[RuleEvaluation] = []
    for grant in principal.grants:
        if grant.type != resource_type or not _resource_matches(grant, name):
            continue
        if grant.effect == "deny":
            if _deny_covers(action, grant.actions):
                detail = f"deny of {', '.join(sort_actions(grant.actions))} on {grant.pattern!r}"
                denies.append(RuleEvaluation(grant.rule_id, "deny", grant.pattern, True, detail))
        elif _is_satisfied(action, grant.actions):
            allows.append(_evaluate_conditions(grant, source_ip, now))

    if denies:
        return Decision(resource_type, name, action, False, DENIED, (*denies, *allows))
    applied = tuple(rule for rule in allows if rule.applied)
    if applied:
        return Decision(resource_type, name, action, True, "granted", applied)
    if allows:
        return Decision(resource_type, name, action, False, CONDITION_FAILED, tuple(allows))
    return Decision(resource_type, name, action, False, NO_MATCHING_GRANT)


def _resource_matches(grant: Grant, name: str) -> bool:
    if grant.type == REPOSITORY:
        return pattern_matches(grant.pattern, name)
    return grant.pattern == name


def _deny_covers(action: str, denied: frozenset[str]) -> bool:
    if action == ALL_ACTIONS:
        return bool(denied)
    return action in denied or ALL_ACTIONS in denied


def _evaluate_conditions(grant: Grant, source_ip: str, now: int) -> RuleEvaluation:
    def result(applied: bool, detail: str) -> RuleEvaluation:
        return RuleEvaluation(grant.rule_id, "allow", grant.pattern, applied, detail)

    if grant.not_before is not None and now < grant.not_before:
        return result(False, f"not_before {_rfc3339(grant.not_before)} has not been reached")
    if grant.not_after is not None and now > grant.not_after:
        return result(False, f"not_after {_rfc3339(grant.not_after)} has passed")
    if grant.source_ips and not _address_in(source_ip, grant.source_ips):
        address = source_ip or "unknown"
        ranges = ", ".join(grant.source_ips)
        return result(False, f"source address {address} is not in {ranges}")
    return result(True, f"{grant.pattern!r} grants {', '.join(sort_actions(grant.actions))}")


def _rfc3339(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=1024)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def _address_in(source_ip: str, ranges: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    # An IPv4 client seen through an IPv6 socket arrives as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in _network(cidr) for cidr in ranges)


def _is_satisfied(action: str, granted: frozenset[str]) -> bool:
    if action == ALL_ACTIONS:
        return ALL_ACTIONS in granted
    if action in (PULL, PUSH, DELETE):
        return action in granted or ALL_ACTIONS in granted
    return False
