"""Structured logging to stderr: readable text for a terminal, one JSON object a line for journald/SIEMs.

Extra context is passed the standard way, ``log.info("...", extra={"source": name})``; the text
format appends it as ``key=value``, the JSON format as fields.  Messages are written by the
daemon; attacker-controlled text only ever appears as a value, which JSON escapes.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final, TextIO

import orjson

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO sentinel.daemon: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"@timestamp", "log.level", "log.logger", "message", …extras}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "@timestamp": _iso(record.created),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``fmt`` (text/json)."""
    from sentinel.wallet import RedactFilter

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # Every wallet secret the daemon has decrypted is masked in whatever is logged.
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if not getattr(old, "sentinel_keep", False):  # e.g. the status command's recent records
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # watchdog logs every inotify detail at debug; keep it to warnings.
    logging.getLogger("watchdog").setLevel(max(logging.WARNING, root.level))
