"""Policy files: load and validate, compile into principals, and authorize scopes.

A policy file is YAML (format version 1)::

    version: 1                      # optional, and 1 is the only version
    users:
      - name: alice
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$..."   # optional
        disabled: false             # optional
    hosts:
      - name: ci-runner             # API keys are set by admin actions, never here
        description: free text      # optional
        disabled: false             # optional
    roles:
      - name: partner-ci            # signs in with a verified AWS IAM identity
        arns: ["arn:aws:iam::111122223333:role/ci-*"]   # IAM principal ARN patterns
        description: free text      # optional
    groups:
      - name: developers
        members: [user:alice, host:ci-runner, role:partner-ci, group:interns]
    grants:
      - id: developers-team         # optional, unique, default `grants[N]`
        description: free text      # optional
        to: group:developers        # `user:NAME`, `host:NAME`, `role:NAME`, `group:NAME`,
                                    # or `anonymous`
        repositories: ["team/**", "users/{name}/**"]   # see `regauth.patterns`
        actions: [pull, push]       # pull, push, delete and `*`
        source_ips: ["10.0.0.0/8"]  # optional: client address ranges (CIDR)
        not_before: 2026-01-01T00:00:00Z   # optional time window, with a time zone
        not_after: 2026-02-01T00:00:00Z
      - to: user:ops
        registry: [catalog]         # `registry:catalog:*`, actions absent or ["*"]
    denies:
      - id: only-release-pushes-prod
        to: everyone                # as in grants, or `everyone`
        except: [group:release]     # optional: principals and groups left out
        repositories: ["prod/**"]
        actions: [push, delete]

Every key is optional except a user's, host's, role's and group's `name`, a role's
`arns`, a rule's `to`, and
exactly one of `repositories` (with `actions`) or `registry` in each rule. Unknown
keys, duplicate keys, YAML aliases and values of the wrong type are rejected.

User names match `[a-z0-9][a-z0-9._@-]{0,63}`: 1 to 64 lower-case letters, digits,
`.`, `_`, `-` and `@` (so that e-mail addresses work), starting with a letter or digit.
Docker sends the user name as typed and the lookup is exact, so upper-case letters
are rejected instead of folded. `anonymous` is reserved for the anonymous principal,
and `aws-iam` for AWS IAM sign-in. Host, role and group names match
`[a-z0-9][a-z0-9._-]{0,63}`. A user, a host and a role may not share a name, because
`{name}` is replaced by the name without its kind. Groups may contain
users, hosts, roles and groups. A principal belongs to every group that lists it or lists a group
it belongs to. Cycles are rejected.

Grants to `anonymous` apply to every request, authenticated or not: what anonymous
clients may do is a floor for every user and host. A deny removes an action whatever
grants it, and `everyone` in a deny means every principal, `anonymous` included. A
deny to `anonymous` applies to unauthenticated requests only. Rules have no order:
the same set of rules grants the same actions in any order. `{name}` in a pattern is
replaced by each principal's own name (a host's or role's without its prefix). Conditions
(`source_ips`, `not_before`, `not_after`) are allowed on grants only and are checked
for each request.

A role's `arns` are IAM principal ARN patterns: `arn:aws:iam::ACCOUNT:role/NAME`,
`arn:aws:iam::ACCOUNT:user/NAME` or `arn:aws:iam::ACCOUNT:*`, where `*` matches any
characters and the account is always literal. A caller whose verified ARN matches
patterns of more than one role is rejected, so one ARN must not be listed twice.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from regauth.errors import PolicyError, PolicyProblem
from regauth.iam import IAM_USERNAME, RoleMap, validate_arn_pattern
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
from regauth.passwords import is_supported_hash
from regauth.patterns import (
    has_placeholder,
    pattern_matches,
    substitute_name,
    validate_pattern,
)

FORMAT_VERSION = 1

USER_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
HOST_NAME = GROUP_NAME
ROLE_NAME = GROUP_NAME
MAX_GRANT_ID_LENGTH = 128
# A valid policy nests lists and mappings 4 levels deep (the root mapping, `grants`, a
# grant and its `repositories`). The margin above that lets the reader report a
# slightly misshapen file with its usual messages. PyYAML composes nodes recursively,
# so a file thousands of levels deep would exhaust Python's recursion limit.
MAX_NESTING_DEPTH = 16

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

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_TAG_DESCRIPTIONS = {
    _STR: "a string",
    _INT: "an integer",
    _BOOL: "a boolean",
    _NULL: "null",
    _SEQ: "a list",
    _MAP: "a mapping",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:timestamp": "a date",
}

_QUOTABLE_TAGS = frozenset({_INT, _BOOL, "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"})

_TOP_LEVEL_KEYS = ("version", "users", "hosts", "roles", "groups", "grants", "denies")
_USER_KEYS = ("name", "password_hash", "disabled")
_HOST_KEYS = ("name", "description", "disabled")
_ROLE_KEYS = ("name", "arns", "description")
_GROUP_KEYS = ("name", "members")
_RULE_KEYS = ("id", "description", "to", "repositories", "registry", "actions")
_GRANT_KEYS = (*_RULE_KEYS, "source_ips", "not_before", "not_after")
_DENY_KEYS = (*_RULE_KEYS, "except")

# Prefixes of common hash formats that are not supported, named in the error message so
# that the reader can tell which format they have. The value itself is never shown,
# because a plaintext password put in its place must not end up in a log.
_UNSUPPORTED_HASH_NAMES = {
    "$2a$": "bcrypt $2a$",
    "$2x$": "bcrypt $2x$",
    "$apr1$": "Apache MD5 ($apr1$)",
    "$1$": "MD5-crypt ($1$)",
    "$5$": "SHA-256-crypt ($5$)",
    "$6$": "SHA-512-crypt ($6$)",
    "{SHA}": "SHA-1 ({SHA})",
    "$argon2i$": "Argon2i",
    "$argon2d$": "Argon2d",
}


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
    """How one rule took part in a decision on one requested action.

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


