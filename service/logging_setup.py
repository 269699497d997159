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

from service.context import request_id_var

_EXTRA = ("method", "path", "status", "duration_ms")
_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
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
    """Captures the request id on the loop thread, where the context variable is set."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        prepared: logging.LogRecord = super().prepare(record)
        return prepared


def configure(level: str, *, as_json: bool, access_log: bool) -> None:
    global _listener
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [RequestIdQueueHandler(q)]
    root.setLevel(level.upper())
    logging.getLogger("service.access").setLevel(logging.INFO if access_log else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per downstream call is noise
    if _listener is not None:
        _listener.stop()
    _listener = logging.handlers.QueueListener(q, stream, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
