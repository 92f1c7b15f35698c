"""``sentinel audit verify``: prove the stored records are the ones written, or say where not.

Checked, for every record of every partition (sealed partitions in parallel processes):

* its content hash and its link: ``hash = H(prev ‖ id ‖ H(salt ‖ doc))``: a modified document,
  salt or hash, an inserted row or two rows swapped break it at that record;
* the ids run on without gaps, within a file and from one file to the next (a deleted record or
  a deleted partition file shows as the missing range), and each file's first record links to
  the previous file's last: partitions are chained to each other;
* the oldest partition left starts at record 1 from the genesis hash, or a chained retention
  event records the dropped partition before it and its last hash;
* the indexed columns and the keyword terms agree with the document (else a query could be made
  to miss a record that verification passes);
* an erased record is listed, with the hash of its tombstone, by a chained erasure event, and
  every record an erasure event lists is erased;
* the live file's head row names the last record (records cut off the end).

What it cannot prove: the chain has no secret key, so someone able to write every file *and*
willing to recompute every hash after the change can rewrite history, or drop records from the
end.  The daily maintenance job logs the head (id and hash) to the journal; checked with
``--anchor ID:HASH`` against a copy kept elsewhere (journal shipped off the host, Elasticsearch),
a rewrite before that point is detected.  A key would not help on a single host: the daemon
needs it to write, so whoever can rewrite its files can read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from sentinel.store import records
from sentinel.store.records import AUDIT_DATASET, BUCKET_BITS, ERASE_ACTION, GENESIS, RETENTION_ACTION
from sentinel.store.sqlite import connect, maintenance_lock, partitions

#: Stop listing problems after this many per file (the count goes on).
MAX_PROBLEMS: Final = 200
_FETCH: Final = 10_000


@dataclass(frozen=True)
class Problem:
    """One thing found wrong, and where."""

    file: str
    record: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file} record {self.record}" if self.record is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class FileResult:
    """What checking one file found (sent back from a worker process)."""

    name: str
    live: bool
    first_id: int | None = None
    first_content: bytes = b""
    first_hash: bytes = b""
    last_id: int | None = None
    last_hash: bytes = b""
    count: int = 0
    #: A sealed partition's description row (first_id, last_id, count, prev_hash, last_hash).
    meta: tuple[int, int, int, bytes, bytes] | None = None
    #: The live file's head row (id, hash, sealed_through).
    head: tuple[int, bytes, int] | None = None
    problems: list[Problem] = field(default_factory=list)
    extra_problems: int = 0
    #: Erased records: (erasure event id, record id, tombstone hash).
    erased: list[tuple[int, int, str]] = field(default_factory=list)
    #: Erasure events: event id → {record id: tombstone hash}.
    erasures: dict[int, dict[int, str]] = field(default_factory=dict)
    #: Retention events: (first_id, last_id, last_hash, file name).
    drops: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    anchors: dict[int, bytes] = field(default_factory=dict)

    def problem(self, record: int | None, message: str) -> None:
        """Note a problem (the first :data:`MAX_PROBLEMS` are kept, the rest counted)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.name, record, message))
        else:
            self.extra_problems += 1


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`."""

    files: list[FileResult]
    problems: list[Problem]
    notes: list[str]
    records: int
    head: tuple[int, bytes] | None
    seconds: float

    @property
    def ok(self) -> bool:
        """True when nothing was found wrong."""
        return not self.problems and not any(f.extra_problems for f in self.files)


def check_file(path: Path, live: bool, anchor_ids: Sequence[int] = ()) -> FileResult:
    """Check one partition file on its own (the cross-file links are checked by :func:`verify`)."""
    result = FileResult(path.name, live)
    try:
        with contextlib.closing(connect(path, readonly=True)) as db:
            db.execute("BEGIN")  # one snapshot while the daemon goes on writing
            _check(db, result, set(anchor_ids))
            db.execute("COMMIT")
    except (sqlite3.Error, OSError) as exc:
        result.problem(None, f"cannot be read: {exc}")
    return result


def _check(db: sqlite3.Connection, result: FileResult, anchor_ids: set[int]) -> None:
    after = 0
    prev_hash: bytes | None = None
    if result.live:
        row = db.execute("SELECT id, hash, sealed_through FROM head").fetchone()
        result.head = (int(row[0]), bytes(row[1]), int(row[2]))
        after = result.head[2]
    else:
        row = db.execute("SELECT first_id, last_id, count, prev_hash, last_hash FROM partition").fetchone()
        if row is None:
            result.problem(None, "has no partition row")
        else:
            result.meta = (int(row[0]), int(row[1]), int(row[2]), bytes(row[3]), bytes(row[4]))
            prev_hash = result.meta[3]
    sha256, link_hash, indexed, terms = hashlib.sha256, records.link_hash, records.indexed, records.terms
    loads = orjson.loads
    prev_id: int | None = None
    terms_sum = 0
    cursor = db.execute(f"SELECT {records.COLUMNS} FROM events WHERE id > ? ORDER BY id", (after,))  # noqa: S608
    while rows := cursor.fetchmany(_FETCH):
        for rid, ts, ip, action, outcome, rule, host, doc, salt, digest, erased_by, stored in rows:
            raw = doc.encode() if isinstance(doc, str) else bytes(doc)
            if erased_by is None:
                content = sha256(salt + raw).digest() if salt is not None else b""
                if salt is None:
                    result.problem(rid, "has no salt but is not marked erased (modified)")
            else:
                content = bytes(digest) if digest is not None else b""
                if digest is None or salt is not None:
                    result.problem(rid, "is marked erased but does not keep its content hash (modified)")
                result.erased.append((erased_by, rid, sha256(raw).hexdigest()))
            if prev_id is None:
                result.first_id, result.first_content, result.first_hash = rid, content, stored
                if prev_hash is not None and result.meta is not None:
                    if rid != result.meta[0]:
                        result.problem(rid, f"the partition should start at record {result.meta[0]} (records deleted)")
                    elif link_hash(prev_hash, rid, content) != stored:
                        result.problem(rid, "does not match the chain: modified, inserted or moved")
            elif rid != prev_id + 1:
                result.problem(rid, f"records {prev_id + 1}..{rid - 1} are missing (deleted)")
            elif link_hash(prev_hash or b"", rid, content) != stored:
                result.problem(rid, "does not match the chain: modified, inserted or moved")
            try:
                event = loads(raw)
            except orjson.JSONDecodeError:
                result.problem(rid, "its document is not JSON (modified)")
                event = {}
            if not isinstance(event, dict):
                result.problem(rid, "its document is not a JSON object (modified)")
                event = {}
            if indexed(event) != (ts, ip, action, outcome, rule, host):
                result.problem(rid, "its indexed columns differ from its document (modified)")
            for term in terms(event):
                terms_sum += hash((term, rid))
            if event.get("event.dataset") == AUDIT_DATASET:
                _audit_event(result, rid, event)
            if rid in anchor_ids:
                result.anchors[rid] = stored
            prev_id, prev_hash = rid, stored
            result.count += 1
    result.last_id, result.last_hash = prev_id, prev_hash or b""
    entries = db.execute("SELECT b, term, id FROM terms WHERE id > ?", (after,))
    actual = sum(hash((term, rid)) for b, term, rid in entries if b == rid >> BUCKET_BITS)
    if actual != terms_sum:
        _locate_terms(db, result, after)
    if result.meta is not None:
        first, last, count, _prev, last_hash = result.meta
        if result.last_id is not None and result.last_id < last:
            result.problem(last, f"records {result.last_id + 1}..{last} are missing from the end (deleted)")
        elif result.last_id is not None and (result.last_id > last or result.last_hash != last_hash):
            result.problem(result.last_id, "the partition's last record is not the one it was sealed with")
        if count != result.count:
            result.problem(None, f"holds {result.count} records, sealed with {count} ({first}..{last})")
    if result.head is not None and prev_id is not None:
        head_id, head_hash, _ = result.head
        if head_id > prev_id:
            result.problem(head_id, f"records {prev_id + 1}..{head_id} are missing from the end (deleted)")
        elif head_id < prev_id or head_hash != prev_hash:
            result.problem(prev_id, "the chain head does not name the last record (records appended outside the store)")


def _audit_event(result: FileResult, rid: int, event: Mapping[str, Any]) -> None:
    """Collect what retention and erasure events vouch for."""
    action = event.get("event.action")
    if action == RETENTION_ACTION:
        try:
            result.drops.append(
                (
                    int(event["sentinel.partition.first_id"]),
                    int(event["sentinel.partition.last_id"]),
                    bytes.fromhex(event["sentinel.partition.last_hash"]),
                    str(event.get("sentinel.partition.file", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            result.problem(rid, "retention event without a readable partition description")
    elif action == ERASE_ACTION:
        listed = event.get("sentinel.erasure.tombstones")
        if not isinstance(listed, list):
            result.problem(rid, "erasure event without its list of tombstones")
            return
        result.erasures[rid] = {int(i): str(h) for i, h in listed}


def _locate_terms(db: sqlite3.Connection, result: FileResult, after: int) -> None:
    """Second pass, only when the term checksums differ: which records' terms were changed."""
    expected: dict[int, set[str]] = {}
    for rid, doc in db.execute("SELECT id, doc FROM events WHERE id > ?", (after,)):
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            expected[rid] = set(records.terms(orjson.loads(doc)))
    actual: dict[int, set[str]] = {}
    for b, term, rid in db.execute("SELECT b, term, id FROM terms WHERE id > ?", (after,)):
        actual.setdefault(rid, set()).add(term if b == rid >> BUCKET_BITS else f"{term} (in bucket {b})")
    for rid in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(rid, set()), actual.get(rid, set())
        if want != got:
            missing, extra = sorted(want - got), sorted(got - want)
            result.problem(
                rid,
                "its index terms differ from its document (modified): "
                + ", ".join([*(f"missing {t}" for t in missing), *(f"extra {t}" for t in extra)]),
            )


def verify(live: Path, *, anchors: Mapping[int, bytes] | None = None, jobs: int | None = None) -> VerifyReport:
    """Check the whole store at ``live`` (its partitions found beside it)."""
    start = time.monotonic()
    anchors = dict(anchors or {})
    problems: list[Problem] = []
    notes: list[str] = []
    if not live.exists():
        problems.append(Problem(live.name, None, "the live store file is missing"))
        return VerifyReport([], problems, notes, 0, None, time.monotonic() - start)
    with maintenance_lock(live, shared=True):
        tasks = [(path, False) for _month, path in partitions(live)] + [(live, True)]
        jobs = min(jobs or os.cpu_count() or 1, len(tasks))
        ids = sorted(anchors)
        if jobs > 1:
            # fork is cheapest and safe in a single-threaded process (the CLI); else a fork server
            context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
            with ProcessPoolExecutor(jobs, mp_context=context) as pool:
                results = list(pool.map(check_file, [p for p, _ in tasks], [lv for _, lv in tasks], [ids] * len(tasks)))
        else:
            results = [check_file(path, lv, ids) for path, lv in tasks]
    for r in results:
        problems.extend(r.problems)
    _link(results, problems, notes)
    _erasures(results, problems)
    head = next((r.head for r in results if r.live and r.head), None)
    _anchors(results, anchors, head, problems, notes)
    total = sum(r.count for r in results)
    return VerifyReport(results, problems, notes, total, (head[0], head[1]) if head else None, time.monotonic() - start)


def _link(results: list[FileResult], problems: list[Problem], notes: list[str]) -> None:
    """The partitions chained to each other, from the genesis or a retention event."""
    chain = [r for r in results if r.first_id is not None]
    drops = [d for r in results for d in r.drops]
    previous: FileResult | None = None
    for r in chain:
        assert r.first_id is not None
        if previous is None:
            if r.first_id == 1:
                if records.link_hash(GENESIS, 1, r.first_content) != r.first_hash:
                    problems.append(Problem(r.name, 1, "does not start the chain (modified or replaced)"))
            else:
                vouched = [d for d in drops if d[1] == r.first_id - 1]
                if not any(records.link_hash(d[2], r.first_id, r.first_content) == r.first_hash for d in vouched):
                    problems.append(
                        Problem(
                            r.name,
                            r.first_id,
                            f"records 1..{r.first_id - 1} are missing and no retention event accounts for them "
                            "(partition files deleted?)"
                            if not vouched
                            else "does not link to the partition its retention event describes",
                        )
                    )
                else:
                    notes.append(f"records 1..{r.first_id - 1} were dropped by retention")
        else:
            assert previous.last_id is not None
            if r.first_id != previous.last_id + 1:
                gap = f"records {previous.last_id + 1}..{r.first_id - 1}"
                problems.append(
                    Problem(
                        r.name,
                        r.first_id,
                        f"{gap} are missing between {previous.name} and this file "
                        "(records or a whole partition file deleted)"
                        if r.first_id > previous.last_id + 1
                        else f"overlaps {previous.name} (records re-inserted?)",
                    )
                )
            elif records.link_hash(previous.last_hash, r.first_id, r.first_content) != r.first_hash:
                problems.append(Problem(r.name, r.first_id, f"does not link to the last record of {previous.name}"))
        previous = r
    live = next((r for r in results if r.live), None)
    if live is not None and live.head is not None:
        head_id, head_hash, sealed = live.head
        last = chain[-1] if chain else None
        if live.first_id is None and last is not None and (head_id, head_hash) != (last.last_id, last.last_hash):
            problems.append(Problem(live.name, head_id, "the chain head does not name the last sealed record"))
        sealed_parts = [r for r in results if not r.live and r.meta is not None]
        if sealed_parts and sealed_parts[-1].meta is not None and sealed_parts[-1].meta[1] != sealed:
            problems.append(
                Problem(live.name, None, f"head says sealed through {sealed}, the newest partition ends elsewhere")
            )
    pending = {d[3] for d in drops} & {r.name for r in results if not r.live}
    for name in sorted(pending):
        notes.append(f"{name} was recorded as dropped but is still present (deletion pending)")


def _erasures(results: list[FileResult], problems: list[Problem]) -> None:
    """Erased records against the erasure events listing them."""
    events: dict[int, dict[int, str]] = {}
    for r in results:
        events.update(r.erasures)
    done: dict[int, set[int]] = {}
    oldest = min((r.first_id for r in results if r.first_id is not None), default=1)
    for r in results:
        for by, rid, tomb in r.erased:
            listing = events.get(by)
            if listing is None or rid not in listing:
                problems.append(Problem(r.name, rid, f"is erased, but erasure event {by} does not list it (modified)"))
            elif listing[rid] != tomb:
                problems.append(Problem(r.name, rid, "its tombstone was modified after the erasure"))
            done.setdefault(by, set()).add(rid)
    for by, listing in sorted(events.items()):
        left = sorted(rid for rid in listing if rid >= oldest and rid not in done.get(by, set()))
        if left:
            problems.append(
                Problem(
                    "erasure",
                    by,
                    f"erasure incomplete: {len(left)} listed records not tombstoned (first {left[0]}); "
                    "run `sentinel audit erase` for the same user again to complete it",
                )
            )


def _anchors(
    results: list[FileResult],
    anchors: Mapping[int, bytes],
    head: tuple[int, bytes, int] | None,
    problems: list[Problem],
    notes: list[str],
) -> None:
    found: dict[int, bytes] = {}
    for r in results:
        found.update(r.anchors)
    oldest = min((r.first_id for r in results if r.first_id is not None), default=1)
    for rid, expected in sorted(anchors.items()):
        if rid in found:
            if found[rid] != expected:
                problems.append(Problem("anchor", rid, "hash differs from the anchor: the chain was rewritten"))
        elif rid < oldest:
            notes.append(f"anchor {rid} is older than the oldest record kept: not checked")
        elif head is None or rid > head[0]:
            problems.append(Problem("anchor", rid, "is beyond the end of the chain: records deleted from the end"))
        else:
            problems.append(Problem("anchor", rid, "record not found"))
