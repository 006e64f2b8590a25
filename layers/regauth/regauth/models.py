"""Typed records passed between the parser, the policy, the stores and the token builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

PULL = "pull"
PUSH = "push"
DELETE = "delete"
ALL_ACTIONS = "*"
KNOWN_ACTIONS = frozenset({PULL, PUSH, DELETE, ALL_ACTIONS})

# Order used when actions are written into a token, so equal grants give equal claims.
ACTION_ORDER = {PULL: 0, PUSH: 1, DELETE: 2, ALL_ACTIONS: 3}

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"

ANONYMOUS = "anonymous"


def sort_actions(actions: frozenset[str] | set[str]) -> tuple[str, ...]:
    """Return actions in the canonical order pull, push, delete, `*`, then any others."""
    return tuple(sorted(actions, key=lambda action: (ACTION_ORDER.get(action, 99), action)))


@dataclass(frozen=True, slots=True)
class Scope:
    """One requested resource scope: `type:name:actions` after parsing.

    `type` has any resource class removed, so `repository(plugin)` is `repository`.
    """

    type: str
    name: str
    actions: frozenset[str]


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One entry of the JWT `access` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True, slots=True)
class Grant:
    """A policy rule compiled for one principal: a grant, or a deny when `effect` is deny.

    `type` is `repository` (then `pattern` is a repository pattern, with any `{name}`
    already replaced by the principal's name) or `registry` (then `pattern` is a
    registry resource name such as `catalog`). The conditions are checked at request
    time: `source_ips` lists CIDR ranges the client address must be in (empty means
    any), and `not_before` and `not_after` bound the time (Unix seconds, inclusive).
    """

    type: Literal["repository", "registry"]
    pattern: str
    actions: frozenset[str]
    rule_id: str
    effect: Literal["allow", "deny"] = "allow"
    source_ips: tuple[str, ...] = ()
    not_before: int | None = None
    not_after: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An identity as stored in the table, with everything a token request needs.

    `name` is qualified by kind: `user:alice`, or `anonymous`. `grants` already
    includes the grants of every group the principal belongs to and the grants to
    `anonymous`, so authorizing a request needs no further reads.
    """

    name: str
    grants: tuple[Grant, ...]
    password_hash: str | None = None
    disabled: bool = False
    # Refresh tokens issued before this Unix time are no longer accepted.
    refresh_not_before: int = 0
    policy_version: str = ""
    # Failed logins counted since `failed_window_start` (Unix time), for lockout.
    failed_logins: int = 0
    failed_window_start: int = 0
    # A host's API key: SHA-256 hex digest, expiry in Unix time (0 for none), and a
    # short id for audit records. The key itself is never stored.
    api_key_hash: str | None = field(default=None, repr=False)
    api_key_expires_at: int = 0
    api_key_id: str = ""
    # A role's IAM principal ARN patterns, as the policy version defines them. A
    # verified caller ARN must match one of them (see `regauth.iam.RoleMap`).
    arn_patterns: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        """The name as used in the JWT `sub` claim and in Basic auth.

        Users keep their plain name. A host is `host/NAME` and a role `role/NAME`, which
        no user name can be, because user names contain no `/`.
        """
        kind, _, name = self.name.partition(":")
        if kind in ("host", "role"):
            return f"{kind}/{name}"
        return name or self.name


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """User name and password from an `Authorization: Basic` header or a password grant."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    """A stored refresh token. Only the SHA-256 digest of the token is kept."""

    token_hash: str
    principal: str
    service: str
    client_id: str
    issued_at: int
    expires_at: int
    # Fingerprint of the credential the token was issued for (see
    # `regauth.service.credential_fingerprint`). A changed password or API key, or a
    # principal deleted and created again, no longer matches it.
    credential: str = ""


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token request after parsing, independent of GET or POST."""

    method: Literal["GET", "POST"]
    grant_type: Literal["password", "refresh_token", "none"]
    service: str
    scopes: tuple[Scope, ...]
    credentials: BasicCredentials | None = None
    refresh_token: str | None = field(default=None, repr=False)
    offline: bool = False
    client_id: str = ""
    account: str = ""
    source_ip: str = ""
    user_agent: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed access token and, when requested, a refresh token."""

    token: str = field(repr=False)
    jti: str
    subject: str
    issued_at: datetime
    expires_in: int
    access: tuple[AccessEntry, ...]
    refresh_token: str | None = field(default=None, repr=False)
