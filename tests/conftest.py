"""Session-wide checks: no test secret in any log line or audit event, valid audit events."""

from __future__ import annotations

from tests.leakcheck import (
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_unconfigure,
)

pytest_plugins = ["pytester"]

__all__ = [
    "pytest_configure",
    "pytest_runtest_logreport",
    "pytest_sessionfinish",
    "pytest_unconfigure",
]
