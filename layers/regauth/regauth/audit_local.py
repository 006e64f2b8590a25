"""The local server's audit sink: log each event, then archive events in batches.

In AWS a log subscription carries audit lines to the archiver function. The local
server has no CloudWatch, so this sink hands the same records to the same
`AuditArchiver` from a background thread, once a second and on close.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from regauth.archive import AuditArchiver
from regauth.audit import AuditEvent, AuditSink
from regauth.errors import ArchiveUnavailableError

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 1.0


class ArchivingAuditSink:
    """Pass every event to `log_sink` and archive the buffered events periodically."""

    def __init__(
        self,
        archiver: AuditArchiver,
        log_sink: AuditSink,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self._archiver = archiver
        self._log_sink = log_sink
        self._interval = interval
        self._buffer: list[dict[str, Any]] = []
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def emit(self, event: AuditEvent) -> None:
        self._log_sink.emit(event)
        with self._buffer_lock:
            self._buffer.append(event.to_record())

    def flush(self) -> None:
        """Archive the buffered events. On failure they stay buffered for the next flush."""
        with self._flush_lock:
            with self._buffer_lock:
                records, self._buffer = self._buffer, []
            if not records:
                return
            try:
                self._archiver.archive(records)
            except ArchiveUnavailableError:
                logger.exception("audit archive failed, will retry", extra={"events": len(records)})
                with self._buffer_lock:
                    self._buffer[:0] = records

    def start(self) -> None:
        """Flush every `interval` seconds in a daemon thread until `close`."""
        self._thread = threading.Thread(target=self._run, name="regauth-audit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flushing thread and archive what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
