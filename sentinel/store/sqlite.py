"""A small SQLite event store: events as JSON documents plus each source's checkpoint.

:meth:`SQLiteStore.commit` writes a batch's events *and* its source's checkpoint in one
transaction.  That is what makes a restart exactly-once: after a crash either both are there
(the source resumes after those events) or neither is (the source reads them again).

WAL mode lets readers (``sentinel status``, tests) look while the daemon writes.
``synchronous=NORMAL`` is enough: a power loss may roll back the last transactions, but events
and checkpoint roll back *together*, so the lines are simply read again from the log file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from sentinel.collectors.sources.base import Batch
from sentinel.event import Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
"""


class SQLiteStore:
    """Events and checkpoints in one SQLite file; safe to share between threads (one lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def commit(self, batch: Batch) -> None:
        """Store one batch's events and its source's checkpoint atomically."""
        self.commit_many((batch,))

    def commit_many(self, batches: Sequence[Batch]) -> None:
        """Store several batches in one transaction (each source keeps its latest checkpoint).

        Batches must be in the order their sources emitted them, so the last checkpoint of a
        source is the one that covers all its events here.
        """
        rows: list[tuple[Any, str]] = []
        latest: dict[str, Mapping[str, Any]] = {}
        for batch in batches:
            rows.extend(_row(event) for event in batch.events)
            latest[batch.source] = batch.checkpoint
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    db.executemany("INSERT INTO events (ts, doc) VALUES (?, ?)", rows)
                db.executemany(
                    "INSERT INTO checkpoints (source, state) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET state = excluded.state",
                    [(source, orjson.dumps(state).decode()) for source, state in latest.items()],
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def checkpoint(self, source: str) -> dict[str, Any] | None:
        """The last committed checkpoint of ``source``, or None if it never committed one."""
        with self._lock:
            row = self._db.execute("SELECT state FROM checkpoints WHERE source = ?", (source,)).fetchone()
        if row is None:
            return None
        state = orjson.loads(row[0])
        return state if isinstance(state, dict) else None

    def count(self) -> int:
        """Number of stored events."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def iter_events(self, batch_size: int = 1000) -> Iterator[Event]:
        """Every stored event in insertion order, read in pages (no long-held lock)."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, doc FROM events WHERE id > ? ORDER BY id LIMIT ?", (last, batch_size)
                ).fetchall()
            if not rows:
                return
            for _id, doc in rows:
                yield orjson.loads(doc)
            last = rows[-1][0]

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # a reader may hold the WAL: still safe
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row(event: Event) -> tuple[Any, str]:
    ts = event.get("@timestamp")
    return (ts if isinstance(ts, str) else None, orjson.dumps(event).decode())
