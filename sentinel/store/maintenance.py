"""Keeping the embedded store: sealing past months, retention, online backups.

:func:`maintain` is the daily job (the daemon's scheduler runs it through :class:`MaintenanceJob`,
once a minute after start and then daily; ``sentinel audit retention`` runs it by hand).  It

1. seals every finished arrival month: copies its records into ``events-YYYY-MM.db``, which is
   synced and renamed into place before the records leave the live file;
2. drops sealed partitions whose month ended more than ``retention_days`` ago, oldest first.
   Each drop first appends an ``audit-retention-drop`` event to the chain recording the
   partition's record range and its first and last chain hashes, so the oldest partition left
   still links to something verifiable, and the deletion itself is on the record;
3. logs the chain head (record id and hash): shipped off the host with the journal, these lines
   are anchors a later rewrite of the whole chain cannot match (``sentinel audit verify
   --anchor ID:HASH``).

Every step is idempotent: a crash at any point is completed by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from sentinel.event import Event
from sentinel.scheduler import JobSpec, Scheduler
from sentinel.store import records
from sentinel.store.records import AUDIT_DATASET, BUCKET_BITS, GENESIS, RETENTION_ACTION
from sentinel.store.sqlite import (
    PAGE_SIZE,
    PARTITION_SCHEMA,
    Head,
    StoreError,
    append,
    connect,
    fsync_dir,
    maintenance_lock,
    month_end,
    month_of,
    open_live,
    partition_path,
    partitions,
    prepare,
    read_head,
    script,
)

log = logging.getLogger(__name__)

#: Live records deleted per transaction once sealed (the daemon's commits interleave).
PURGE_CHUNK: Final = 5000


@dataclass(frozen=True)
class Partition:
    """A sealed partition as its ``partition`` row describes it."""

    month: str
    path: Path
    first_id: int
    last_id: int
    count: int
    prev_hash: bytes
    last_hash: bytes
    min_ts: int | None
    max_ts: int | None


def read_partition(month: str, path: Path) -> Partition:
    """The description row of a sealed partition file."""
    with contextlib.closing(connect(path, readonly=True)) as db:
        row = db.execute(
            "SELECT first_id, last_id, count, prev_hash, last_hash, min_ts, max_ts FROM partition"
        ).fetchone()
    if row is None:
        raise StoreError(f"{path}: no partition row")
    return Partition(month, path, row[0], row[1], row[2], bytes(row[3]), bytes(row[4]), row[5], row[6])


def audit_event(action: str, message: str, now: float, hostname: str | None = None, **fields: Any) -> Event:
    """An event the store writes about itself (ECS: dataset ``sentinel.audit``)."""
    event: Event = {
        "@timestamp": records.iso(now),
        "event.kind": "event",
        "event.category": ["database"],
        "event.type": ["deletion"] if "drop" in action or "erase" in action else ["info"],
        "event.action": action,
        "event.outcome": "success",
        "event.dataset": AUDIT_DATASET,
        "host.hostname": hostname or socket.gethostname(),
        "message": message,
    }
    event.update(fields)
    return event


def _chown_like(path: Path, reference: Path) -> None:
    """When run as root, give a new file the owner of the store directory (the daemon's user)."""
    if os.geteuid() == 0:
        st = reference.stat()
        with contextlib.suppress(OSError):
            os.chown(path, st.st_uid, st.st_gid)


# -- sealing ------------------------------------------------------------------------------------


def seal(live: Path, now: float) -> list[str]:
    """Move every finished arrival month out of the live file; the months sealed."""
    done: list[str] = []
    with maintenance_lock(live), contextlib.closing(open_live(live)) as db:
        current = month_of(now)
        db.execute("BEGIN IMMEDIATE")
        head = read_head(db)
        if head.month and head.month < current:  # nothing arrived yet this month: close the last one
            db.execute("INSERT OR IGNORE INTO months VALUES (?, ?, 'live')", (current, head.id + 1))
            db.execute("UPDATE head SET month = ?", (current,))
        db.execute("COMMIT")
        months = db.execute("SELECT month, first_id, state FROM months ORDER BY first_id, month").fetchall()
        for i, (month, first, state) in enumerate(months):
            if month >= current or i + 1 >= len(months):
                break
            if state != "live":
                continue
            last = months[i + 1][1] - 1
            if last >= first:
                _write_partition(live, db, month, first, last, now)
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE months SET state = 'sealed' WHERE month = ?", (month,))
            db.execute("UPDATE head SET sealed_through = max(sealed_through, ?)", (last,))
            db.execute("COMMIT")
            log.info("sealed arrival month %s: records %d..%d", month, first, last)
            done.append(month)
        _purge(db)
    return done


def _prev_hash(live: Path, db: sqlite3.Connection, first: int) -> bytes:
    """The chain hash of record ``first - 1``: in the live file, or the previous partition."""
    if first == 1:
        return GENESIS
    row = db.execute("SELECT hash FROM events WHERE id = ?", (first - 1,)).fetchone()
    if row is not None:
        return bytes(row[0])
    for month, path in reversed(partitions(live)):
        part = read_partition(month, path)
        if part.last_id == first - 1:
            return part.last_hash
    raise StoreError(f"cannot seal: record {first - 1} is neither in the live file nor in a partition")


def _write_partition(live: Path, db: sqlite3.Connection, month: str, first: int, last: int, now: float) -> None:
    """Copy records ``first..last`` into the month's partition file, complete before it has its name."""
    final = partition_path(live, month)
    if final.exists():  # a crash after the rename: the partition is already complete
        part = read_partition(month, final)
        if (part.first_id, part.last_id) != (first, last):
            raise StoreError(f"{final} holds records {part.first_id}..{part.last_id}, expected {first}..{last}")
        return
    prev = _prev_hash(live, db, first)
    tmp = final.with_name(final.name + ".partial")
    tmp.unlink(missing_ok=True)
    out = connect(tmp)
    try:
        out.execute(f"PRAGMA page_size={PAGE_SIZE}")
        out.execute("PRAGMA journal_mode=DELETE")
        out.execute("PRAGMA synchronous=FULL")
        out.execute(f"PRAGMA user_version={records.FORMAT}")
        out.execute("ATTACH DATABASE ? AS live", (live.absolute().as_uri() + "?mode=ro",))
        out.execute("BEGIN")
        script(out, records.SCHEMA + PARTITION_SCHEMA)
        out.execute(
            "INSERT INTO main.events SELECT * FROM live.events WHERE id BETWEEN ? AND ? ORDER BY id", (first, last)
        )
        out.execute(
            "INSERT INTO main.terms SELECT b, term, id FROM live.terms WHERE b BETWEEN ? AND ? AND id BETWEEN ? AND ?",
            (first >> BUCKET_BITS, last >> BUCKET_BITS, first, last),
        )
        count, min_ts, max_ts, last_present = out.execute(
            "SELECT count(*), min(ts), max(ts), max(id) FROM main.events"
        ).fetchone()
        row = out.execute("SELECT hash FROM main.events WHERE id = ?", (last_present,)).fetchone()
        last_hash = bytes(row[0]) if row else prev
        out.execute(
            "INSERT INTO partition VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (month, first, last, count, prev, last_hash, min_ts, max_ts, records.iso(now)),
        )
        script(out, records.INDEXES)
        out.execute("PRAGMA analysis_limit=1000")
        out.execute("ANALYZE main")
        out.execute("COMMIT")
        out.execute("DETACH DATABASE live")
    finally:
        out.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.rename(tmp, final)
    _chown_like(final, live.parent)
    fsync_dir(final.parent)


def _purge(db: sqlite3.Connection) -> None:
    """Delete sealed records from the live file, a chunk per transaction."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            sealed = read_head(db).sealed_through
            (low,) = db.execute("SELECT min(id) FROM events").fetchone()
            if low is None or low > sealed:
                db.execute("COMMIT")
                return
            high = min(sealed, low + PURGE_CHUNK - 1)
            db.execute(
                "DELETE FROM terms WHERE b BETWEEN ? AND ? AND id BETWEEN ? AND ?",
                (low >> BUCKET_BITS, high >> BUCKET_BITS, low, high),
            )
            db.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (low, high))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


# -- retention ----------------------------------------------------------------------------------


def expired(live: Path, now: float, retention_days: float) -> list[Partition]:
    """Sealed partitions whose arrival month ended more than ``retention_days`` ago, oldest first."""
    cutoff = now - retention_days * 86400
    return [read_partition(month, path) for month, path in partitions(live) if month_end(month) <= cutoff]


def drop_expired(
    live: Path, now: float, retention_days: float, *, dry_run: bool = False, hostname: str | None = None
) -> list[Partition]:
    """Drop expired partitions, each after recording its deletion in the chain; what was (or would be) dropped."""
    with maintenance_lock(live):
        todo = expired(live, now, retention_days)
        if dry_run or not todo:
            return todo
        with contextlib.closing(open_live(live)) as db:
            for part in todo:
                event = audit_event(
                    RETENTION_ACTION,
                    f"dropped partition {part.path.name}: records {part.first_id}..{part.last_id} "
                    f"({part.count}), arrived before {records.iso(month_end(part.month))}, "
                    f"retention {retention_days:g} days",
                    now,
                    hostname,
                    **{
                        "sentinel.partition.month": part.month,
                        "sentinel.partition.file": part.path.name,
                        "sentinel.partition.first_id": part.first_id,
                        "sentinel.partition.last_id": part.last_id,
                        "sentinel.partition.count": part.count,
                        "sentinel.partition.prev_hash": part.prev_hash.hex(),
                        "sentinel.partition.last_hash": part.last_hash.hex(),
                        "sentinel.retention.days": retention_days,
                    },
                )
                db.execute("BEGIN IMMEDIATE")
                try:
                    append(db, prepare([event]), now)
                    db.execute("UPDATE months SET state = 'dropped' WHERE month = ?", (part.month,))
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                part.path.unlink()
                fsync_dir(part.path.parent)
                log.info("retention: dropped %s (records %d..%d)", part.path.name, part.first_id, part.last_id)
    return todo


# -- the daily job ------------------------------------------------------------------------------


@dataclass
class MaintenanceReport:
    """What one :func:`maintain` run did."""

    sealed: list[str] = field(default_factory=list)
    dropped: list[Partition] = field(default_factory=list)
    head: Head | None = None


def maintain(
    live: Path,
    retention_days: float,
    *,
    now: float | None = None,
    dry_run: bool = False,
    hostname: str | None = None,
) -> MaintenanceReport:
    """Seal finished months, drop expired partitions, log the chain head (the daily job)."""
    now = time.time() if now is None else now
    report = MaintenanceReport()
    if not dry_run:
        report.sealed = seal(live, now)
    report.dropped = drop_expired(live, now, retention_days, dry_run=dry_run, hostname=hostname)
    with contextlib.closing(connect(live, readonly=True)) as db:
        report.head = read_head(db)
    log.info(
        "audit chain head: record %d hash %s",
        report.head.id,
        report.head.hash.hex(),
        extra={"chain_head_id": report.head.id, "chain_head_hash": report.head.hash.hex()},
    )
    return report


class MaintenanceJob:
    """:func:`maintain` as a job of the daemon's scheduler: ``first_delay`` after start, then every ``interval``.

    The scheduler never runs it twice at once and logs and counts a failure (retried at the
    next run); the daemon keeps going.
    """

    def __init__(
        self,
        live: Path,
        retention_days: float,
        *,
        hostname: str | None = None,
        interval: float = 86400.0,
        first_delay: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.live = live
        self.retention_days = retention_days
        self.hostname = hostname
        self.interval = interval
        self.first_delay = first_delay
        self.clock = clock
        self.last_report: MaintenanceReport | None = None

    def spec(self) -> JobSpec:
        """The scheduler's description of this job."""
        return JobSpec(
            "store-maintenance",
            self.run_once,
            self.interval,
            first_delay=self.first_delay,
            description="seal finished months, drop partitions past retention, log the chain head",
        )

    def schedule(self, scheduler: Scheduler) -> None:
        """Register with the daemon's scheduler."""
        scheduler.add(self.spec())

    def run_once(self) -> MaintenanceReport:
        """One run, now, in the caller's thread."""
        self.last_report = maintain(self.live, self.retention_days, now=self.clock(), hostname=self.hostname)
        return self.last_report


def backup(live: Path, dest: Path) -> dict[str, Any]:
    """Copy every partition and the live file into ``dest`` with SQLite's online backup API.

    Each file is copied as one consistent snapshot while the daemon keeps writing; the shared
    maintenance lock keeps sealing, retention and erasure from changing partitions meanwhile,
    so the copies agree with each other.  Writes ``MANIFEST.json`` (files and chain head) and
    returns it.  ``dest`` must be empty or absent.
    """
    if dest.exists() and any(dest.iterdir()):
        raise StoreError(f"{dest} is not empty")
    if not live.exists():
        raise StoreError(f"{live}: no such store")
    dest.mkdir(parents=True, exist_ok=True)
    copied: list[str] = []
    with maintenance_lock(live, shared=True):
        for path in [p for _, p in partitions(live)] + [live]:
            _copy(path, dest / path.name)
            copied.append(path.name)
    with contextlib.closing(connect(dest / live.name, readonly=True)) as db:
        head = read_head(db)
    manifest: dict[str, Any] = {
        "created": records.iso(time.time()),
        "source": str(live),
        "files": copied,
        "head": {"id": head.id, "hash": head.hash.hex()},
    }
    (dest / "MANIFEST.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    fsync_dir(dest)
    return manifest


def _copy(path: Path, target: Path) -> None:
    """One file through the backup API, synced."""
    with contextlib.closing(connect(path, readonly=True)) as src, contextlib.closing(connect(target)) as dst:
        src.backup(dst)
        dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(target, "rb") as fh:
        os.fsync(fh.fileno())
