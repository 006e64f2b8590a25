"""Parse `scope` parameters of the distribution token auth protocol.

The grammar (distribution `docs/spec/auth/scope.md`)::

    scope          := resourcescope [ ' ' resourcescope ]*
    resourcescope  := resourcetype ":" resourcename ":" action [ "," action ]*
    resourcetype   := resourcetypevalue [ "(" resourcetypevalue ")" ]
    resourcename   := [ hostname "/" ] component [ "/" component ]*

A resource name may itself contain a colon (`localhost:5000/team/app`), so the type
ends at the first colon and the actions start after the last one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from regauth.errors import InvalidScopeError
from regauth.models import KNOWN_ACTIONS, Scope

# Bounds on what one request may ask for. Real clients send one to three scopes.
MAX_SCOPES = 64
MAX_NAME_LENGTH = 255

_TYPE = re.compile(r"(?P<type>[a-z0-9]+)(?:\((?P<class>[a-z0-9]+)\))?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?"
_NAME = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*")


def parse_scope(value: str) -> Scope:
    """Parse one `type:name:actions` resource scope.

    Raises `InvalidScopeError` naming the part that is wrong.
    """
    resource_type, colon, rest = value.partition(":")
    name, last_colon, action_list = rest.rpartition(":")
    if not colon or not last_colon:
        raise InvalidScopeError(f"invalid scope {value!r}: expected type:name:actions")

    type_match = _TYPE.fullmatch(resource_type)
    if type_match is None:
        raise InvalidScopeError(
            f"invalid scope {value!r}: resource type {resource_type!r} must be lower-case "
            "letters and digits, optionally followed by a class in parentheses"
        )

    if len(name) > MAX_NAME_LENGTH or _NAME.fullmatch(name) is None:
        raise InvalidScopeError(
            f"invalid scope {value!r}: {name!r} is not a valid resource name "
            f"(lower-case path components of at most {MAX_NAME_LENGTH} characters, "
            "optionally after a host[:port]/ prefix)"
        )

    actions = action_list.split(",")
    unknown = sorted(action for action in actions if action not in KNOWN_ACTIONS)
    if unknown:
        raise InvalidScopeError(
            f"invalid scope {value!r}: unknown action {unknown[0]!r} "
            "(known actions are pull, push, delete and *)"
        )

    # The resource class (`repository(plugin)`) is dropped: registries match access
    # entries on type and name only.
    return Scope(type=type_match["type"], name=name, actions=frozenset(actions))


def parse_scopes(values: Iterable[str]) -> tuple[Scope, ...]:
    """Parse every `scope` parameter, each of which may hold a space-separated list.

    Scopes naming the same resource are merged into one with the union of their
    actions, in order of first appearance. Empty values are ignored, because
    `docker login` sends no scope at all.
    """
    merged: dict[tuple[str, str], set[str]] = {}
    count = 0
    for value in values:
        for item in value.split():
            count += 1
            if count > MAX_SCOPES:
                raise InvalidScopeError(f"too many scopes: at most {MAX_SCOPES} are accepted")
            scope = parse_scope(item)
            merged.setdefault((scope.type, scope.name), set()).update(scope.actions)

    return tuple(
        Scope(type=resource_type, name=name, actions=frozenset(actions))
        for (resource_type, name), actions in merged.items()
    )
