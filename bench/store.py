#!/usr/bin/env python3
"""The embedded store's figures (issue 6):

* ingest: events/s through ``SQLiteStore.commit_many`` (chain, indexes, fsync per commit) for
  the daemon's batch sizes, with ``synchronous=FULL`` (the default) beside ``NORMAL``, and the
  first-format store (JSON rows only, no chain, no indexes) as a baseline;
* two years, ≥ 10M events: generated through ``commit_many`` month by month with a fake arrival
  clock and sealed by the maintenance job (generation time reported); then a query for one
  source address over the whole range, a /24, a user and a time window; then
  ``sentinel audit verify`` over everything.

The two-year store is kept in bench/out/store-<N>/ and reused by later runs (--fresh rebuilds).

Usage:  .venv/bin/python bench/store.py [--events N] [--fresh] [--skip-verify]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sentinel.collectors.sources.base import Batch
from sentinel.event import Event
from sentinel.store import SQLiteStore
from sentinel.store.audit import Query, parse_network
from sentinel.store.maintenance import maintain
from sentinel.store.sqlite_audit import SQLiteAudit
from sentinel.store.verify import verify

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TARGET_IP = "203.0.113.77"
MONTHS = 24


def events(count: int, seed: int, start: float, span: float, target_every: int = 0) -> Iterator[Event]:
    """Realistic sshd/sudo/web events (about 450 bytes of JSON each), in time order."""
    rnd = random.Random(seed)
    users = [f"user{i:04d}" for i in range(5000)]
    for i in range(count):
        at = start + span * i / count
        stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        ip = (
            TARGET_IP
            if target_every and i % target_every == 0
            else f"198.{rnd.randrange(18, 20)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
        )
        user = rnd.choice(users)
        kind = i % 10
        if kind < 7:
            yield {
                "event.category": ["authentication"],
                "event.type": ["start"],
                "event.action": "ssh_login_failed",
                "event.outcome": "failure",
                "event.dataset": "sshd",
                "service.name": "sshd",
                "user.name": user,
                "source.address": ip,
                "source.ip": ip,
                "source.port": 30000 + i % 30000,
                "@timestamp": stamp,
                "event.kind": "event",
                "host.hostname": "web1",
                "process.name": "sshd",
                "process.pid": 1000 + i % 5000,
                "message": f"Failed password for invalid user {user} from {ip} port {30000 + i % 30000} ssh2",
                "log.file.path": "/var/log/auth.log",
                "log.offset": i * 120,
            }
        elif kind < 9:
            yield {
                "event.category": ["process"],
                "event.type": ["start"],
                "event.action": "sudo_command",
                "event.outcome": "success",
                "event.dataset": "sudo",
                "user.name": user,
                "user.effective.name": "root",
                "related.user": [user, "root"],
                "process.command_line": "/usr/bin/systemctl restart nginx",
                "@timestamp": stamp,
                "event.kind": "event",
                "host.hostname": "web1",
                "message": f"{user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND=/usr/bin/systemctl",
                "log.offset": i * 120,
            }
        else:
            yield {
                "event.category": ["intrusion_detection"],
                "event.kind": "alert",
                "event.action": "ssh-brute-force",
                "rule.id": "ssh-brute-force",
                "rule.name": "SSH brute force",
                "source.ip": ip,
                "@timestamp": stamp,
                "host.hostname": "web1",
                "message": f"ssh brute force from {ip}: 5 failures in 600s",
            }


def batches(total: int, size: int) -> Iterator[list[Event]]:
    """The events in batches, each made just before it is stored (as the parsers hand them on)."""
    source = events(total, 1, datetime(2025, 1, 1, tzinfo=UTC).timestamp(), 86400)
    while batch := [e for _, e in zip(range(size), source, strict=False)]:
        yield batch


def ingest(path: Path, size: int, total: int, synchronous: str, prefill: int = 0) -> float:
    """Events/s through commit_many (only the commits are timed), after ``prefill`` events."""
    store = SQLiteStore(path)
    store._db.execute(f"PRAGMA synchronous={synchronous}")
    for i, batch in enumerate(batches(prefill, 5000)):
        store.commit_many([Batch("prefill", batch, {"offset": i})])
    elapsed = 0.0
    for i, batch in enumerate(batches(total, size)):
        start = time.perf_counter()
        store.commit_many([Batch("bench", batch, {"offset": i})])
        elapsed += time.perf_counter() - start
    store.close()
    return total / elapsed


def ingest_v1(path: Path, size: int, total: int) -> float:
    """The first-format store (events(id, ts, doc), one index), synchronous=NORMAL: the baseline."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT, doc TEXT NOT NULL); CREATE INDEX e ON events(ts);"
    )
    elapsed = 0.0
    for batch in batches(total, size):
        start = time.perf_counter()
        rows = [(e["@timestamp"], orjson.dumps(e).decode()) for e in batch]
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO events (ts, doc) VALUES (?, ?)", rows)
        db.execute("COMMIT")
        elapsed += time.perf_counter() - start
    db.close()
    return total / elapsed


