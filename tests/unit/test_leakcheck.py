"""The session-wide secret leak check must find secrets, and only secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.leakcheck import SecretLeakCollector

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-value-for-the-leak-test"


def test_collector_finds_secret_in_text() -> None:
    collector = SecretLeakCollector()
    collector.register_secret(SECRET)
    collector.record_text("log record of regauth", f"prefix {SECRET} suffix")
    leaks = collector.find_leaks()

    assert len(leaks) == 1
    assert "log record of regauth" in leaks[0]
    assert SECRET not in leaks[0]


def test_collector_finds_secret_in_audit_event() -> None:
    collector = SecretLeakCollector()
    collector.register_secret(SECRET)
    collector.record_audit({"event_type": "token.issued", "details": {"message": SECRET}})
    assert len(collector.find_leaks()) == 1


def test_collector_finds_secret_in_log_file(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(f"Authorization: {SECRET}\n")
    collector = SecretLeakCollector()
    collector.register_secret(SECRET)
    collector.register_log_file(log)
    assert len(collector.find_leaks()) == 1


def test_collector_clean_text_passes() -> None:
    collector = SecretLeakCollector()
    collector.register_secret(SECRET)
    collector.record_text("log record of regauth", "nothing to see")
    assert collector.find_leaks() == []


def test_collector_ignores_short_values() -> None:
    collector = SecretLeakCollector()
    collector.register_secret("bob")
    assert collector.secrets == set()


def test_session_fails_on_logged_secret(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        "from tests.leakcheck import (pytest_configure, pytest_runtest_logreport,\n"
        "    pytest_sessionfinish, pytest_unconfigure)\n"
    )
    pytester.makepyfile(
        f"""
        import logging
        from tests.leakcheck import register_secret

        def test_logs_secret():
            register_secret({SECRET!r})
            logging.getLogger("regauth.example").warning("login %s", {SECRET!r})
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*secret leaks*", "*secret #1 (30 characters) found in*"])
    assert SECRET not in result.stdout.str().split("secret leaks")[1]


def test_session_passes_without_leak(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        "from tests.leakcheck import (pytest_configure, pytest_runtest_logreport,\n"
        "    pytest_sessionfinish, pytest_unconfigure)\n"
    )
    pytester.makepyfile(
        f"""
        import logging
        from tests.leakcheck import register_secret

        def test_logs_nothing_secret():
            register_secret({SECRET!r})
            logging.getLogger("regauth.example").warning("login failed")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
