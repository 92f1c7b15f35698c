"""The embedded event store: SQLite, partitioned by month, hash-chained, with the sources' checkpoints.

Layout (``path`` is ``[store] path``, by default ``<state_dir>/events.db``)::

    events.db            the live partition: this month's records, every source's checkpoint,
                         the chain head, the month catalogue
    events-2025-01.db    sealed partitions, one per past month (read-mostly)
    events-2024-12.db    …
    events.db.lock       serialises maintenance (sealing, retention, erasure, backup)

Why partitions by *arrival* month, with the live month in one file.  The daemon's guarantee is
that a batch's events and its source's checkpoint commit in one transaction.  SQLite commits
atomically within one file only: a transaction over ATTACHed databases in WAL mode is atomic per
file, not as a whole, after a crash.  So every commit goes to one file, ``events.db``, which
holds the checkpoints; that also keeps it readable by anyone who opened it before
(``SELECT doc FROM events``, ``SELECT state FROM checkpoints``).  Once a month is over, the daily
maintenance job (:func:`sentinel.store.maintenance.maintain`) copies its records into
``events-YYYY-MM.db``, syncs and renames it into place, and only then deletes them from the live
file (in short transactions, so the writer is never held up long).  Readers ignore live records
at or below ``head.sealed_through``, so a crash in between shows nothing twice.  Months are
arrival months, not event-time months: the chain is then one append-only sequence cut into
consecutive pieces, a replayed old log is not dropped the day it is stored, and retention keeps
every record at least ``retention_days`` after it arrived.  Queries by event time stay cheap:
each sealed partition records its time span and is skipped when outside the range.

Durability: WAL with ``synchronous=FULL``: each commit fsyncs the WAL before
:meth:`SQLiteStore.commit_many` returns, so an acknowledged batch survives SIGKILL *and* power
loss.  (``NORMAL`` would survive SIGKILL but may lose the last commits on power loss; for log
lines that would only mean reading them again, but findings, responses and the store's own audit
events cannot be re-read from anywhere.)  The cost is one fsync per commit, amortised over the
daemon's batches of up to 5000 events (bench/store.py measures both).  Sealed partitions use a
rollback journal with ``synchronous=FULL`` and are renamed into place only once complete.

Tamper evidence: see :mod:`sentinel.store.records` for the hashes and
:mod:`sentinel.store.verify` for what verification proves and what it cannot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from sentinel.collectors.sources.base import Batch
from sentinel.event import Event
from sentinel.store import records
from sentinel.store.records import BUCKET_BITS, GENESIS, INSERT_EVENT, INSERT_TERM, Indexed

LIVE_SCHEMA: Final = (
    records.SCHEMA
    + records.INDEXES
    + """
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS head (          -- one row: the end of the chain
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id INTEGER NOT NULL,                   -- last record id written (0: none yet)
    hash BLOB NOT NULL,                    -- its chain hash (GENESIS: none yet)
    month TEXT NOT NULL,                   -- arrival month being written, YYYY-MM
    sealed_through INTEGER NOT NULL        -- records up to here live in sealed partitions
);
CREATE TABLE IF NOT EXISTS months (        -- catalogue: where each arrival month starts
    month TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    state TEXT NOT NULL                    -- live, sealed or dropped
);
"""
)

PARTITION_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS partition (     -- one row: what this sealed partition holds
    one INTEGER PRIMARY KEY CHECK (one = 1),
    month TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,               -- chain hash of record first_id - 1
    last_hash BLOB NOT NULL,               -- chain hash of record last_id
    min_ts INTEGER,
    max_ts INTEGER,
    sealed_at TEXT NOT NULL
);
"""

#: A sealed partition's file name: ``<stem>-YYYY-MM.db``.
_PARTITION_NAME: Final = re.compile(r"-(\d{4}-\d{2})\.db$")
#: Live-file pages SQLite may cache (KiB): a month's indexes stay in memory.
CACHE_KIB: Final = 65536
#: Page size of new files (8 KiB: fewer, fuller B-tree pages for ~600-byte records).
PAGE_SIZE: Final = 8192
#: WAL pages between automatic checkpoints (64 MiB): index pages changed by many commits are
#: copied into the database once per checkpoint rather than once per commit.
WAL_PAGES: Final = 8192
BUSY_TIMEOUT: Final = 30.0


class StoreError(Exception):
    """The store cannot be opened or used as asked (wrong layout, a lock, a missing file)."""


