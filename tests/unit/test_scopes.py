"""Scope parsing, following distribution's scope grammar (docs/spec/auth/scope.md)."""

import pytest

from regauth.errors import InvalidScopeError
from regauth.models import Scope
from regauth.scopes import MAX_SCOPES, parse_scope, parse_scopes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("repository:team/app:pull", Scope("repository", "team/app", frozenset({"pull"}))),
        (
            "repository:team/app:push,pull",
            Scope("repository", "team/app", frozenset({"pull", "push"})),
        ),
        (
            "repository:localhost:5000/team/app:pull",
            Scope("repository", "localhost:5000/team/app", frozenset({"pull"})),
        ),
        ("repository(plugin):x:pull", Scope("repository", "x", frozenset({"pull"}))),
        ("registry:catalog:*", Scope("registry", "catalog", frozenset({"*"}))),
        ("repository:a/b/c:delete", Scope("repository", "a/b/c", frozenset({"delete"}))),
        (
            "repository:my_org/my-app.v2:pull",
            Scope("repository", "my_org/my-app.v2", frozenset({"pull"})),
        ),
    ],
    ids=["pull", "two-actions", "host-port-name", "resource-class", "catalog", "nested", "seps"],
)
def test_parse_scope_valid(value: str, expected: Scope) -> None:
    assert parse_scope(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("repository", "expected type:name:actions"),
        ("repository:team/app", "expected type:name:actions"),
        ("repository:team/app:", "unknown action ''"),
        ("repository:team/app:pull,,push", "unknown action ''"),
        ("repository:team/app:pull,fetch", "unknown action 'fetch'"),
        ("repository:team/app:PULL", "unknown action 'PULL'"),
        ("Repository:team/app:pull", "resource type 'Repository'"),
        ("repository(:team/app:pull", "resource type"),
        ("repository::pull", "'' is not a valid resource name"),
        ("repository:Team/App:pull", "'Team/App' is not a valid resource name"),
        ("repository:team//app:pull", "is not a valid resource name"),
        ("repository:/team/app:pull", "is not a valid resource name"),
        ("repository:team/app/:pull", "is not a valid resource name"),
        ("repository:team/../app:pull", "is not a valid resource name"),
        ("repository:" + "a" * 256 + ":pull", "is not a valid resource name"),
    ],
    ids=[
        "no-colon",
        "one-colon",
        "empty-actions",
        "empty-action-in-list",
        "unknown-action",
        "upper-case-action",
        "upper-case-type",
        "broken-class",
        "empty-name",
        "upper-case-name",
        "empty-component",
        "leading-slash",
        "trailing-slash",
        "dot-dot",
        "too-long",
    ],
)
def test_parse_scope_invalid(value: str, fragment: str) -> None:
    with pytest.raises(InvalidScopeError) as raised:
        parse_scope(value)
    assert fragment in str(raised.value)


def test_parse_scopes_merges_repeated_and_space_separated() -> None:
    scopes = parse_scopes(
        [
            "repository:team/app:pull repository:team/base:pull",
            "repository:team/app:push",
            "repository:team/app:pull",
        ]
    )
    assert scopes == (
        Scope("repository", "team/app", frozenset({"pull", "push"})),
        Scope("repository", "team/base", frozenset({"pull"})),
    )


def test_parse_scopes_action_order_irrelevant() -> None:
    assert parse_scopes(["repository:a:push,pull"]) == parse_scopes(["repository:a:pull,push"])


def test_parse_scopes_class_merges_with_plain_type() -> None:
    scopes = parse_scopes(["repository(plugin):x:pull", "repository:x:push"])
    assert scopes == (Scope("repository", "x", frozenset({"pull", "push"})),)


@pytest.mark.parametrize("values", [[], [""], ["  "]], ids=["none", "empty", "blank"])
def test_parse_scopes_empty(values: list[str]) -> None:
    assert parse_scopes(values) == ()


def test_parse_scopes_limit() -> None:
    values = [f"repository:r{i}:pull" for i in range(MAX_SCOPES + 1)]
    with pytest.raises(InvalidScopeError, match="too many scopes"):
        parse_scopes(values)
    assert len(parse_scopes(values[:MAX_SCOPES])) == MAX_SCOPES