def generate(live: Path, total: int) -> dict[str, float]:
    """Two years of arrival months, each sealed by the maintenance job as in production."""
    per_month = total // MONTHS
    start = datetime(2024, 1, 1, tzinfo=UTC)
    clock = [start.timestamp()]
    store = SQLiteStore(live, clock=lambda: clock[0])
    ingest_s = seal_s = 0.0
    for month in range(MONTHS + 1):
        year, mon = 2024 + (month // 12), month % 12 + 1
        begin = datetime(year, mon, 1, tzinfo=UTC).timestamp()
        clock[0] = begin + 3600
        t = time.perf_counter()
        maintain(live, 10_000, now=clock[0])
        seal_s += time.perf_counter() - t
        if month == MONTHS:
            break
        batch: list[Event] = []
        for n, event in enumerate(events(per_month, month, begin, 27 * 86400, target_every=per_month // 40)):
            batch.append(event)
            if len(batch) == 5000 or n == per_month - 1:
                t = time.perf_counter()
                store.commit_many([Batch("bench", batch, {"offset": n})])
                ingest_s += time.perf_counter() - t
                batch = []
        print(
            f"  month {year}-{mon:02d}: {per_month} events, ingest so far {ingest_s:.0f}s, sealing {seal_s:.0f}s",
            flush=True,
        )
    store.close()
    return {"ingest_s": ingest_s, "seal_s": seal_s, "per_s": per_month * MONTHS / ingest_s}


def drop_caches() -> bool:
    """Empty the page cache for a cold query (root only)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any], runs: int = 5) -> tuple[float, float, Any]:
    """(first run s, median of the following runs s, result of the first)."""
    t = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t
    rest = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        rest.append(time.perf_counter() - t)
    return first, statistics.median(rest), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_080_000, help="events over the two years (default 10.08M)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the two-year store")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--ingest-events", type=int, default=500_000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}

    print("ingest through commit_many (fresh store each):")
    results["ingest"] = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        month = args.events // MONTHS
        for batch, total, sync, prefill in (
            (5000, args.ingest_events, "FULL", 0),
            (5000, args.ingest_events, "FULL", month),
            (5000, args.ingest_events, "NORMAL", month),
            (500, args.ingest_events // 2, "FULL", month),
            (50, args.ingest_events // 10, "FULL", month),
            (1, 2000, "FULL", month),
        ):
            path = Path(tmp) / f"ingest-{batch}-{sync}-{prefill}.db"
            rate = ingest(path, batch, total, sync, prefill)
            results["ingest"].append(
                {"batch": batch, "synchronous": sync, "events": total, "live_before": prefill, "events_per_s": rate}
            )
            print(f"  batch {batch:5d} synchronous={sync:6s} live file holding {prefill:7d}: {rate:10,.0f} events/s")
            path.unlink()
        base = ingest_v1(Path(tmp) / "v1.db", 5000, args.ingest_events)
        results["ingest_v1_baseline"] = base
        print(f"  first-format store (no chain, no indexes, NORMAL), batch 5000: {base:,.0f} events/s")

    live_dir = OUT / f"store-{args.events}"
    live = live_dir / "events.db"
    if args.fresh and live_dir.exists():
        shutil.rmtree(live_dir)
    if not live.exists():
        live_dir.mkdir(parents=True, exist_ok=True)
        print(f"generating {args.events:,} events over {MONTHS} months in {live_dir} …")
        t = time.perf_counter()
        gen = generate(live, args.events)
        gen["total_s"] = time.perf_counter() - t
        (live_dir / "generation.json").write_text(json.dumps(gen))
    gen = json.loads((live_dir / "generation.json").read_text())
    results["generation"] = gen
    size = sum(p.stat().st_size for p in live_dir.iterdir())
    results["store_bytes"] = size
    print(
        f"generation: {gen['total_s']:.0f}s ({gen['ingest_s']:.0f}s commit_many at {gen['per_s']:,.0f} events/s, "
        f"{gen['seal_s']:.0f}s sealing); {size / 1e9:.1f} GB on disk"
    )

    audit = SQLiteAudit(live)
    stored = SQLiteStore(live).count()
    results["stored_events"] = stored
    print(f"{stored:,} events stored")

    def one_ip_page() -> int:
        return len(audit.search(Query(network=parse_network(TARGET_IP), limit=100)).hits)

    def one_ip_all() -> int:
        n, query = 0, Query(network=parse_network(TARGET_IP), limit=1000)
        while True:
            page = audit.search(query)
            n += len(page.hits)
            if page.next is None:
                return n
            query = Query(network=query.network, limit=1000, after=page.next)

    cold = drop_caches()
    queries: list[tuple[str, Callable[[], int]]] = [
        (f"source.ip = {TARGET_IP}, every match (cold cache: {cold})", one_ip_all),
        (f"source.ip = {TARGET_IP}, first page of 100", one_ip_page),
        (
            "source.ip in 198.18.7.0/24, first page of 100",
            lambda: len(audit.search(Query(network=parse_network("198.18.7.0/24"))).hits),
        ),
        ("user = user0042, first page of 100", lambda: len(audit.search(Query(user="user0042")).hits)),
        (
            "one day, category process, first page of 100",
            lambda: len(
                audit.search(
                    Query(
                        since=datetime(2025, 3, 10, tzinfo=UTC).timestamp(),
                        until=datetime(2025, 3, 11, tzinfo=UTC).timestamp(),
                        category="process",
                    )
                ).hits
            ),
        ),
    ]
    results["queries"] = []
    print("queries over the two years:")
    for name, fn in queries:
        first, median, n = timed(fn)
        results["queries"].append({"query": name, "first_s": first, "median_s": median, "hits": n})
        print(f"  {name}: {n} hits, first {first * 1000:.0f} ms, then median {median * 1000:.0f} ms")

    if not args.skip_verify:
        for jobs in (2, 1):
            t = time.perf_counter()
            report = verify(live, jobs=jobs)
            elapsed = time.perf_counter() - t
            assert report.ok, report.problems[:5]
            results[f"verify_jobs{jobs}_s"] = elapsed
            rate = report.records / elapsed
            print(f"verify ({jobs} processes): {report.records:,} records in {elapsed:.0f}s ({rate:,.0f}/s)")
    (OUT / "store.json").write_text(json.dumps(results, indent=2))
    print(f"results in {OUT / 'store.json'}")


if __name__ == "__main__":
    main()