def month_of(seconds: float) -> str:
    """The UTC arrival month ``YYYY-MM`` of a wall-clock time."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m")


def month_end(month: str) -> float:
    """Seconds since the epoch when ``month`` (``YYYY-MM``) ends."""
    year, mon = int(month[:4]), int(month[5:7])
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return datetime(year, mon, 1, tzinfo=UTC).timestamp()


def partition_path(live: Path, month: str) -> Path:
    """Where the sealed partition of ``month`` lives, beside the live file."""
    return live.with_name(f"{live.stem}-{month}.db")


def partitions(live: Path) -> list[tuple[str, Path]]:
    """The sealed partitions present, oldest first, as (month, path)."""
    found = []
    for p in live.parent.glob(f"{glob_escape(live.stem)}-*.db"):
        m = _PARTITION_NAME.search(p.name)
        if m and p.name == f"{live.stem}-{m.group(1)}.db":
            found.append((m.group(1), p))
    return sorted(found)


def glob_escape(text: str) -> str:
    """``text`` with glob wildcards made literal."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit).

    ``readonly``: the caller only reads, and a missing file is an error rather than created.
    It still opens read-write where it may: a read-only connection to a WAL file cannot remove
    the ``-wal``/``-shm`` files it creates, which would then belong to whoever ran the command
    (root) and lock the daemon out.
    """
    uri = path.absolute().as_uri() + ("?mode=rw" if readonly else "")
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)


def fsync_dir(directory: Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def maintenance_lock(live: Path, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold ``<live>.lock``: exclusive for changes to sealed partitions, shared for consistent reads.

    The daemon's own commits do not take it (SQLite serialises writers to the live file).
    Where the lock file cannot be created (a read-only copy), readers go ahead without it.
    """
    lock = live.with_name(live.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    except PermissionError:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            if not shared:
                raise
            yield
            return
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise StoreError(f"{lock} is held by another maintenance task") from None
        yield
    finally:
        os.close(fd)


# -- writing ------------------------------------------------------------------------------------

#: An event ready to be chained: indexed columns, JSON, salt, content hash, terms.
Prepared = tuple[Indexed, str, bytes, bytes, list[str]]


def prepare(events: Sequence[Event]) -> list[Prepared]:
    """Serialise and hash ``events`` (outside any transaction: this is the CPU-heavy part)."""
    salts = os.urandom(16 * len(events))
    out: list[Prepared] = []
    indexed, terms, content_hash = records.indexed, records.terms, records.content_hash
    for i, event in enumerate(events):
        raw = orjson.dumps(event)
        salt = salts[16 * i : 16 * i + 16]
        out.append((indexed(event), raw.decode(), salt, content_hash(salt, raw), terms(event)))
    return out


def append(db: sqlite3.Connection, prepared: Sequence[Prepared], now: float) -> int:
    """Chain ``prepared`` onto the live file's head; return the first id given.

    Runs inside the caller's write transaction (BEGIN IMMEDIATE): the head is read there, so
    several processes appending to the same store still build one chain.
    """
    head = read_head(db)
    head_id, prev, month = head.id, head.hash, head.month
    first = head_id + 1
    if not prepared:
        return first
    current = max(month_of(now), month)
    if current != month:
        db.execute("INSERT OR IGNORE INTO months (month, first_id, state) VALUES (?, ?, 'live')", (current, first))
    rows = []
    term_rows = []
    link_hash = records.link_hash
    rid = head_id
    for ix, doc, salt, content, terms in prepared:
        rid += 1
        prev = link_hash(prev, rid, content)
        rows.append((rid, *ix, doc, salt, None, None, prev))
        bucket = rid >> BUCKET_BITS
        term_rows.extend([(bucket, t, rid) for t in terms])
    db.executemany(INSERT_EVENT, rows)
    if term_rows:
        db.executemany(INSERT_TERM, term_rows)
    db.execute("UPDATE head SET id = ?, hash = ?, month = ?", (rid, prev, current))
    return first


@dataclass(frozen=True)
class Head:
    """The end of the chain, and how far the live file has been sealed."""

    id: int
    hash: bytes
    month: str
    sealed_through: int


def read_head(db: sqlite3.Connection) -> Head:
    """The live file's head row."""
    row = db.execute("SELECT id, hash, month, sealed_through FROM head").fetchone()
    if row is None:
        raise StoreError("the live store has no head row")
    return Head(int(row[0]), bytes(row[1]), str(row[2]), int(row[3]))


def open_live(path: Path, clock: Callable[[], float] = time.time) -> sqlite3.Connection:
    """Open (creating or migrating if needed) the live file, set up for durable writes."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    try:
        if new:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * PAGE_SIZE}")
        db.execute("PRAGMA temp_store=MEMORY")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        columns = {r[1] for r in db.execute("PRAGMA table_info(events)")}
        if version not in (0, records.FORMAT):
            raise StoreError(f"{path}: store format {version}, this Sentinel reads format {records.FORMAT}")
        db.execute("BEGIN IMMEDIATE")
        try:
            if columns and "hash" not in columns:
                _migrate_v1(db, clock())
            script(db, LIVE_SCHEMA)
            db.execute("INSERT OR IGNORE INTO head VALUES (1, 0, ?, '', 0)", (GENESIS,))
            db.execute(f"PRAGMA user_version={records.FORMAT}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    if new:
        fsync_dir(path.parent)
    return db


def _migrate_v1(db: sqlite3.Connection, now: float) -> None:
    """Chain the events of a first-format store (``events(id, ts, doc)``) into the current layout.

    Runs inside the caller's transaction.
    """
    db.execute("DROP INDEX IF EXISTS events_ts")
    db.execute("ALTER TABLE events RENAME TO events_v1")
    script(db, LIVE_SCHEMA)
    db.execute("INSERT OR IGNORE INTO head VALUES (1, 0, ?, '', 0)", (GENESIS,))
    last = 0
    while True:
        rows = db.execute("SELECT id, doc FROM events_v1 WHERE id > ? ORDER BY id LIMIT 10000", (last,)).fetchall()
        if not rows:
            break
        append(db, prepare([orjson.loads(doc) for _, doc in rows]), now)
        last = rows[-1][0]
    db.execute("DROP TABLE events_v1")


def script(db: sqlite3.Connection, sql: str) -> None:
    """Run ``sql`` statement by statement (``executescript`` would commit the open transaction)."""
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""


class SQLiteStore:
    """Events, findings, responses and checkpoints; safe to share between threads (one lock).

    ``path`` is the live file; sealed partitions are found beside it.  ``clock`` gives the
    arrival time (tests and benchmarks pass a fake one to fill past months).
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = open_live(self.path, clock)

    def commit(self, batch: Batch) -> None:
        """Store one batch's events and its source's checkpoint atomically."""
        self.commit_many((batch,))

    def commit_many(self, batches: Sequence[Batch]) -> None:
        """Store several batches in one transaction (each source keeps its latest checkpoint).

        Batches must be in the order their sources emitted them, so the last checkpoint of a
        source is the one that covers all its events here.  Returns once the transaction is
        on disk (fsync).
        """
        prepared = prepare([e for b in batches for e in b.events])
        latest: dict[str, Mapping[str, Any]] = {}
        for batch in batches:
            latest[batch.source] = batch.checkpoint
        states = [(source, orjson.dumps(state).decode()) for source, state in latest.items()]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                append(db, prepared, self.clock())
                db.executemany(
                    "INSERT INTO checkpoints (source, state) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET state = excluded.state",
                    states,
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def append(self, events: Sequence[Event]) -> int:
        """Store events that have no source checkpoint (the store's own audit events); first id."""
        prepared = prepare(events)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                first = append(db, prepared, self.clock())
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return first

    def checkpoint(self, source: str) -> dict[str, Any] | None:
        """The last committed checkpoint of ``source``, or None if it never committed one."""
        with self._lock:
            row = self._db.execute("SELECT state FROM checkpoints WHERE source = ?", (source,)).fetchone()
        if row is None:
            return None
        state = orjson.loads(row[0])
        return state if isinstance(state, dict) else None

    def head(self) -> Head:
        """The end of the chain (to anchor it elsewhere: its id and hash)."""
        with self._lock:
            return read_head(self._db)

    def count(self) -> int:
        """Number of stored records, sealed partitions included."""
        with self._lock:
            sealed = read_head(self._db).sealed_through
            (n,) = self._db.execute("SELECT count(*) FROM events WHERE id > ?", (sealed,)).fetchone()
        for _month, path in partitions(self.path):
            with contextlib.closing(connect(path, readonly=True)) as db:
                row = db.execute("SELECT count FROM partition").fetchone()
            n += row[0] if row else 0
        return int(n)

    def iter_events(self, batch_size: int = 1000) -> Iterator[Event]:
        """Every stored event in chain order, sealed partitions first, read in pages."""
        for _month, path in partitions(self.path):
            with contextlib.closing(connect(path, readonly=True)) as db:
                yield from _pages(db, 0, batch_size, None)
        with self._lock:
            sealed = read_head(self._db).sealed_through
        yield from _pages(self._db, sealed, batch_size, self._lock)

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # a reader may hold the WAL: still safe
                self._db.execute("PRAGMA optimize")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pages(db: sqlite3.Connection, after: int, size: int, lock: threading.Lock | None) -> Iterator[Event]:
    last = after
    while True:
        with lock or contextlib.nullcontext():
            rows = db.execute("SELECT id, doc FROM events WHERE id > ? ORDER BY id LIMIT ?", (last, size)).fetchall()
        if not rows:
            return
        for _id, doc in rows:
            yield orjson.loads(doc)
        last = rows[-1][0]