# Loading ---------------------------------------------------------------------------


class _Mark(Protocol):
    """A YAML position, 0-based, as PyYAML's pure-Python and C marks both provide."""

    line: int
    column: int


def load_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy file.

    An empty file, or one with only comments, is an empty policy. Raises PolicyError
    listing every problem found, each with its 1-based line and column in `source`.
    """
    try:
        event_problems = _event_problems(text, source)
        # Composing builds the nodes recursively, so a file that is nested too deeply
        # is rejected before it is composed.
        root = None if event_problems else yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([_syntax_problem(exc, source)]) from exc
    except yaml.reader.ReaderError as exc:
        raise PolicyError([_reader_problem(exc, text, source)]) from exc

    if event_problems:
        raise PolicyError(event_problems)

    reader = _PolicyReader(source)
    policy = reader.read(root)
    if reader.problems:
        raise PolicyError(reader.problems)
    return policy


def _event_problems(text: str, source: str) -> list[PolicyProblem]:
    """Report aliases, and nesting deeper than `MAX_NESTING_DEPTH`, from the YAML events."""
    problems = []
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        # Aliases are rejected because an alias shares its node with the anchor, so
        # every position inside it would point at the anchor, and because nested
        # aliases make a small file expand exponentially when its nodes are walked.
        if isinstance(event, yaml.AliasEvent) and event.start_mark is not None:
            message = "YAML aliases are not supported: write the value out"
            problems.append(_problem_at(event.start_mark, message, source))
        if depth > MAX_NESTING_DEPTH and event.start_mark is not None:
            message = (
                f"lists and mappings are nested more than {MAX_NESTING_DEPTH} levels deep, "
                "but a policy needs at most 4"
            )
            problems.append(_problem_at(event.start_mark, message, source))
            # The rest of the file cannot make it valid, and PyYAML's scanner slows
            # down more than linearly with the depth, so reading stops here.
            break
    return problems


def _problem_at(mark: _Mark, message: str, source: str) -> PolicyProblem:
    return PolicyProblem(message, mark.line + 1, mark.column + 1, source)


def _syntax_problem(exc: yaml.MarkedYAMLError, source: str) -> PolicyProblem:
    message = f"invalid YAML: {exc.problem}"
    if exc.context:
        message += f" ({exc.context})"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return PolicyProblem(message, 1, 1, source)
    return _problem_at(mark, message, source)


def _reader_problem(exc: yaml.reader.ReaderError, text: str, source: str) -> PolicyProblem:
    # A ReaderError has a character offset, not a mark, so the position is counted here.
    position = exc.position
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return PolicyProblem(
        f"invalid YAML: {exc.reason} (character {exc.character:#x})", line, column, source
    )


def _describe(node: Node) -> str:
    return _TAG_DESCRIPTIONS.get(node.tag, f"a value tagged {node.tag}")


class _Item(NamedTuple):
    """A string read from a YAML list, with its node and its path for messages."""

    value: str
    node: Node
    path: str


@dataclass(slots=True)
class _Declared:
    """Names declared so far, with the node of each declaration for later messages."""

    users: dict[str, Node] = field(default_factory=dict)
    hosts: dict[str, Node] = field(default_factory=dict)
    roles: dict[str, Node] = field(default_factory=dict)
    # ARN pattern to the node that first listed it, since two roles must not share one.
    arns: dict[str, Node] = field(default_factory=dict)
    groups: dict[str, Node] = field(default_factory=dict)
    grant_ids: dict[str, Node] = field(default_factory=dict)
    # Group name to the `group:` members it lists, with each member's node.
    group_members: dict[str, list[tuple[str, Node]]] = field(default_factory=dict)
    # Every member reference, checked once all names are known.
    member_references: list[_Item] = field(default_factory=list)
    # Patterns with `{name}`, with the rule's target, checked once all names are known.
    placeholders: list[tuple[_Item, str, Literal["allow", "deny"]]] = field(default_factory=list)


class _PolicyReader:
    """Walks the composed YAML nodes, collecting problems instead of stopping at one."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[PolicyProblem] = []
        self.declared = _Declared()

    def report(self, node: Node, message: str) -> None:
        self.problems.append(_problem_at(node.start_mark, message, self.source))

    def read(self, root: Node | None) -> Policy:
        if root is None or root.tag == _NULL:
            return Policy()
        fields = self.mapping(root, "the policy", _TOP_LEVEL_KEYS)
        if fields is None:
            return Policy()

        if "version" in fields:
            self.read_version(fields["version"])
        users = self.read_users(fields.get("users"))
        hosts = self.read_hosts(fields.get("hosts"))
        roles = self.read_roles(fields.get("roles"))
        groups = self.read_groups(fields.get("groups"))
        grants = self.read_rules(fields.get("grants"), "grants", "allow")
        denies = self.read_rules(fields.get("denies"), "denies", "deny")

        # Members are checked once every name is known, so a group may list a group
        # defined after it.
        self.check_members()
        has_cycles = self.check_group_cycles()
        policy = Policy(
            users=users, groups=groups, grants=grants, hosts=hosts, denies=denies, roles=roles
        )
        # The placeholder check runs on the entries that were valid, so one pass
        # reports its problems together with the others. It walks group membership,
        # which a cycle would make endless.
        if not has_cycles:
            self.check_placeholders(policy)
        return policy

    # Generic node readers. Each reports its own problem and returns None on failure.

    def mapping(
        self, node: Node, path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode) or node.tag != _MAP:
            self.report(node, f"{path} must be a mapping, got {_describe(node)}")
            return None

        fields: dict[str, Node] = {}
        keys: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key is None or key not in allowed:
                key_text = repr(key) if key is not None else _describe(key_node)
                self.report(
                    key_node, f"unknown key {key_text} in {path} (allowed: {', '.join(allowed)})"
                )
            elif key in keys:
                first_line = keys[key].start_mark.line + 1
                self.report(
                    key_node, f"duplicate key {key!r} in {path} (first at line {first_line})"
                )
            else:
                keys[key] = key_node
                fields[key] = value_node

        for key in required:
            if key not in fields:
                self.report(node, f"{path} is missing the required key {key!r}")
        return fields

    def sequence(self, node: Node | None, path: str) -> list[Node]:
        # An empty `users:` is null in YAML and reads naturally as "no users".
        if node is None or node.tag == _NULL:
            return []
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            self.report(node, f"{path} must be a list, got {_describe(node)}")
            return []
        return list(node.value)

    def string(self, node: Node, path: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return str(node.value)
        # YAML reads unquoted `007`, `yes` or `2024-01-01` as other types, and quotes
        # make them strings.
        hint = ""
        if node.tag in _QUOTABLE_TAGS:
            hint = " (put it in quotes to make it a string)"
        self.report(node, f"{path} must be a string, got {_describe(node)}{hint}")
        return None

    def strings(self, node: Node, path: str) -> list[_Item]:
        items = []
        for index, item_node in enumerate(self.sequence(node, path)):
            item_path = f"{path}[{index}]"
            value = self.string(item_node, item_path)
            if value is not None:
                items.append(_Item(value, item_node, item_path))
        return items

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return str(node.value).lower() in {"true", "yes", "on"}
        self.report(node, f"{path} must be true or false, got {_describe(node)}")
        return None

    # Sections.

    def read_version(self, node: Node) -> None:
        if not (isinstance(node, ScalarNode) and node.tag == _INT and node.value == "1"):
            self.report(node, f"version must be {FORMAT_VERSION}, the only policy format version")

    def read_users(self, node: Node | None) -> tuple[PolicyUser, ...]:
        users = []
        for index, item in enumerate(self.sequence(node, "users")):
            user = self.read_user(item, f"users[{index}]")
            if user is not None:
                users.append(user)
        return tuple(users)

    def read_user(self, node: Node, path: str) -> PolicyUser | None:
        fields = self.mapping(node, path, _USER_KEYS, required=("name",))
        if fields is None or "name" not in fields:
            return None

        name = self.read_user_name(fields["name"], f"{path}.name")
        password_hash = None
        if "password_hash" in fields:
            password_hash = self.read_password_hash(
                fields["password_hash"], f"{path}.password_hash"
            )
        disabled = False
        if "disabled" in fields:
            disabled = bool(self.boolean(fields["disabled"], f"{path}.disabled"))

        if name is None:
            return None
        return PolicyUser(name=name, password_hash=password_hash, disabled=disabled)

    def read_user_name(self, node: Node, path: str) -> str | None:
        name = self.read_declared_name(node, path, "user", self.declared.users)
        if name is None:
            return None
        if name == ANONYMOUS:
            self.report(
                node, f"{path}: the user name 'anonymous' is reserved for unauthenticated requests"
            )
            return None
        if name == IAM_USERNAME:
            # The token endpoint reads the password of this user name as an AWS IAM
            # proof, so such a user could never sign in with a password.
            self.report(
                node,
                f"{path}: the user name {IAM_USERNAME!r} is reserved for AWS IAM sign-in "
                "and cannot sign in with a password",
            )
            return None
        name = self.check_name_syntax(
            node, path, "user", name, syntax=USER_NAME, separators="'.', '_', '-' or '@'"
        )
        return self.check_distinct_kinds(node, path, "user", name)

    def read_password_hash(self, node: Node, path: str) -> str | None:
        value = self.string(node, path)
        if value is None or is_supported_hash(value):
            return value

        known = next(
            (
                label
                for prefix, label in _UNSUPPORTED_HASH_NAMES.items()
                if value.startswith(prefix)
            ),
            None,
        )
        if known is not None:
            problem = f"{path}: {known} hashes are not supported"
        elif value.startswith(("$argon2id$", "$2b$", "$2y$")):
            problem = f"{path}: the hash is malformed"
        else:
            problem = f"{path}: the value is not a password hash (plaintext is rejected)"
        self.report(
            node,
            f"{problem}. Use an Argon2id PHC string ($argon2id$...) "
            "or a bcrypt hash with the prefix $2b$ or $2y$",
        )
        return None

    def read_hosts(self, node: Node | None) -> tuple[PolicyHost, ...]:
        hosts = []
        for index, item in enumerate(self.sequence(node, "hosts")):
            host = self.read_host(item, f"hosts[{index}]")
            if host is not None:
                hosts.append(host)
        return tuple(hosts)

    def read_host(self, node: Node, path: str) -> PolicyHost | None:
        fields = self.mapping(node, path, _HOST_KEYS, required=("name",))
        if fields is None or "name" not in fields:
            return None

        name = self.read_host_name(fields["name"], f"{path}.name")
        description = ""
        if "description" in fields:
            description = self.string(fields["description"], f"{path}.description") or ""
        disabled = False
        if "disabled" in fields:
            disabled = bool(self.boolean(fields["disabled"], f"{path}.disabled"))

        if name is None:
            return None
        return PolicyHost(name=name, description=description, disabled=disabled)

    def read_host_name(self, node: Node, path: str) -> str | None:
        name = self.read_declared_name(node, path, "host", self.declared.hosts)
        name = self.check_name_syntax(
            node, path, "host", name, syntax=HOST_NAME, separators="'.', '_' or '-'"
        )
        return self.check_distinct_kinds(node, path, "host", name)

    def read_roles(self, node: Node | None) -> tuple[PolicyRole, ...]:
        roles = []
        for index, item in enumerate(self.sequence(node, "roles")):
            role = self.read_role(item, f"roles[{index}]")
            if role is not None:
                roles.append(role)
        return tuple(roles)

    def read_role(self, node: Node, path: str) -> PolicyRole | None:
        fields = self.mapping(node, path, _ROLE_KEYS, required=("name", "arns"))
        if fields is None or "name" not in fields:
            return None

        name = self.read_role_name(fields["name"], f"{path}.name")
        arns = self.read_arn_patterns(fields["arns"], f"{path}.arns") if "arns" in fields else None
        description = ""
        if "description" in fields:
            description = self.string(fields["description"], f"{path}.description") or ""

        if name is None or not arns:
            return None
        return PolicyRole(name=name, arns=arns, description=description)

    def read_role_name(self, node: Node, path: str) -> str | None:
        name = self.read_declared_name(node, path, "role", self.declared.roles)
        name = self.check_name_syntax(
            node, path, "role", name, syntax=ROLE_NAME, separators="'.', '_' or '-'"
        )
        return self.check_distinct_kinds(node, path, "role", name)

    def read_arn_patterns(self, node: Node, path: str) -> tuple[str, ...] | None:
        items = self.read_non_empty_strings(node, path)
        valid = bool(items)
        for item in items:
            error = validate_arn_pattern(item.value)
            if error is not None:
                self.report(item.node, f"{item.path}: {error}")
                valid = False
                continue
            # The same ARN in two roles would make every caller it matches ambiguous,
            # and IAM sign-in rejects an ambiguous caller.
            first = self.declared.arns.setdefault(item.value, item.node)
            if first is not item.node:
                first_line = first.start_mark.line + 1
                self.report(
                    item.node,
                    f"{item.path}: duplicate ARN pattern {item.value!r} "
                    f"(first at line {first_line})",
                )
                valid = False
        if not valid:
            return None
        return tuple(dict.fromkeys(item.value for item in items))

    def read_groups(self, node: Node | None) -> tuple[PolicyGroup, ...]:
        groups = []
        for index, item in enumerate(self.sequence(node, "groups")):
            group = self.read_group(item, f"groups[{index}]")
            if group is not None:
                groups.append(group)
        return tuple(groups)

    def read_group(self, node: Node, path: str) -> PolicyGroup | None:
        fields = self.mapping(node, path, _GROUP_KEYS, required=("name",))
        if fields is None or "name" not in fields:
            return None

        name = self.read_group_name(fields["name"], f"{path}.name")
        members = []
        if "members" in fields:
            members = self.strings(fields["members"], f"{path}.members")
        self.declared.member_references.extend(members)

        if name is None:
            return None
        self.declared.group_members[name] = [
            (member.value.removeprefix(GROUP_PREFIX), member.node)
            for member in members
            if member.value.startswith(GROUP_PREFIX)
        ]
        return PolicyGroup(name=name, members=tuple(member.value for member in members))

    def read_group_name(self, node: Node, path: str) -> str | None:
        name = self.read_declared_name(node, path, "group", self.declared.groups)
        return self.check_name_syntax(
            node, path, "group", name, syntax=GROUP_NAME, separators="'.', '_' or '-'"
        )

    def read_declared_name(
        self, node: Node, path: str, kind: str, declared: dict[str, Node]
    ) -> str | None:
        """Read a principal's name and record it, rejecting a second declaration.

        The name is recorded even when its syntax is invalid, so that references to it
        do not add a second, misleading "unknown" problem.
        """
        name = self.string(node, path)
        if name is None:
            return None
        first = declared.setdefault(name, node)
        if first is not node:
            first_line = first.start_mark.line + 1
            self.report(
                node, f"{path}: duplicate {kind} name {name!r} (first at line {first_line})"
            )
            return None
        return name

    def check_distinct_kinds(
        self, node: Node, path: str, kind: str, name: str | None
    ) -> str | None:
        """Reject a user, host or role name that a principal of another kind already has.

        `{name}` in a repository pattern is replaced by the name without its kind, so a
        grant of `users/{name}/**` would give `user:alice` and `host:alice` the same
        repositories. Users are read before hosts and hosts before roles, and the name
        read later is the one reported.
        """
        if name is None:
            return None
        declared = {
            "user": self.declared.users,
            "host": self.declared.hosts,
            "role": self.declared.roles,
        }
        for other_kind, names in declared.items():
            first = names.get(name)
            if other_kind == kind or first is None:
                continue
            first_line = first.start_mark.line + 1
            self.report(
                node,
                f"{path}: {kind} name {name!r} is already the name of "
                f"'{other_kind}:{name}' (line {first_line}). Users, hosts and roles need "
                "distinct names, because {name} in a repository pattern is replaced by the "
                "name without its kind",
            )
            return None
        return name

    def check_name_syntax(
        self,
        node: Node,
        path: str,
        kind: str,
        name: str | None,
        *,
        syntax: re.Pattern[str],
        separators: str,
    ) -> str | None:
        if name is None or syntax.fullmatch(name):
            return name
        self.report(
            node,
            f"{path}: invalid {kind} name {name!r}: use 1 to 64 lower-case letters, digits, "
            f"{separators}, starting with a letter or digit",
        )
        return None

    def read_rules(
        self, node: Node | None, section: str, effect: Literal["allow", "deny"]
    ) -> tuple[PolicyGrant, ...]:
        rules = []
        for index, item in enumerate(self.sequence(node, section)):
            rule = self.read_rule(item, f"{section}[{index}]", effect)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def read_rule(
        self, node: Node, path: str, effect: Literal["allow", "deny"]
    ) -> PolicyGrant | None:
        allowed = _GRANT_KEYS if effect == "allow" else _DENY_KEYS
        fields = self.mapping(node, path, allowed, required=("to",))
        if fields is None:
            return None

        grant_id = self.read_grant_id(fields.get("id"), path, node)
        description = ""
        if "description" in fields:
            description = self.string(fields["description"], f"{path}.description") or ""
        target = None
        if "to" in fields:
            target = self.read_target(fields["to"], f"{path}.to", effect)
        resources = self.read_grant_resources(node, fields, path)
        excluded = self.read_excluded(fields.get("except"), f"{path}.except")
        conditions = self.read_conditions(fields, path)

        if grant_id is None or target is None or resources is None or conditions is None:
            return None
        grant_type, names, actions = resources
        if grant_type == REPOSITORY:
            self.note_placeholders(fields["repositories"], names, target, effect, path)
        source_ips, not_before, not_after = conditions
        return PolicyGrant(
            id=grant_id,
            to=target,
            type=grant_type,
            resources=names,
            actions=actions,
            description=description,
            effect=effect,
            excluded=excluded,
            source_ips=source_ips,
            not_before=not_before,
            not_after=not_after,
        )

    def note_placeholders(
        self,
        node: Node,
        patterns: tuple[str, ...],
        target: str,
        effect: Literal["allow", "deny"],
        path: str,
    ) -> None:
        nodes = node.value if isinstance(node, SequenceNode) else []
        for index, item_node in enumerate(nodes):
            value = item_node.value if isinstance(item_node, ScalarNode) else None
            if value in patterns and has_placeholder(str(value)):
                item = _Item(str(value), item_node, f"{path}.repositories[{index}]")
                self.declared.placeholders.append((item, target, effect))

    def read_excluded(self, node: Node | None, path: str) -> tuple[str, ...]:
        if node is None:
            return ()
        members = self.strings(node, path)
        self.declared.member_references.extend(members)
        return tuple(dict.fromkeys(member.value for member in members))

    def read_conditions(
        self, fields: dict[str, Node], path: str
    ) -> tuple[tuple[str, ...], int | None, int | None] | None:
        valid = True
        source_ips: list[str] = []
        if "source_ips" in fields:
            for item in self.read_non_empty_strings(fields["source_ips"], f"{path}.source_ips"):
                try:
                    source_ips.append(str(ipaddress.ip_network(item.value, strict=True)))
                except ValueError as exc:
                    self.report(item.node, f"{item.path}: invalid CIDR range: {exc}")
                    valid = False

        not_before = self.read_time(fields.get("not_before"), f"{path}.not_before")
        not_after = self.read_time(fields.get("not_after"), f"{path}.not_after")
        if "not_before" in fields and not_before is None:
            valid = False
        if "not_after" in fields and not_after is None:
            valid = False
        if not_before is not None and not_after is not None and not_before > not_after:
            self.report(fields["not_after"], f"{path}.not_after is earlier than not_before")
            valid = False

        if not valid:
            return None
        return tuple(dict.fromkeys(source_ips)), not_before, not_after

    def read_time(self, node: Node | None, path: str) -> int | None:
        if node is None:
            return None
        # YAML reads an unquoted RFC 3339 time as a timestamp, a quoted one as a string.
        if not isinstance(node, ScalarNode) or node.tag not in (_STR, _TIMESTAMP):
            self.report(node, f"{path} must be an RFC 3339 time, got {_describe(node)}")
            return None
        try:
            moment = datetime.fromisoformat(str(node.value))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            self.report(
                node,
                f"{path} must be an RFC 3339 time with a time zone, such as 2026-01-31T18:00:00Z",
            )
            return None
        return int(moment.timestamp())

    def read_grant_id(self, node: Node | None, path: str, grant_node: Node) -> str | None:
        grant_id = path if node is None else self.string(node, f"{path}.id")
        if grant_id is None:
            return None
        position = grant_node if node is None else node

        if not grant_id or len(grant_id) > MAX_GRANT_ID_LENGTH or not grant_id.isprintable():
            self.report(
                position,
                f"{path}.id must be 1 to {MAX_GRANT_ID_LENGTH} printable characters",
            )
            return None
        first = self.declared.grant_ids.setdefault(grant_id, position)
        if first is not position:
            first_line = first.start_mark.line + 1
            self.report(
                position, f"{path}: duplicate grant id {grant_id!r} (first at line {first_line})"
            )
            return None
        return grant_id

    def read_target(self, node: Node, path: str, effect: Literal["allow", "deny"]) -> str | None:
        target = self.string(node, path)
        if target is None:
            return None

        if target == ANONYMOUS or (target == EVERYONE and effect == "deny"):
            return target
        kind, _, name = target.partition(":")
        if kind == "user":
            known = name in self.declared.users
        elif kind == "host":
            known = name in self.declared.hosts
        elif kind == "role":
            known = name in self.declared.roles
        elif kind == "group":
            known = name in self.declared.groups
        elif target == EVERYONE:
            self.report(
                node,
                f"{path}: 'everyone' is for denies: grants to 'anonymous' already apply "
                "to every principal",
            )
            return None
        else:
            targets = "'user:NAME', 'host:NAME', 'role:NAME', 'group:NAME' or 'anonymous'"
            if effect == "deny":
                targets = (
                    "'user:NAME', 'host:NAME', 'role:NAME', 'group:NAME', 'anonymous' or 'everyone'"
                )
            self.report(node, f"{path}: invalid target {target!r}: use {targets}")
            return None
        if not known:
            self.report(node, f"{path}: unknown {kind} {target!r}: no {kind} named {name!r}")
            return None
        return target

    def read_grant_resources(
        self, node: Node, fields: dict[str, Node], path: str
    ) -> tuple[Literal["repository", "registry"], tuple[str, ...], frozenset[str]] | None:
        has_repositories = "repositories" in fields
        has_registry = "registry" in fields
        if has_repositories == has_registry:
            self.report(node, f"{path} must have exactly one of 'repositories' or 'registry'")
            return None
        if has_repositories:
            return self.read_repository_grant(fields, path)
        return self.read_registry_grant(fields, path)

    def read_repository_grant(
        self, fields: dict[str, Node], path: str
    ) -> tuple[Literal["repository"], tuple[str, ...], frozenset[str]] | None:
        patterns = self.read_non_empty_strings(fields["repositories"], f"{path}.repositories")
        valid = True
        for pattern in patterns:
            error = validate_pattern(pattern.value)
            if error is not None:
                self.report(pattern.node, f"{pattern.path}: {error}")
                valid = False

        actions: list[_Item] = []
        if "actions" not in fields:
            self.report(fields["repositories"], f"{path} grants repositories but has no 'actions'")
        else:
            actions = self.read_non_empty_strings(fields["actions"], f"{path}.actions")
        for action in actions:
            if action.value not in REPOSITORY_ACTIONS:
                self.report(
                    action.node,
                    f"{action.path}: unknown action {action.value!r} "
                    f"(allowed: {', '.join(REPOSITORY_ACTIONS)})",
                )
                valid = False

        if not valid or not patterns or not actions:
            return None
        names = tuple(dict.fromkeys(pattern.value for pattern in patterns))
        return "repository", names, frozenset(action.value for action in actions)

    def read_registry_grant(
        self, fields: dict[str, Node], path: str
    ) -> tuple[Literal["registry"], tuple[str, ...], frozenset[str]] | None:
        resources = self.read_non_empty_strings(fields["registry"], f"{path}.registry")
        valid = bool(resources)
        for resource in resources:
            if resource.value not in REGISTRY_RESOURCES:
                self.report(
                    resource.node,
                    f"{resource.path}: unknown registry resource {resource.value!r} "
                    f"(allowed: {', '.join(REGISTRY_RESOURCES)})",
                )
                valid = False

        # The registry checks `registry:catalog` for the literal action `*`, so no other
        # action would have any effect.
        if "actions" in fields:
            actions = self.strings(fields["actions"], f"{path}.actions")
            if [action.value for action in actions] != [ALL_ACTIONS]:
                self.report(
                    fields["actions"],
                    f"{path}.actions must be absent or ['*'] for a registry grant",
                )
                valid = False

        if not valid:
            return None
        names = tuple(dict.fromkeys(resource.value for resource in resources))
        return "registry", names, frozenset({ALL_ACTIONS})

    def read_non_empty_strings(self, node: Node, path: str) -> list[_Item]:
        if isinstance(node, SequenceNode) and not node.value:
            self.report(node, f"{path} is empty: list at least one value")
            return []
        if node.tag == _NULL:
            self.report(node, f"{path} must be a list, got null")
            return []
        return self.strings(node, path)

    # Cross-references.

    def check_members(self) -> None:
        for member in self.declared.member_references:
            self.check_member(member.value, member.node, member.path)

    def check_member(self, member: str, node: Node, path: str) -> None:
        kind, _, name = member.partition(":")
        if kind == "user":
            known = name in self.declared.users
        elif kind == "host":
            known = name in self.declared.hosts
        elif kind == "role":
            known = name in self.declared.roles
        elif kind == "group":
            known = name in self.declared.groups
        else:
            self.report(
                node,
                f"{path}: invalid member {member!r}: "
                "use 'user:NAME', 'host:NAME', 'role:NAME' or 'group:NAME'",
            )
            return
        if not known:
            self.report(node, f"{path}: unknown member {member!r}: no {kind} named {name!r}")

    def check_group_cycles(self) -> bool:
        """Report every membership cycle; return whether there was one."""
        found = False
        for cycle, node in _find_cycles(self.declared.group_members):
            chain = " -> ".join(f"{GROUP_PREFIX}{name}" for name in cycle)
            self.report(node, f"groups contain each other in a cycle: {chain}")
            found = True
        return found

    def check_placeholders(self, policy: Policy) -> None:
        """Check that `{name}` gives a valid pattern for every principal a rule reaches."""
        parents = _parent_groups(policy)
        for item, target, effect in self.declared.placeholders:
            if target == ANONYMOUS and effect == "allow":
                self.report(
                    item.node,
                    f"{item.path}: {{name}} cannot be used in a grant to 'anonymous', which "
                    "applies to every principal: grant to a group instead",
                )
                continue
            for principal in _principal_names(policy):
                if not _rule_reaches(target, (), principal, parents):
                    continue
                error = validate_pattern(substitute_name(item.value, _own_name(principal)))
                if error is not None:
                    self.report(item.node, f"{item.path} for {principal}: {error}")
                    break


def _find_cycles(
    edges: dict[str, list[tuple[str, Node]]],
) -> Iterator[tuple[list[str], Node]]:
    """Yield the cycles of group membership that a depth-first search closes.

    Each cycle comes with the node of the member that closes it. At least one cycle is
    yielded if and only if the membership graph has a cycle. The search keeps its own
    stack, so deep nesting cannot exhaust Python's recursion limit.
    """
    finished: set[str] = set()
    for start in edges:
        if start in finished:
            continue
        path = [start]
        on_path = {start}
        stack = [iter(edges.get(start, []))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                done = path.pop()
                on_path.discard(done)
                finished.add(done)
                continue
            child, node = step
            if child in on_path:
                yield [*path[path.index(child) :], child], node
            elif child not in finished and child in edges:
                path.append(child)
                on_path.add(child)
                stack.append(iter(edges[child]))


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
    parents = _parent_groups(policy)
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
    for name in _principal_names(policy):
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


def _principal_names(policy: Policy) -> list[str]:
    names = [ANONYMOUS]
    names += [f"{USER_PREFIX}{user.name}" for user in policy.users]
    names += [f"{HOST_PREFIX}{host.name}" for host in policy.hosts]
    names += [f"{ROLE_PREFIX}{role.name}" for role in policy.roles]
    return names


def _own_name(principal: str) -> str:
    """Return the value of `{name}` for a principal: its name without the kind prefix."""
    return principal.partition(":")[2] or principal


def _rule_reaches(
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
    own_name = _own_name(principal)
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
            pattern = substitute_name(resource, own_name) if rule.type == REPOSITORY else resource
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


def _parent_groups(policy: Policy) -> dict[str, list[str]]:
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
        shown = source_ip or "unknown"
        ranges = ", ".join(grant.source_ips)
        return result(False, f"source address {shown} is not in {ranges}")
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
