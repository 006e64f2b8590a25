"""Policy files: read and validate them, reporting every problem with its position.

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

import ipaddress
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from regauth.errors import PolicyError, PolicyProblem
from regauth.iam import IAM_USERNAME, validate_arn_pattern
from regauth.models import (
    ALL_ACTIONS,
    ANONYMOUS,
    REPOSITORY,
)
from regauth.passwords import is_supported_hash
from regauth.patterns import (
    has_placeholder,
    substitute_name,
    validate_pattern,
)
from regauth.policy import (
    EVERYONE,
    FORMAT_VERSION,
    GROUP_PREFIX,
    REGISTRY_RESOURCES,
    REPOSITORY_ACTIONS,
    Policy,
    PolicyGrant,
    PolicyGroup,
    PolicyHost,
    PolicyRole,
    PolicyUser,
    own_name,
    parent_groups,
    principal_names,
    rule_reaches,
)

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
        users = self.read_entries(fields.get("users"), "users", self.read_user)
        hosts = self.read_entries(fields.get("hosts"), "hosts", self.read_host)
        roles = self.read_entries(fields.get("roles"), "roles", self.read_role)
        groups = self.read_entries(fields.get("groups"), "groups", self.read_group)
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

    def read_entries[Entry](
        self, node: Node | None, key: str, read_entry: Callable[[Node, str], Entry | None]
    ) -> tuple[Entry, ...]:
        """Read a top-level list, keeping the entries that were valid."""
        entries = []
        for index, item in enumerate(self.sequence(node, key)):
            entry = read_entry(item, f"{key}[{index}]")
            if entry is not None:
                entries.append(entry)
        return tuple(entries)

    def read_version(self, node: Node) -> None:
        if not (isinstance(node, ScalarNode) and node.tag == _INT and node.value == "1"):
            self.report(node, f"version must be {FORMAT_VERSION}, the only policy format version")

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
        parents = parent_groups(policy)
        for item, target, effect in self.declared.placeholders:
            if target == ANONYMOUS and effect == "allow":
                self.report(
                    item.node,
                    f"{item.path}: {{name}} cannot be used in a grant to 'anonymous', which "
                    "applies to every principal: grant to a group instead",
                )
                continue
            for principal in principal_names(policy):
                if not rule_reaches(target, (), principal, parents):
                    continue
                error = validate_pattern(substitute_name(item.value, own_name(principal)))
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
