"""Repository patterns: anchored globs over repository names.

A pattern is matched against the whole repository name, never a part of it:

- `*` matches any characters within one path segment and never crosses `/`, so
  `team/*` matches `team/app` but neither `team/app/web` nor `xteam/app`.
- `**` must be a whole segment and matches one or more segments, so `team/**`
  matches `team/app` and `team/app/web`. It does not match `team` itself, because a
  grant on everything below a namespace should not also grant the namespace's own
  repository. Write `team` as a second pattern to include it. `**` alone matches
  every repository.
- Every other character matches itself. Matching is case-sensitive.

Patterns use the characters of repository names: lower-case letters, digits, `.`,
`_`, `-` and `/`. Clients may send names with a registry host first, such as
`localhost:5000/team/app`. So the first segment of a pattern may also be a host
`host[:port]`, which must contain `.` or `:`. A host has letters of either case,
digits, `.` and `-`, and its port is numeric. Such a pattern needs a repository path
after the host.
`{name}` is a placeholder for the requesting principal's own name, so that one rule
can give everyone a personal namespace such as `users/{name}/**`. The policy compiler
replaces it with each principal's name (`substitute_name`) before anything is matched,
and the result must be a valid pattern. Any other `{` or `}` is rejected.

Names are checked against the repository name grammar of distribution's `reference`
package before matching: path components `[a-z0-9]+` joined by `.`, `_`, `__` or
dashes, an optional host first (containing `.` or `:`, or `localhost`), and at most 255
characters. So `**` never matches a name a registry would reject, such as
`team/../app` or `Team/app`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

# distribution's reference package (reference.go, NameTotalLengthMax) limits a
# repository name, including any domain, to 255 characters.
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?")

# Characters allowed in a pattern segment, with `*` as the wildcard.
_PATH_SEGMENT = re.compile(r"[a-z0-9._*-]+")
_HOST_SEGMENT = re.compile(r"[A-Za-z0-9.*-]+(?::[0-9*]+)?")
_PATH_CHARACTER = re.compile(r"[a-z0-9._*-]")

_PATH_CHARACTERS_HINT = "lower-case letters, digits, '.', '_', '-', '/' and the wildcard '*'"

NAME_PLACEHOLDER = "{name}"
# Stands in for a name while a pattern with a placeholder is checked: any valid path
# component gives the same verdict on the characters around the placeholder.
_PLACEHOLDER_SAMPLE = "x"


def is_repository_name(name: str) -> bool:
    """Return whether `name` is a valid repository name, with or without a host first."""
    if len(name) > MAX_NAME_LENGTH:
        return False
    if _REPOSITORY_PATH.fullmatch(name):
        return True

    host, _, path = name.partition("/")
    return _is_host(host) and _REPOSITORY_PATH.fullmatch(path) is not None


def _is_host(segment: str) -> bool:
    # Docker's client (splitDockerDomain in distribution's reference package) reads the
    # first segment as a host when it contains '.' or ':' or is `localhost`. Newer
    # versions also accept a segment with upper-case letters, which is left out here so
    # that `Team/app` stays an invalid name instead of becoming a host `Team`.
    looks_like_host = "." in segment or ":" in segment or segment == "localhost"
    return looks_like_host and _DOMAIN.fullmatch(segment) is not None


def has_placeholder(pattern: str) -> bool:
    """Return whether the pattern contains the `{name}` placeholder."""
    return NAME_PLACEHOLDER in pattern


def substitute_name(pattern: str, name: str) -> str:
    """Replace every `{name}` in the pattern with `name`."""
    return pattern.replace(NAME_PLACEHOLDER, name)


def validate_pattern(pattern: str) -> str | None:
    """Check a repository pattern and return the error message, or None if it is valid.

    The `{name}` placeholder is accepted. Check the pattern again after
    `substitute_name`, because a name may contain characters that a repository path
    does not allow.
    """
    return next(_pattern_errors(pattern), None)


def _pattern_errors(pattern: str) -> Iterator[str]:
    sample = substitute_name(pattern, _PLACEHOLDER_SAMPLE)
    if not pattern:
        yield "repository pattern is empty"
    elif len(sample) > MAX_NAME_LENGTH:
        yield (
            f"repository pattern is longer than {MAX_NAME_LENGTH} characters, "
            "the maximum length of a repository name"
        )
    elif "{" in sample or "}" in sample:
        yield (
            f"repository pattern {pattern!r} contains '{{' or '}}' outside the only "
            f"placeholder {NAME_PLACEHOLDER}"
        )
    elif pattern.startswith("/") or pattern.endswith("/"):
        yield f"repository pattern {pattern!r} must not start or end with '/'"
    else:
        segments = sample.split("/")
        for index, segment in enumerate(segments):
            yield from _segment_errors(pattern, segment, first=index == 0)
        if len(segments) == 1 and not _PATH_SEGMENT.fullmatch(sample):
            yield (
                f"repository pattern {pattern!r} has a host but no repository path: "
                "write it as 'host:port/path'"
            )


def _segment_errors(pattern: str, segment: str, *, first: bool) -> Iterator[str]:
    is_host = first and ("." in segment or ":" in segment) and _HOST_SEGMENT.fullmatch(segment)
    if not segment:
        yield f"repository pattern {pattern!r} contains an empty segment ('//')"
    elif "***" in segment:
        yield (
            f"repository pattern {pattern!r} contains '***': use '*' within a segment "
            "or '**' as a whole segment"
        )
    elif "**" in segment and segment != "**":
        # Inside a segment, `a**b` could mean either wildcard, and the two differ on
        # whether the match may cross `/`, so the pattern is rejected, not guessed.
        yield (
            f"repository pattern {pattern!r} uses '**' inside the segment {segment!r}: "
            "'**' must be a whole segment such as 'team/**', and '*' matches within a segment"
        )
    elif _PATH_SEGMENT.fullmatch(segment) or is_host:
        pass
    elif first and ":" in segment:
        yield (
            f"repository pattern {pattern!r} has an invalid host segment {segment!r}: "
            "a host contains letters, digits, '.' and '-', followed by an optional ':port'"
        )
    else:
        yield _character_error(pattern, segment)


def _character_error(pattern: str, segment: str) -> str:
    invalid = next(character for character in segment if not _PATH_CHARACTER.match(character))
    kind = "upper-case letter" if invalid.isupper() else "invalid character"
    return (
        f"repository pattern {pattern!r} contains the {kind} {invalid!r}: "
        f"repository paths allow {_PATH_CHARACTERS_HINT}"
    )


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> tuple[str, ...]:
    """Validate a repository pattern and split it into its `/`-separated segments.

    Raises ValueError with the message of `validate_pattern` if the pattern is invalid,
    and if it still contains `{name}`, which must be substituted first.
    """
    error = validate_pattern(pattern)
    if error is not None:
        raise ValueError(error)
    if has_placeholder(pattern):
        raise ValueError(f"repository pattern {pattern!r} still contains {NAME_PLACEHOLDER}")
    return tuple(pattern.split("/"))


def _segment_matches(pattern: str, segment: str) -> bool:
    """Match one segment against a glob whose only wildcard is `*`.

    The classic two-pointer algorithm backtracks only to the most recent `*`, so it
    runs in O(len(pattern) * len(segment)) time. A regular expression with several
    `[^/]*` groups can take exponential time on a crafted name instead.
    """
    p = s = 0
    star = -1
    resume = 0
    while s < len(segment):
        if p < len(pattern) and pattern[p] != "*" and pattern[p] == segment[s]:
            p += 1
            s += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, s
            p += 1
        elif star != -1:
            p = star + 1
            resume += 1
            s = resume
        else:
            return False
    return all(character == "*" for character in pattern[p:])


def _segments_match(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """Match name segments against pattern segments, where `**` takes one or more.

    `reachable[j]` is true when the pattern segments seen so far match the first `j`
    name segments. Each pattern segment updates it in one pass, so the whole match
    costs O(len(pattern) * len(name)) segment comparisons.
    """
    reachable = [True] + [False] * len(name)
    for segment in pattern:
        following = [False] * (len(name) + 1)
        if segment == "**":
            for j in range(1, len(name) + 1):
                following[j] = following[j - 1] or reachable[j - 1]
        else:
            for j in range(1, len(name) + 1):
                following[j] = reachable[j - 1] and _segment_matches(segment, name[j - 1])
        reachable = following
    return reachable[len(name)]


def pattern_matches(pattern: str, name: str) -> bool:
    """Return whether the repository pattern matches the whole of `name`.

    A name that is not a valid repository name matches no pattern. Raises ValueError
    if the pattern itself is invalid.
    """
    segments = compile_pattern(pattern)
    if not is_repository_name(name):
        return False
    return _segments_match(segments, tuple(name.split("/")))
