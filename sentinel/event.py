"""The one record type that flows through Sentinel.

An :data:`Event` is a flat mapping from Elastic Common Schema (ECS) dotted field names to
values: ``{"@timestamp": ..., "event.kind": "event", "source.ip": ...}``.  Collectors emit
them, the rules engine reads them, findings and responses are events too, and storage keeps
them unchanged.  A plain ``dict`` keeps the hot path allocation-light; treat an event as
immutable once it has left the stage that created it (copy with :func:`derive`).

Fields beyond ECS live under ``sentinel.*``:

``sentinel.attempts``
    How many attempts one line stands for (``message repeated 3 times: [...]``,
    ``PAM 2 more authentication failures``).  Absent means 1.
``sentinel.parse_error``
    Why a line that looked like ours could not be decoded cleanly (invalid UTF-8, NUL bytes,
    an over-long line); the raw text is kept in ``event.original``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from hashlib import blake2b
from typing import Any, Final

import orjson

Event = dict[str, Any]

# ECS field names used by the collectors.  Keeping them as constants documents the schema in
# one place; the hot paths use the literal strings for speed.
TIMESTAMP: Final = "@timestamp"
EVENT_KIND: Final = "event.kind"
EVENT_CATEGORY: Final = "event.category"
EVENT_TYPE: Final = "event.type"
EVENT_ACTION: Final = "event.action"
EVENT_OUTCOME: Final = "event.outcome"
EVENT_DATASET: Final = "event.dataset"
EVENT_ORIGINAL: Final = "event.original"
SOURCE_ADDRESS: Final = "source.address"
SOURCE_IP: Final = "source.ip"
SOURCE_PORT: Final = "source.port"
SOURCE_DOMAIN: Final = "source.domain"
USER_NAME: Final = "user.name"
USER_EFFECTIVE_NAME: Final = "user.effective.name"
PROCESS_NAME: Final = "process.name"
PROCESS_PID: Final = "process.pid"
PROCESS_COMMAND_LINE: Final = "process.command_line"
SERVICE_NAME: Final = "service.name"
HOST_HOSTNAME: Final = "host.hostname"
LOG_FILE_PATH: Final = "log.file.path"
LOG_OFFSET: Final = "log.offset"
MESSAGE: Final = "message"
URL_ORIGINAL: Final = "url.original"
URL_PATH: Final = "url.path"
URL_QUERY: Final = "url.query"
HTTP_METHOD: Final = "http.request.method"
HTTP_STATUS: Final = "http.response.status_code"
HTTP_VERSION: Final = "http.version"
USER_AGENT: Final = "user_agent.original"
ATTEMPTS: Final = "sentinel.attempts"
PARSE_ERROR: Final = "sentinel.parse_error"

#: Every field a collector may set, for documentation, tests and storage mappings.
COLLECTOR_FIELDS: Final = frozenset(
    {
        TIMESTAMP,
        EVENT_KIND,
        EVENT_CATEGORY,
        EVENT_TYPE,
        EVENT_ACTION,
        EVENT_OUTCOME,
        EVENT_DATASET,
        EVENT_ORIGINAL,
        SOURCE_ADDRESS,
        SOURCE_IP,
        SOURCE_PORT,
        SOURCE_DOMAIN,
        USER_NAME,
        USER_EFFECTIVE_NAME,
        PROCESS_NAME,
        PROCESS_PID,
        PROCESS_COMMAND_LINE,
        SERVICE_NAME,
        HOST_HOSTNAME,
        LOG_FILE_PATH,
        LOG_OFFSET,
        MESSAGE,
        URL_ORIGINAL,
        URL_PATH,
        URL_QUERY,
        HTTP_METHOD,
        HTTP_STATUS,
        HTTP_VERSION,
        USER_AGENT,
        ATTEMPTS,
        PARSE_ERROR,
        "url.domain",
        "user.id",
        "user.target.name",
        "process.working_directory",
        "related.user",
        "related.ip",
    }
)


def attempts(event: Mapping[str, Any]) -> int:
    """Number of attempts an event stands for (1 unless the line said otherwise)."""
    count = event.get(ATTEMPTS, 1)
    return count if isinstance(count, int) and count > 0 else 1


def is_auth_failure(event: Mapping[str, Any]) -> bool:
    """True for a failed authentication, the event every brute-force rule counts."""
    return event.get(EVENT_OUTCOME) == "failure" and "authentication" in event.get(EVENT_CATEGORY, ())


def derive(event: Mapping[str, Any], **changes: Any) -> Event:
    """A copy of ``event`` with dotted fields replaced (``derive(e, **{"event.kind": "alert"})``)."""
    new = dict(event)
    new.update(changes)
    return new


def nested(event: Mapping[str, Any]) -> dict[str, Any]:
    """The same event as nested objects (``{"source": {"ip": ...}}``), as Elasticsearch stores it."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("@"):
            out[key] = value
            continue
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def flatten(doc: Mapping[str, Any], prefix: str = "") -> Event:
    """Inverse of :func:`nested`: accept either shape and return dotted fields."""
    out: Event = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def missing_fields(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """Field names used by ``events`` that are not in :data:`COLLECTOR_FIELDS` (a schema check)."""
    return {k for e in events for k in e if k not in COLLECTOR_FIELDS}


_MINUTES: dict[str, float] = {}


def event_time(timestamp: str) -> float:
    """Seconds since the epoch of an ECS ``@timestamp`` (cached per minute: this is on the hot path)."""
    if len(timestamp) >= 20 and timestamp[16] == ":" and timestamp[-1] == "Z":
        base = _MINUTES.get(timestamp[:16])
        if base is None:
            if len(_MINUTES) > 100_000:
                _MINUTES.clear()
            base = _MINUTES[timestamp[:16]] = datetime.fromisoformat(timestamp[:16] + "+00:00").timestamp()
        return base + float(timestamp[17:-1])
    return datetime.fromisoformat(timestamp).timestamp()


def event_id(event: Mapping[str, Any]) -> str:
    """A deterministic id: the same line (or finding) always gets the same id, so re-sends are idempotent."""
    given = event.get("event.id")
    if isinstance(given, str):
        return given
    key = (
        event.get("host.hostname"),
        event.get("log.file.path"),
        event.get("log.offset"),
        event.get("@timestamp"),
        event.get("event.kind"),
        event.get("rule.id"),
        event.get("message"),
    )
    return blake2b(orjson.dumps(key), digest_size=8).hexdigest()
