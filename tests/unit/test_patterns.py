"""Tests for repository patterns: anchoring, wildcards, hosts and validation messages."""

from __future__ import annotations

import pytest

from regauth import patterns
from regauth.patterns import (
    MAX_NAME_LENGTH,
    compile_pattern,
    is_repository_name,
    pattern_matches,
    substitute_name,
    validate_pattern,
)

MATCH_CASES = [
    # (pattern, name, expected)
    ("team/app", "team/app", True),
    ("team/app", "team/app2", False),
    ("team/app", "xteam/app", False),
    ("team/app", "team/app/web", False),
    ("team/*", "team/app", True),
    ("team/*", "xteam/app", False),
    ("team/*", "team/app/web", False),
    ("team/*", "team", False),
    ("team/**", "team/app", True),
    ("team/**", "team/app/web", True),
    ("team/**", "team/a/b/c/d", True),
    ("team/**", "team", False),
    ("team/**", "teamx/app", False),
    ("team/**", "other/team/app", False),
    ("**", "app", True),
    ("**", "team/app/web", True),
    ("**", "localhost:5000/team/app", True),
    ("*", "app", True),
    ("*", "team/app", False),
    ("team/app-*", "team/app-web", True),
    ("team/app-*", "team/app-web/x", False),
    ("team/*-web", "team/app-web", True),
    ("team/*-web", "team/app-api", False),
    ("*/app", "team/app", True),
    ("*/app", "a/b/app", False),
    ("**/app", "a/b/app", True),
    ("**/app", "app", False),
    ("team/**/cache", "team/x/cache", True),
    ("team/**/cache", "team/x/y/cache", True),
    ("team/**/cache", "team/cache", False),
    ("team/a.b", "team/a.b", True),
    ("team/a.b", "team/axb", False),
    ("localhost:5000/team/*", "localhost:5000/team/app", True),
    ("localhost:5000/team/*", "team/app", False),
    ("localhost:5000/team/*", "localhost:5001/team/app", False),
    ("team/*", "localhost:5000/team/app", False),
    ("registry.example.com/**", "registry.example.com/team/app", True),
    ("*:5000/team/app", "localhost:5000/team/app", True),
    ("**", "Team/app", False),
    ("**", "team/../app", False),
    ("**", "team//app", False),
    ("**", "", False),
    ("team/*", "team/App", False),
]


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    MATCH_CASES,
    ids=[f"{pattern}|{name or 'empty'}" for pattern, name, _ in MATCH_CASES],
)
def test_pattern_matches_table(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


VALID_PATTERNS = [
    "team/app",
    "team/*",
    "team/**",
    "**",
    "*",
    "team/app-*",
    "a/b_c/d.e-f",
    "localhost:5000/team/**",
    "localhost/team/app",
    "registry.example.com/team/*",
    "Registry.Example.com:443/team/app",
    "*:5000/**",
]


@pytest.mark.parametrize("pattern", VALID_PATTERNS, ids=VALID_PATTERNS)
def test_validate_pattern_valid(pattern: str) -> None:
    assert validate_pattern(pattern) is None


INVALID_PATTERNS = [
    # (pattern, expected message)
    ("", "repository pattern is empty"),
    ("/team/app", "repository pattern '/team/app' must not start or end with '/'"),
    ("team/app/", "repository pattern 'team/app/' must not start or end with '/'"),
    ("team//app", "repository pattern 'team//app' contains an empty segment ('//')"),
    (
        "team/***",
        "repository pattern 'team/***' contains '***': use '*' within a segment "
        "or '**' as a whole segment",
    ),
    (
        "team/a**b",
        "repository pattern 'team/a**b' uses '**' inside the segment 'a**b': '**' must be "
        "a whole segment such as 'team/**', and '*' matches within a segment",
    ),
    (
        "team/**x",
        "repository pattern 'team/**x' uses '**' inside the segment '**x': '**' must be "
        "a whole segment such as 'team/**', and '*' matches within a segment",
    ),
    (
        "Team/app",
        "repository pattern 'Team/app' contains the upper-case letter 'T': repository paths "
        "allow lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'",
    ),
    (
        "team/App",
        "repository pattern 'team/App' contains the upper-case letter 'A': repository paths "
        "allow lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'",
    ),
    (
        "team/a+b",
        "repository pattern 'team/a+b' contains the invalid character '+': repository paths "
        "allow lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'",
    ),
    (
        "team/a?",
        "repository pattern 'team/a?' contains the invalid character '?': repository paths "
        "allow lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'",
    ),
    (
        "team/a b",
        "repository pattern 'team/a b' contains the invalid character ' ': repository paths "
        "allow lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'",
    ),
    (
        "team/host:5000",
        "repository pattern 'team/host:5000' contains the invalid character ':': repository "
        "paths allow lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'",
    ),
    (
        "localhost:abc/team",
        "repository pattern 'localhost:abc/team' has an invalid host segment 'localhost:abc': "
        "a host contains letters, digits, '.' and '-', followed by an optional ':port'",
    ),
    (
        "my_host:5000/team",
        "repository pattern 'my_host:5000/team' has an invalid host segment 'my_host:5000': "
        "a host contains letters, digits, '.' and '-', followed by an optional ':port'",
    ),
    (
        "localhost:5000",
        "repository pattern 'localhost:5000' has a host but no repository path: "
        "write it as 'host:port/path'",
    ),
    (
        "users/{user}/**",
        "repository pattern 'users/{user}/**' contains '{' or '}' outside the only "
        "placeholder {name}",
    ),
    (
        "a" * (MAX_NAME_LENGTH + 1),
        "repository pattern is longer than 255 characters, the maximum length of a repository name",
    ),
]


@pytest.mark.parametrize(
    ("pattern", "message"),
    INVALID_PATTERNS,
    ids=[pattern[:20] or "empty" for pattern, _ in INVALID_PATTERNS],
)
def test_validate_pattern_invalid(pattern: str, message: str) -> None:
    assert validate_pattern(pattern) == message


def test_compile_pattern_invalid_raises() -> None:
    with pytest.raises(ValueError, match="contains '\\*\\*\\*'"):
        compile_pattern("team/***")


def test_compile_pattern_is_cached() -> None:
    assert compile_pattern("cache/check/*") is compile_pattern("cache/check/*")


def test_compile_pattern_splits_segments() -> None:
    assert compile_pattern("team/**/a*b") == ("team", "**", "a*b")


def test_pattern_matches_dot_is_literal() -> None:
    assert pattern_matches("team/a.b", "team/a.b") is True
    assert pattern_matches("team/a.b", "team/axb") is False


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("team/*-*-*-*-*-*-*-prod", "team/" + "a-" * 120 + "x"),
        ("**/**/**/**/**/**/**/x", "/".join(["a"] * 60) + "/y"),
        ("*a*a*a*a*a*a*a*a*b", "a" * 250),
    ],
    ids=["stars-in-segment", "many-double-stars", "star-runs"],
)
def test_pattern_matches_crafted_names(pattern: str, name: str) -> None:
    # These inputs make a backtracking regular expression run for seconds to minutes.
    assert pattern_matches(pattern, name) is False


