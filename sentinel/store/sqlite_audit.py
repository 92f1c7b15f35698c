"""The auditor interface (:class:`~sentinel.store.audit.AuditBackend`) over the embedded store.

A query runs on each partition whose time span overlaps the range (the live file always), each
returning its first ``limit + 1`` matches in (``ts``, id) order; the pages are merged.  The
most selective filter drives: source address (``ip`` index: a CIDR is one range scan over the
16-byte sortable form per index bucket), then user, rule, action, category (``terms``), else time.  The
other filters are written so SQLite cannot pick their index instead (``+column``).

Erasure (``erase_user``) keeps the chain verifiable.  Under the exclusive maintenance lock it

1. finds the person's records (``user:NAME`` terms; the store's own audit events are never
   touched) and checks each still matches its chain hash (a record modified earlier is refused,
   not laundered);
2. builds their tombstones (:func:`sentinel.store.records.tombstone`) and appends the erasure
   events: who (``sentinel.audit.actor``), why, when, and for each record its id and the hash of
   its tombstone.  The person's name is not recorded: it is the thing being erased;
3. replaces each record's document with its tombstone, drops its salt, keeps its content hash
   (``digest``) so the chain still verifies, and re-derives its index columns and terms.

A crash between 2 and 3 leaves an erasure that ``verify`` reports as incomplete; running the
same erase again finishes it (tombstones are recomputed and must hash as recorded).
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import orjson

from sentinel.event import Event
from sentinel.store import records
from sentinel.store.audit import Erasure, Hit, Page, Query, export_pages
from sentinel.store.maintenance import audit_event, read_partition
from sentinel.store.records import AUDIT_DATASET, BUCKET_BITS, ERASE_ACTION
from sentinel.store.sqlite import (
    StoreError,
    append,
    connect,
    maintenance_lock,
    open_live,
    partitions,
    prepare,
    read_head,
)

#: Records listed per erasure event (keeps each event document under ~200 kB).
ERASE_CHUNK: Final = 2000
_MAPPED_V4: Final = b"\x00" * 10 + b"\xff\xff"
#: A category with at most this many records in a partition drives the query through its terms.
RARE: Final = 20_000


class _File:
    """A partition to read: path, live or sealed, its records ``first..last``, its time span."""

    def __init__(self, path: Path, live: bool, first: int, last: int, span: tuple[int | None, int | None]) -> None:
        self.path, self.live, self.first, self.last, self.span = path, live, first, last, span
        self.after = first - 1  # the live file may still hold sealed records below ``first``
        self.buckets = ",".join(map(str, records.buckets(first, last))) or "-1"


def _cursor(text: str | None) -> tuple[int, int]:
    if not text:
        return (-(2**63), 0)
    try:
        ts, rid = base64.urlsafe_b64decode(text.encode() + b"==").decode().split(":")
        return int(ts), int(rid)
    except ValueError:
        raise ValueError(f"invalid cursor {text!r}") from None


def _encode(ts: int, rid: int) -> str:
    return base64.urlsafe_b64encode(f"{ts}:{rid}".encode()).decode().rstrip("=")


def _range(query: Query) -> tuple[bytes, bytes] | None:
    net = query.network
    if net is None:
        return None
    lo, hi = net.network_address.packed, net.broadcast_address.packed
    if net.version == 4:
        return _MAPPED_V4 + lo, _MAPPED_V4 + hi
    return lo, hi


def _where(query: Query, f: _File, category_drives: bool = True) -> tuple[str, list[Any]]:
    """The WHERE clause for ``query``: the chosen driving filter indexable, the others not.

    ``category_drives``: whether the category's terms should drive (few matches) rather than
    a scan in time order (a common category, where the first page comes soonest that way).
    """
    iprange = _range(query)
    driver = next(
        (
            name
            for name, present in (
                ("ip", iprange is not None),
                ("user", query.user is not None),
                ("rule", query.rule is not None),
                ("action", query.action is not None),
                ("category", query.category is not None and category_drives),
            )
            if present
        ),
        "ts",
    )

    def col(name: str) -> str:
        return name if name == driver else f"+{name}"

    clauses = ["id > ?", "(ts, id) > (?, ?)"] if driver == "ts" else ["+id > ?", "(+ts, +id) > (?, ?)"]
    params: list[Any] = [f.after, *_cursor(query.after)]
    if query.since is not None:
        clauses.append(f"{col('ts')} >= ?")
        params.append(round(query.since * 1_000_000))
    if query.until is not None:
        clauses.append(f"{col('ts')} < ?")
        params.append(round(query.until * 1_000_000))
    if iprange is not None:
        # the bucketed index: one seek per bucket of this file
        clauses.append(
            f"(id >> {BUCKET_BITS}) IN ({f.buckets}) AND ip BETWEEN ? AND ?"
            if driver == "ip"
            else "+ip BETWEEN ? AND ?"
        )
        params.extend(iprange)
    for name, value in (("action", query.action), ("outcome", query.outcome), ("rule", query.rule)):
        if value is not None:
            clauses.append(f"{col(name)} = ?")
            params.append(value)
    if query.host is not None:
        clauses.append("+host = ?")
        params.append(query.host)
    for name, prefix, value in (("user", "user:", query.user), ("category", "category:", query.category)):
        if value is not None:
            ident = "id" if driver == name else "+id"
            clauses.append(f"{ident} IN (SELECT id FROM terms WHERE b IN ({f.buckets}) AND term = ?)")  # noqa: S608
            params.append(prefix + value)
    return " AND ".join(clauses), params


class SQLiteAudit:
    """Search, export and erasure over the store whose live file is ``live``."""

    def __init__(self, live: Path, *, clock: Callable[[], float] = time.time, hostname: str | None = None) -> None:
        if not live.exists():
            raise StoreError(f"{live}: no such store")
        self.live = live
        self.clock = clock
        self.hostname = hostname

    def close(self) -> None:
        """Nothing held between calls."""

    def _files(self) -> list[_File]:
        out = []
        for month, path in partitions(self.live):
            part = read_partition(month, path)
            out.append(_File(path, False, part.first_id, part.last_id, (part.min_ts, part.max_ts)))
        with contextlib.closing(connect(self.live, readonly=True)) as db:
            head = read_head(db)
        # one bucket of room: records the daemon adds meanwhile stay findable
        out.append(_File(self.live, True, head.sealed_through + 1, head.id + (1 << BUCKET_BITS), (None, None)))
        return out

    def search(self, query: Query) -> Page:
        """One page of matches, merged over the partitions that can hold any."""
        limit = max(1, query.limit)
        since = None if query.since is None else round(query.since * 1_000_000)
        until = None if query.until is None else round(query.until * 1_000_000)
        streams: list[list[tuple[int, int, Path]]] = []
        docs: dict[int, str] = {}
        with maintenance_lock(self.live, shared=True):
            files = self._files()
            for f in files:
                low, high = f.span
                if (since is not None and high is not None and high < since) or (
                    until is not None and low is not None and low >= until
                ):
                    continue
                with contextlib.closing(connect(f.path, readonly=True)) as db:
                    drives = query.category is None or _rare(db, f, "category:" + query.category)
                    where, params = _where(query, f, drives)
                    # Keys first: the time and address indexes cover them, so only the
                    # documents of the page returned are read.  The clause is built from
                    # constants; every value is a parameter.
                    sql = f"SELECT ts, id FROM events WHERE {where} ORDER BY ts, id LIMIT ?"  # noqa: S608
                    streams.append([(ts, rid, f.path) for ts, rid in db.execute(sql, [*params, limit + 1])])
            merged = list(heapq.merge(*streams))[: limit + 1]
            page = merged[:limit]
            for path in {p for _, _, p in page}:
                ids = [rid for _, rid, p in page if p == path]
                with contextlib.closing(connect(path, readonly=True)) as db:
                    marks = ",".join("?" * len(ids))
                    sql = f"SELECT id, doc FROM events WHERE id IN ({marks})"  # noqa: S608
                    docs.update(db.execute(sql, ids).fetchall())
        hits = [Hit(str(rid), orjson.loads(docs[rid])) for _ts, rid, _p in page]
        more = len(merged) > limit
        return Page(hits, _encode(page[-1][0], page[-1][1]) if more else None)

    def export_user(self, user: str) -> Iterator[Hit]:
        """Every event naming ``user``, in time order."""
        return export_pages(self.search, user)

    # -- erasure ------------------------------------------------------------------------------

    def erase_user(self, user: str, *, actor: str, reason: str) -> Erasure:
        """Tombstone ``user``'s records; the erasure is itself recorded in the chain."""
        if not user or user == records.TOMBSTONE:
            raise ValueError("a user name is required")
        now = self.clock()
        request = uuid.uuid4().hex
        with maintenance_lock(self.live):
            files = self._files()
            pending = self._pending(files)
            completed = self._complete(files, pending, user)
            listed = {rid for _by, (_req, listing) in pending.items() for rid in listing}
            matches = self._matches(files, user, listed)
            # record id → (file, tombstone JSON, tombstone hash, content hash)
            plan: dict[int, tuple[_File, str, str, bytes]] = {}
            for f, rid, event, content in matches:
                tomb = records.dumps(records.tombstone(event, user, request))
                plan[rid] = (f, tomb.decode(), records.tombstone_hash(tomb), content)
            ids = sorted(plan)
            events: list[Event] = []
            for start in range(0, len(ids), ERASE_CHUNK):
                chunk = ids[start : start + ERASE_CHUNK]
                events.append(
                    audit_event(
                        ERASE_ACTION,
                        f"erased the personal data of {len(ids)} records at a data subject's request"
                        + (f" (part {start // ERASE_CHUNK + 1})" if len(ids) > ERASE_CHUNK else ""),
                        now,
                        self.hostname,
                        **{
                            "sentinel.audit.actor": actor,
                            "sentinel.audit.reason": reason,
                            "sentinel.erasure.request": request,
                            "sentinel.erasure.count": len(ids),
                            "sentinel.erasure.tombstones": [[rid, plan[rid][2]] for rid in chunk],
                        },
                    )
                )
            if not events:
                return Erasure(request, 0, [], completed)
            with contextlib.closing(open_live(self.live)) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    first = append(db, prepare(events), now)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            work: dict[Path, list[tuple[int, str, bytes, int]]] = {}
            for n, rid in enumerate(ids):
                f, tomb_text, _h, content = plan[rid]
                work.setdefault(f.path, []).append((rid, tomb_text, content, first + n // ERASE_CHUNK))
            for path, items in work.items():
                _apply(path, items)
        return Erasure(request, len(ids), [str(first + i) for i in range(len(events))], completed)

    def _pending(self, files: list[_File]) -> dict[int, tuple[str, dict[int, str]]]:
        """Erasure events whose listed records are not all tombstoned yet: id → (request, listing)."""
        found: dict[int, tuple[str, dict[int, str]]] = {}
        for f in files:
            with contextlib.closing(connect(f.path, readonly=True)) as db:
                rows = db.execute(
                    "SELECT id, doc FROM events WHERE action = ? AND id > ?", (ERASE_ACTION, f.after)
                ).fetchall()
                for rid, doc in rows:
                    event = orjson.loads(doc)
                    if event.get("event.dataset") != AUDIT_DATASET:
                        continue
                    listing = {int(i): str(h) for i, h in event.get("sentinel.erasure.tombstones", [])}
                    left = {i: h for i, h in listing.items() if i >= files[0].first}
                    if left:
                        found[rid] = (str(event.get("sentinel.erasure.request", "")), left)
        for by, (_req, listing) in list(found.items()):
            for f in files:
                with contextlib.closing(connect(f.path, readonly=True)) as db:
                    marks = ",".join("?" * len(listing))
                    sql = f"SELECT id FROM events WHERE erased_by IS NOT NULL AND id IN ({marks})"  # noqa: S608
                    done = {r for (r,) in db.execute(sql, list(listing))}
                for r in done:
                    listing.pop(r, None)
            if not listing:
                del found[by]
        return found

    def _complete(self, files: list[_File], pending: dict[int, tuple[str, dict[int, str]]], user: str) -> int:
        """Finish interrupted erasures whose tombstones ``user`` reproduces; how many records."""
        done = 0
        for by, (request, listing) in pending.items():
            work: dict[Path, list[tuple[int, str, bytes, int]]] = {}
            for f, rid, event, content in self._records(files, sorted(listing)):
                tomb = records.dumps(records.tombstone(event, user, request))
                if records.tombstone_hash(tomb) == listing[rid]:
                    work.setdefault(f.path, []).append((rid, tomb.decode(), content, by))
            for path, items in work.items():
                _apply(path, items)
                done += len(items)
        return done

    def _records(self, files: list[_File], ids: list[int]) -> Iterator[tuple[_File, int, Event, bytes]]:
        """The not-yet-erased records among ``ids``, checked against their chain hash."""
        for f in files:
            mine = [i for i in ids if i >= f.first and (f is files[-1] or i < _next_first(files, f))]
            if not mine:
                continue
            with contextlib.closing(connect(f.path, readonly=True)) as db:
                for i in range(0, len(mine), 500):
                    part = mine[i : i + 500]
                    marks = ",".join("?" * len(part))
                    sql = f"SELECT id, doc, salt, hash FROM events WHERE erased_by IS NULL AND id IN ({marks})"  # noqa: S608
                    rows = db.execute(sql + " ORDER BY id", part).fetchall()
                    for rid, doc, salt, stored in rows:
                        yield f, rid, orjson.loads(doc), _checked(db, f, rid, doc, salt, stored)

    def _matches(self, files: list[_File], user: str, skip: set[int]) -> list[tuple[_File, int, Event, bytes]]:
        """The person's records that are not audit events nor already being erased."""
        ids: list[int] = []
        for f in files:
            with contextlib.closing(connect(f.path, readonly=True)) as db:
                ids.extend(
                    r
                    for (r,) in db.execute(
                        f"SELECT id FROM terms WHERE b IN ({f.buckets}) AND term = ? AND id > ? ORDER BY id",  # noqa: S608
                        ("user:" + user, f.after),
                    )
                    if r not in skip
                )
        return [m for m in self._records(files, ids) if m[2].get("event.dataset") != AUDIT_DATASET]


def _rare(db: sqlite3.Connection, f: _File, term: str) -> bool:
    """Whether ``term`` has few enough records in this file to drive a query."""
    sql = f"SELECT count(*) FROM (SELECT 1 FROM terms WHERE b IN ({f.buckets}) AND term = ? LIMIT ?)"  # noqa: S608
    (n,) = db.execute(sql, (term, RARE + 1)).fetchone()
    return bool(n <= RARE)


def _next_first(files: list[_File], f: _File) -> int:
    return files[files.index(f) + 1].first


def _checked(db: sqlite3.Connection, f: _File, rid: int, doc: str, salt: bytes | None, stored: bytes) -> bytes:
    """The record's content hash, after checking it against the chain (refusing a tampered record)."""
    if salt is None:
        raise StoreError(f"{f.path.name} record {rid}: has no salt; run `sentinel audit verify`")
    content = records.content_hash(salt, doc.encode())
    row = db.execute("SELECT hash FROM events WHERE id = ?", (rid - 1,)).fetchone()
    if row is None and not f.live:
        row = db.execute("SELECT prev_hash FROM partition WHERE first_id = ?", (rid,)).fetchone()
    if row is not None and records.link_hash(bytes(row[0]), rid, content) != stored:
        raise StoreError(
            f"{f.path.name} record {rid}: does not match its chain hash; refusing to erase it "
            "(run `sentinel audit verify`)"
        )
    return content


def _apply(path: Path, items: list[tuple[int, str, bytes, int]]) -> None:
    """Write tombstones into one file in one transaction: (record id, tombstone, content hash, erasure event)."""
    with contextlib.closing(connect(path)) as db:
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            for rid, tomb, content, by in items:
                row = db.execute("SELECT doc FROM events WHERE id = ? AND erased_by IS NULL", (rid,)).fetchone()
                if row is None:
                    continue  # already erased
                event = orjson.loads(tomb)
                db.execute(
                    "UPDATE events SET ts = ?, ip = ?, action = ?, outcome = ?, rule = ?, host = ?, doc = ?, "
                    "salt = NULL, digest = ?, erased_by = ? WHERE id = ?",
                    (*records.indexed(event), tomb, content, by, rid),
                )
                old = records.terms(orjson.loads(row[0]))
                bucket = rid >> BUCKET_BITS
                db.executemany("DELETE FROM terms WHERE b = ? AND term = ? AND id = ?", [(bucket, t, rid) for t in old])
                db.executemany(records.INSERT_TERM, [(bucket, t, rid) for t in records.terms(event)])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
