"""Logging: plain text or one JSON object per line (LOG_JSON=true), request id on every line.

Records go through a queue to a listener thread, so the event loop never writes to stderr itself.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time

from service.context import request_id_var

_EXTRA = ("method", "path", "status", "duration_ms")
_writer: BatchWriter | None = None


class _Stamp:
    """UTC timestamps, formatted once per second (strftime per line costs more than the rest of the line)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = _Stamp()

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "-")
        line = f"{self._stamp(record.created)} {record.levelname} {record.name} [{rid}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = _Stamp()

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self._stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in _EXTRA:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class RequestIdQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: the loop pays for the record, not for its formatting.

    (The stock ``prepare`` formats the message on the calling thread and copies the record, which is for queues
    that cross processes; this queue stays in the process.) The request id is captured here, on the loop
    thread, where the context variable is set."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return record


class BatchWriter(threading.Thread):
    """Formats and writes queued records in batches: one write and one flush per batch, not per line."""

    def __init__(self, q: queue.SimpleQueue[logging.LogRecord | None], formatter: logging.Formatter) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.q = q
        self.formatter = formatter

    def run(self) -> None:
        while True:
            first = self.q.get()
            batch = [first]
            while len(batch) < 1000:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            lines = [self._format(r) for r in batch if r is not None]
            if lines:
                sys.stderr.write("\n".join(lines) + "\n")
                sys.stderr.flush()
            if None in batch:
                return

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.formatter.format(record)
        except Exception:  # a broken record must not stop the writer
            return f"unformattable log record from {record.name}"

    def stop(self) -> None:
        self.q.put(None)
        self.join(timeout=5)


def configure(level: str, *, as_json: bool, access_log: bool) -> None:
    """Route every record through the writer thread at ``level``.

    Access lines are INFO records like any other: they follow ``level`` (as uvicorn's own access log does), and
    ``access_log=False`` silences them at every level."""
    global _writer
    formatter: logging.Formatter = JsonFormatter() if as_json else TextFormatter()
    # A LogRecord otherwise walks the stack for the caller's file and line and looks up thread and process
    # names: none of it is printed, and the access log makes one record per request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    q: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [RequestIdQueueHandler(q)]
    root.setLevel(level.upper())
    logging.getLogger("service.access").setLevel(logging.NOTSET if access_log else logging.CRITICAL + 1)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per downstream call is noise
    if _writer is not None:
        _writer.stop()
    _writer = BatchWriter(q, formatter)
    _writer.start()
    atexit.register(_writer.stop)


def shutdown() -> None:
    """Write out every queued record and stop the writer (before an exit that skips ``atexit``)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None
