"""A pytest plugin that fails the session if a test secret appears in a log or audit event.

Tests register every password, Authorization header, access token and refresh token
they use with `register_secret`. During the whole session the plugin collects:

- every record passed to a `logging` handler, which includes Powertools' JSON lines,
- every audit event given to `MemoryAuditSink` or `LoggerAuditSink`,
- the captured stdout, stderr and log sections of every test report,
- log files of processes the tests start, registered with `register_log_file`.

At the end of the session it searches all of them for every secret and sets the exit
status to failure when one is found. It reports where, never the secret itself. It
also checks every collected audit event against `docs/audit-event.schema.json`.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from regauth.audit import AuditEvent, LoggerAuditSink, MemoryAuditSink

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "audit-event.schema.json"
# Shorter values, such as the user name `bob`, would match ordinary text.
MIN_SECRET_LENGTH = 8


class SecretLeakCollector:
    """Collect secrets, texts and audit records, and find secrets inside the texts."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.texts: list[tuple[str, str]] = []
        self.log_files: list[Path] = []
        self.audit_records: list[dict[str, Any]] = []

    def register_secret(self, value: str | None) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            self.secrets.add(value)

    def record_text(self, source: str, text: str) -> None:
        if text:
            self.texts.append((source, text))

    def record_audit(self, record: dict[str, Any]) -> None:
        self.audit_records.append(record)

    def register_log_file(self, path: Path) -> None:
        self.log_files.append(path)

    def find_leaks(self) -> list[str]:
        """Return one description per (secret, place) where a secret was found."""
        leaks = []
        for source, text in self._all_texts():
            for number, secret in enumerate(sorted(self.secrets), start=1):
                if secret in text:
                    leaks.append(f"secret #{number} ({len(secret)} characters) found in {source}")
        return leaks

    def invalid_audit_records(self, schema: dict[str, Any]) -> list[str]:
        """Return one message per collected audit record that violates `schema`."""
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        problems = []
        for record in self.audit_records:
            for error in validator.iter_errors(record):
                location = "/".join(str(part) for part in error.absolute_path)
                problems.append(f"{record.get('event_type')} at /{location}: {error.message}")
        return problems

    def _all_texts(self) -> Iterator[tuple[str, str]]:
        yield from self.texts
        for index, record in enumerate(self.audit_records):
            yield f"audit event {index} ({record.get('event_type')})", json.dumps(record)
        for path in self.log_files:
            if path.is_file():
                yield f"log file {path}", path.read_text(errors="replace")


_collector: SecretLeakCollector | None = None


def active_collector() -> SecretLeakCollector | None:
    return _collector


def register_secret(value: str | None) -> None:
    """Register a value that must never appear in a log line or audit event."""
    if _collector is not None:
        _collector.register_secret(value)


def register_log_file(path: Path) -> None:
    """Register a log file that is searched for secrets at the end of the session."""
    if _collector is not None:
        _collector.register_log_file(path)


def _describe_record(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.__dict__)]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


def _patch(cls: type, name: str, wrapper: Callable[[Any], Any]) -> Callable[[], None]:
    original = getattr(cls, name)
    setattr(cls, name, wrapper(original))
    return lambda: setattr(cls, name, original)


def pytest_configure(config: pytest.Config) -> None:
    global _collector  # noqa: PLW0603 - one collector per test session
    collector = SecretLeakCollector()
    _collector = collector

    def wrap_call_handlers(original: Any) -> Any:
        def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
            collector.record_text(f"log record of {record.name}", _describe_record(record))
            original(self, record)

        return call_handlers

    def wrap_emit(original: Any) -> Any:
        def emit(self: Any, event: AuditEvent) -> None:
            collector.record_audit(event.to_record())
            original(self, event)

        return emit

    config.stash[_RESTORE] = [
        _patch(logging.Logger, "callHandlers", wrap_call_handlers),
        _patch(MemoryAuditSink, "emit", wrap_emit),
        _patch(LoggerAuditSink, "emit", wrap_emit),
    ]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _collector is None:
        return
    for title, content in report.sections:
        _collector.record_text(f"{title} of {report.nodeid}", content)
    _collector.record_text(f"report of {report.nodeid}", str(report.longrepr or ""))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _collector is None:
        return
    leaks = _collector.find_leaks()
    schema = json.loads(SCHEMA_PATH.read_text())
    invalid = _collector.invalid_audit_records(schema)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for title, problems in (("secret leaks", leaks), ("invalid audit events", invalid)):
        if not problems:
            continue
        if reporter is not None:
            reporter.section(title, sep="=", red=True)
            for problem in problems[:50]:
                reporter.line(problem)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    global _collector  # noqa: PLW0603 - one collector per test session
    for restore in config.stash.get(_RESTORE, []):
        restore()
    _collector = None


_RESTORE = pytest.StashKey[list[Callable[[], None]]]()