def test_pattern_matches_segment_comparisons_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    original = patterns._segment_matches

    def counting(pattern: str, segment: str) -> bool:
        calls.append((pattern, segment))
        return original(pattern, segment)

    monkeypatch.setattr(patterns, "_segment_matches", counting)
    name = "/".join(["a"] * 60) + "/y"
    assert pattern_matches("**/b/**/b/**/x", name) is False
    # One comparison per (literal pattern segment, name segment) pair at most.
    assert len(calls) <= 3 * 61


def test_pattern_matches_invalid_pattern_raises() -> None:
    with pytest.raises(ValueError, match="empty segment"):
        pattern_matches("team//app", "team/app")


def test_pattern_matches_checks_pattern_first() -> None:
    # An invalid pattern is a bug in the stored policy and must surface even when the
    # requested name would not match anything.
    with pytest.raises(ValueError, match="upper-case"):
        pattern_matches("Team/**", "Team/app")


NAME_CASES = [
    ("app", True),
    ("team/app", True),
    ("team/app-web", True),
    ("team/app--web", True),
    ("team/app_web", True),
    ("team/app__web", True),
    ("team/a.b", True),
    ("localhost/team", True),
    ("localhost:5000/team/app", True),
    ("registry.example.com/team", True),
    ("Registry.Example.com:443/team", True),
    ("team/app___web", False),
    ("team/app..web", False),
    ("team/-app", False),
    ("team/app-", False),
    ("team/.app", False),
    ("team/App", False),
    ("Team/app", False),
    ("team/", False),
    ("/team", False),
    ("team//app", False),
    ("localhost:5000", False),
    ("localhost:abc/team", False),
    ("", False),
    ("a" * MAX_NAME_LENGTH, True),
    ("a" * (MAX_NAME_LENGTH + 1), False),
]


@pytest.mark.parametrize(
    ("name", "expected"), NAME_CASES, ids=[name[:30] or "empty" for name, _ in NAME_CASES]
)
def test_is_repository_name_table(name: str, expected: bool) -> None:
    assert is_repository_name(name) is expected


@pytest.mark.parametrize(
    ("pattern", "name", "repository", "expected"),
    [
        ("users/{name}/**", "alice", "users/alice/app", True),
        ("users/{name}/**", "alice", "users/bob/app", False),
        ("users/{name}/**", "alice", "users/alice", False),
        ("{name}-*", "ci", "ci-cache", True),
        ("localhost:5000/{name}/*", "ci", "localhost:5000/ci/app", True),
        ("localhost:5000/{name}/*", "ci", "ci/app", False),
    ],
    ids=["own", "other", "namespace-itself", "prefix", "host-port", "host-port-missing"],
)
def test_placeholder_substituted(pattern: str, name: str, repository: str, expected: bool) -> None:
    assert validate_pattern(pattern) is None
    assert pattern_matches(substitute_name(pattern, name), repository) is expected


def test_placeholder_must_be_substituted() -> None:
    with pytest.raises(ValueError, match="still contains"):
        compile_pattern("users/{name}/**")
