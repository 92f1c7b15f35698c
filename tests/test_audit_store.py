"""The embedded store as auditors rely on it: partitions, hash chain, retention, backup, queries,
data-subject export and erasure, and durability under SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from sentinel.cli import main
from sentinel.collectors.sources.base import Batch
from sentinel.event import Event
from sentinel.store import SQLiteStore
from sentinel.store.audit import Query, parse_network, parse_time
from sentinel.store.maintenance import backup, maintain
from sentinel.store.records import AUDIT_DATASET, ERASE_ACTION, RETENTION_ACTION, TOMBSTONE
from sentinel.store.sqlite import partition_path, partitions
from sentinel.store.sqlite_audit import SQLiteAudit
from sentinel.store.verify import Problem, verify

START = datetime(2024, 1, 3, tzinfo=UTC).timestamp()
DAY = 86400.0
USERS = ("alice", "bob", "carol", "dave")


class Clock:
    """A settable wall clock for arrival times."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def make_event(n: int, at: float) -> Event:
    user = USERS[n % len(USERS)]
    event: Event = {
        "@timestamp": iso(at),
        "event.kind": "event",
        "event.category": ["authentication"],
        "event.action": "ssh_login_failed" if n % 3 else "ssh_login",
        "event.outcome": "failure" if n % 3 else "success",
        "event.dataset": "sshd",
        "source.ip": f"10.{n % 4}.{n % 7}.{n % 250}" if n % 10 else f"2001:db8::{n:x}",
        "user.name": user,
        "host.hostname": "web1" if n % 2 else "db1",
        "message": f"Failed password for {user} from somewhere port {n}",
        "n": n,
    }
    if n % 5 == 0:
        event["user.effective.name"] = "root"
        event["related.user"] = [user, "root"]
        event["event.category"] = ["process"]
    if n % 11 == 0:
        event["event.kind"] = "alert"
        event["rule.id"] = "ssh-brute-force"
    return event


def fill(live: Path, months: int, per_month: int, clock: Clock | None = None) -> tuple[SQLiteStore, Clock]:
    """A store with ``months`` sealed months of ``per_month`` events and a live month as big."""
    clock = clock or Clock()
    store = SQLiteStore(live, clock=clock)
    n = 0
    for month in range(months + 1):
        if month:
            clock.now += 31 * DAY
            maintain(live, 100_000, now=clock.now)
        month_start = clock.now
        for batch in range(4):
            events = []
            for _ in range(per_month // 4):
                events.append(make_event(n, month_start + n * 60))
                n += 1
            store.commit(Batch("auth", events, {"offset": n, "batch": batch}))
    return store, clock  # the last month stays live


@pytest.fixture
def store4(tmp_path: Path) -> Iterator[tuple[Path, SQLiteStore]]:
    """Four sealed partitions of 40 events (ids 1..160) plus 40 live ones, and the store open."""
    live = tmp_path / "events.db"
    store, _clock = fill(live, months=4, per_month=40)
    yield live, store
    store.close()


def problems(live: Path, **kw: Any) -> list[Problem]:
    report = verify(live, jobs=1, **kw)
    assert report.ok == (not report.problems)
    return report.problems


def part_files(live: Path) -> list[Path]:
    return [p for _, p in partitions(live)]


# -- layout and chain -----------------------------------------------------------------------------


def test_months_are_sealed_into_partitions_and_the_chain_verifies(store4: tuple[Path, SQLiteStore]) -> None:
    live, store = store4
    assert [p.name for p in part_files(live)] == [f"events-2024-0{m}.db" for m in (1, 2, 3, 4)]
    assert store.count() == 200
    assert [e["n"] for e in store.iter_events()] == list(range(200))
    assert store.checkpoint("auth") == {"offset": 200, "batch": 3}
    with sqlite3.connect(live) as db:  # the live file keeps the old readers' view
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 40
        assert db.execute("SELECT state FROM checkpoints WHERE source = 'auth'").fetchone()[0]
    with sqlite3.connect(part_files(live)[0]) as db:
        assert db.execute("SELECT first_id, last_id, count FROM partition").fetchone() == (1, 40, 40)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    report = verify(live, jobs=2)
    assert report.ok, report.problems
    assert report.records == 200
    assert report.head is not None and report.head[0] == 200


def test_a_modified_field_is_found_at_its_record(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    second = part_files(live)[1]
    with sqlite3.connect(second) as db:
        db.execute("""UPDATE events SET doc = json_set(doc, '$."user.name"', 'mallory') WHERE id = 50""")
    found = problems(live)
    assert {(p.file, p.record) for p in found} == {("events-2024-02.db", 50)}
    assert "does not match the chain: modified" in found[0].message


def test_an_indexed_column_changed_alone_is_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    with sqlite3.connect(live) as db:  # hide a record from address queries without touching its document
        db.execute("UPDATE events SET ip = NULL WHERE id = 170")
    found = problems(live)
    assert [(p.file, p.record) for p in found] == [("events.db", 170)]
    assert "indexed columns" in found[0].message


def test_a_removed_index_term_is_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    with sqlite3.connect(part_files(live)[2]) as db:
        db.execute("DELETE FROM terms WHERE id = 90 AND term LIKE 'user:%'")
    found = problems(live)
    assert [(p.file, p.record) for p in found] == [("events-2024-03.db", 90)]
    assert "missing user:" in found[0].message


@pytest.mark.parametrize("where", ["partition", "live"])
def test_a_deleted_record_is_found(store4: tuple[Path, SQLiteStore], where: str) -> None:
    live, _ = store4
    path, rid = (part_files(live)[0], 17) if where == "partition" else (live, 175)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE id = ?", (rid,))
    found = problems(live)
    assert (path.name, rid + 1) in [(p.file, p.record) for p in found]
    assert any(f"records {rid}..{rid} are missing" in p.message for p in found)


def test_an_inserted_record_is_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    with sqlite3.connect(live) as db:
        (digest,) = db.execute("SELECT hash FROM events WHERE id = 200").fetchone()
        db.execute(
            "INSERT INTO events (id, ts, ip, action, outcome, rule, host, doc, salt, hash) "
            "SELECT 201, ts, ip, action, outcome, rule, host, doc, salt, ? FROM events WHERE id = 200",
            (digest,),
        )
    found = problems(live)
    assert ("events.db", 201) in [(p.file, p.record) for p in found]


def test_two_swapped_records_are_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    with sqlite3.connect(part_files(live)[3]) as db:
        db.execute("UPDATE events SET id = -1 WHERE id = 130")
        db.execute("UPDATE events SET id = 130 WHERE id = 131")
        db.execute("UPDATE events SET id = 131 WHERE id = -1")
    found = problems(live)
    assert {(p.file, p.record) for p in found} >= {("events-2024-04.db", 130), ("events-2024-04.db", 131)}


def test_a_deleted_middle_partition_is_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    part_files(live)[1].unlink()
    found = problems(live)
    assert len(found) == 1
    assert (found[0].file, found[0].record) == ("events-2024-03.db", 81)
    assert "records 41..80 are missing between events-2024-01.db and this file" in found[0].message


def test_a_deleted_oldest_partition_is_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    part_files(live)[0].unlink()
    found = problems(live)
    assert [(p.file, p.record) for p in found] == [("events-2024-02.db", 41)]
    assert "no retention event accounts for them" in found[0].message


def test_a_forged_erasure_is_found(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    with sqlite3.connect(live) as db:  # pretend record 180 was erased, to rewrite it freely
        salt, doc = db.execute("SELECT salt, doc FROM events WHERE id = 180").fetchone()
        import hashlib

        digest = hashlib.sha256(salt + doc.encode()).digest()
        db.execute(
            "UPDATE events SET doc = '{}', salt = NULL, digest = ?, erased_by = 999, ts = 0, ip = NULL, action = NULL,"
            " outcome = NULL, host = NULL, rule = NULL WHERE id = 180",
            (digest,),
        )
        db.execute("DELETE FROM terms WHERE id = 180")
    found = problems(live)
    assert [(p.file, p.record) for p in found] == [("events.db", 180)]
    assert "erasure event 999 does not list it" in found[0].message


def test_a_truncated_and_rewritten_end_is_caught_by_an_anchor(store4: tuple[Path, SQLiteStore]) -> None:
    live, store = store4
    head = store.head()
    with sqlite3.connect(live) as db:  # cut the last 5 records and fix the head up to match
        db.execute("DELETE FROM events WHERE id > 195")
        db.execute("DELETE FROM terms WHERE id > 195")
        db.execute("UPDATE head SET id = 195, hash = (SELECT hash FROM events WHERE id = 195)")
    assert problems(live) == []  # a keyless chain cannot tell on its own…
    found = problems(live, anchors={head.id: head.hash})  # …the head logged earlier can
    assert [(p.file, p.record) for p in found] == [("anchor", 200)]


def test_verify_command_names_the_place_and_fails(store4: tuple[Path, SQLiteStore], capsys: Any) -> None:
    live, _ = store4
    assert main(["audit", "verify", "--store", str(live), "-j", "2"]) == 0
    assert "ok: 200 records in 5 files" in capsys.readouterr().out
    with sqlite3.connect(part_files(live)[0]) as db:
        db.execute("UPDATE events SET doc = replace(doc, 'alice', 'eve') WHERE id = 5")
    assert main(["audit", "verify", "--store", str(live)]) == 1
    out, err = capsys.readouterr()
    assert "events-2024-01.db record 5: does not match the chain" in out
    assert "FAILED: " in err


def test_several_writers_build_one_chain(tmp_path: Path) -> None:
    """The daemon and a `sentinel audit` process both append (erasure, retention events)."""
    live = tmp_path / "events.db"
    a, b = SQLiteStore(live), SQLiteStore(live)
    for i in range(20):
        (a if i % 3 else b).commit(Batch("s", [make_event(i, START)], {"i": i}))
    a.append([make_event(99, START)])
    assert problems(live) == []
    assert b.count() == 21
    a.close()
    b.close()


def test_a_first_format_store_is_migrated(tmp_path: Path) -> None:
    live = tmp_path / "events.db"
    with sqlite3.connect(live) as db:
        db.executescript(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT, doc TEXT NOT NULL);"
            "CREATE INDEX events_ts ON events (ts);"
            "CREATE TABLE checkpoints (source TEXT PRIMARY KEY, state TEXT NOT NULL);"
        )
        db.executemany("INSERT INTO events (ts, doc) VALUES (?, ?)", [(None, json.dumps({"n": i})) for i in range(5)])
        db.execute("INSERT INTO checkpoints VALUES ('auth', '{\"offset\": 7}')")
    with SQLiteStore(live) as store:
        assert [e["n"] for e in store.iter_events()] == list(range(5))
        assert store.checkpoint("auth") == {"offset": 7}
    assert problems(live) == []


# -- retention ------------------------------------------------------------------------------------


def test_retention_drops_expired_partitions_records_it_and_still_verifies(tmp_path: Path, capsys: Any) -> None:
    live = tmp_path / "events.db"
    store, clock = fill(live, months=30, per_month=8)
    assert len(part_files(live)) == 30
    clock.now += 1 * DAY
    # dry run: nothing changes
    config = tmp_path / "empty.toml"
    config.write_text("")
    report = maintain(live, 730, now=clock.now, dry_run=True)
    expiring = [p.month for p in report.dropped]
    # the clock is at 2026-07-22: 730 days earlier is 2024-07-22, the end of June's partition
    assert expiring == ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06"]
    assert len(part_files(live)) == 30

    report = maintain(live, 730, now=clock.now)
    assert [p.month for p in report.dropped] == expiring
    assert part_files(live)[0].name == "events-2024-07.db"
    verified = verify(live, jobs=2)
    assert verified.ok, verified.problems
    assert verified.notes == ["records 1..48 were dropped by retention"]
    drops = SQLiteAudit(live).search(Query(action=RETENTION_ACTION, limit=50)).hits
    assert [h.event["sentinel.partition.month"] for h in drops] == expiring
    assert drops[-1].event["sentinel.partition.last_id"] == 48
    assert drops[-1].event["event.dataset"] == AUDIT_DATASET

    # again later, from the command line: the partition holding the first drop events may go too
    assert main(["audit", "retention", "-c", str(config), "--store", str(live), "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert "dropped events-2024-07.db: records 49..56 (8)" in out
    assert "audit chain head: record" in out
    assert verify(live, jobs=1).ok
    store.close()


def test_retention_dry_run_command_changes_nothing(tmp_path: Path, capsys: Any) -> None:
    live = tmp_path / "events.db"
    store, _ = fill(live, months=2, per_month=4)
    store.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["audit", "retention", "--store", str(live), "--dry-run", "--days", "1"]) == 0
    assert "would drop events-2024-01.db: records 1..4 (4)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- backup ---------------------------------------------------------------------------------------


def test_online_backup_restores_to_a_store_that_verifies(store4: tuple[Path, SQLiteStore], tmp_path: Path) -> None:
    live, store = store4
    stop = threading.Event()

    def keep_writing() -> None:
        i = 1000
        while not stop.is_set():
            store.commit(Batch("auth", [make_event(i, START)], {"offset": i}))
            i += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        manifest = backup(live, tmp_path / "backup")
    finally:
        stop.set()
        writer.join()
    assert manifest["files"] == [*(p.name for p in part_files(live)), "events.db"]
    restored = tmp_path / "restored"
    shutil.copytree(tmp_path / "backup", restored)
    report = verify(restored / "events.db", jobs=2)
    assert report.ok, report.problems
    assert report.head == (manifest["head"]["id"], bytes.fromhex(manifest["head"]["hash"]))
    assert report.records >= 200
    with SQLiteStore(restored / "events.db") as again:  # the restored store takes writes again
        assert again.checkpoint("auth") is not None
        again.commit(Batch("auth", [make_event(1, START)], {"offset": 1}))
    assert verify(restored / "events.db", jobs=1).ok


def test_backup_command_refuses_a_non_empty_destination(store4: tuple[Path, SQLiteStore], tmp_path: Path) -> None:
    live, _ = store4
    dest = tmp_path / "b"
    assert main(["audit", "backup", "--store", str(live), str(dest)]) == 0
    assert (dest / "MANIFEST.json").exists()
    assert main(["audit", "backup", "--store", str(live), str(dest)]) == 2


# -- queries --------------------------------------------------------------------------------------


def all_pages(audit: SQLiteAudit, query: Query) -> list[int]:
    out: list[int] = []
    while True:
        page = audit.search(query)
        out.extend(h.event["n"] for h in page.hits)
        if page.next is None:
            return out
        query = Query(**{**query.__dict__, "after": page.next})


def expected(pred: Callable[[Event], bool], total: int = 200) -> list[int]:
    return [n for n in range(total) if pred(make_event(n, 0))]


def test_query_filters_over_partitions(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    audit = SQLiteAudit(live)

    def q(**kw: Any) -> list[int]:
        return all_pages(audit, Query(limit=7, **kw))

    def ip_in(net: str) -> Callable[[Event], bool]:
        network = parse_network(net)
        return lambda e: parse_network(e["source.ip"]).network_address in network

    assert q() == list(range(200))
    assert q(network=parse_network("10.1.0.0/16")) == expected(ip_in("10.1.0.0/16"))
    assert q(network=parse_network("10.2.3.0/24")) == expected(ip_in("10.2.3.0/24"))
    assert q(network=parse_network("10.1.1.1")) == expected(lambda e: e["source.ip"] == "10.1.1.1")
    assert q(network=parse_network("2001:db8::/64")) == expected(lambda e: ":" in e["source.ip"])
    assert q(network=parse_network("0.0.0.0/0")) == expected(lambda e: "." in e["source.ip"])
    assert q(user="root") == expected(lambda e: "root" in e.get("related.user", []))
    assert q(user="bob") == expected(lambda e: e["user.name"] == "bob")
    assert q(category="process") == expected(lambda e: e["event.category"] == ["process"])
    assert q(action="ssh_login", outcome="success") == expected(lambda e: e["event.action"] == "ssh_login")
    assert q(rule="ssh-brute-force") == expected(lambda e: "rule.id" in e)
    assert q(host="db1", user="alice") == expected(lambda e: e["host.hostname"] == "db1" and e["user.name"] == "alice")
    # time: events are a minute apart from each month's start
    since = parse_time("2024-02-03T00:50:00Z")
    until = parse_time("2024-03-05T01:25:00Z")
    got = q(since=since, until=until)
    assert got == [n for n, e in ((n, make_event(n, 0)) for n in range(200)) if since <= _event_time(n) < until]
    assert got and got[0] == 50 and got[-1] == 84
    assert q(since=since, until=until, network=parse_network("10.0.0.0/8")) == [
        n for n in got if "." in make_event(n, 0)["source.ip"]
    ]


def _event_time(n: int) -> float:
    month = n // 40
    return START + month * 31 * DAY + n * 60


def test_query_orders_by_event_time_across_partitions(tmp_path: Path) -> None:
    """A late event (old @timestamp, arrived this month) comes out in time order, not arrival order."""
    live = tmp_path / "events.db"
    store, _clock = fill(live, months=2, per_month=8)
    late = make_event(500, START + 10)  # event time in January, arrival in March
    store.commit(Batch("auth", [late], {}))
    got = all_pages(SQLiteAudit(live), Query(limit=3))
    assert got[:3] == [0, 500, 1]
    store.close()


def test_query_command_formats(store4: tuple[Path, SQLiteStore], capsys: Any) -> None:
    live, _ = store4
    base = ["audit", "query", "--store", str(live), "--ip", "10.1.0.0/16"]
    assert main([*base, "--json", "--limit", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["n"] for d in docs] == expected(lambda e: e["source.ip"].startswith("10.1."))
    assert all("sentinel.record" in d for d in docs)

    assert main([*base, "--csv", "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0].startswith("id,@timestamp,event.kind,event.category")
    assert len(rows) == 4
    cursor = err.split("--after ")[1].strip()
    assert main([*base, "--csv", "--limit", "3", "--after", cursor]) == 0
    more = capsys.readouterr().out.splitlines()
    assert more[1] != rows[1] and len(more) == 4

    assert main([*base, "--table", "--limit", "2", "--since", "2024-01-01", "--user", "bob"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "time", "host", "action", "outcome", "source.ip", "user", "rule", "message"]
    assert "bob" in table[1]

    assert main([*base, "--ip", "not-an-ip"]) == 2
    assert "not an address or CIDR network" in capsys.readouterr().err


# -- export and erasure ---------------------------------------------------------------------------


def test_export_collects_everything_about_a_person(store4: tuple[Path, SQLiteStore], tmp_path: Path) -> None:
    live, _ = store4
    out = tmp_path / "alice.json"
    assert main(["audit", "export", "--store", str(live), "--user", "alice", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["subject"] == {"user": "alice"}
    assert [e["event"]["n"] for e in data["events"]] == expected(lambda e: e["user.name"] == "alice")
    assert data["count"] == len(data["events"])
    assert out.stat().st_mode & 0o777 == 0o600
    root = [h.event["n"] for h in SQLiteAudit(live).export_user("root")]  # effective and related users
    assert root == expected(lambda e: e.get("user.effective.name") == "root")


def test_erase_tombstones_the_person_records_it_and_verifies(store4: tuple[Path, SQLiteStore], capsys: Any) -> None:
    live, store = store4
    alice = expected(lambda e: e["user.name"] == "alice")
    assert main(["audit", "erase", "--store", str(live), "--user", "alice"]) == 0
    assert f"{len(alice)} events name alice; run again with --yes" in capsys.readouterr().out
    erase = ["audit", "erase", "--store", str(live), "--user", "alice", "--yes", "--actor", "dpo", "--reason", "T-1"]
    assert main(erase) == 0
    assert f"erased the personal data of {len(alice)} events" in capsys.readouterr().out

    docs = {e.get("n"): e for e in store.iter_events()}
    for n in alice:
        doc = docs[n]
        assert "alice" not in orjson.dumps(doc).decode()
        assert doc["user.name"] == TOMBSTONE and doc["message"] == TOMBSTONE
        assert doc["source.ip"] == make_event(n, 0)["source.ip"]  # not personal: kept
    assert docs[1]["user.name"] == "bob"  # others untouched
    assert list(SQLiteAudit(live).export_user("alice")) == []
    for path in [*part_files(live), live]:  # the index forgot her too, and no salt is left to confirm a guess
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM terms WHERE term = 'user:alice'").fetchone()[0] == 0
            salted = db.execute("SELECT count(*) FROM events WHERE erased_by IS NOT NULL AND salt IS NOT NULL")
            assert salted.fetchone()[0] == 0

    (event,) = [e for e in store.iter_events() if e.get("event.action") == ERASE_ACTION]
    assert event["sentinel.audit.actor"] == "dpo"
    assert event["sentinel.audit.reason"] == "T-1"
    assert event["sentinel.erasure.count"] == len(alice)
    assert "alice" not in orjson.dumps(event).decode()
    report = verify(live, jobs=1)
    assert report.ok, report.problems

    with sqlite3.connect(part_files(live)[0]) as db:  # a tombstone edited afterwards is caught
        db.execute("UPDATE events SET doc = replace(doc, 'db1', 'db2') WHERE id = 1")
    found = problems(live)
    assert {(p.file, p.record) for p in found} == {("events-2024-01.db", 1)}
    assert any("tombstone was modified" in p.message for p in found)


def test_an_interrupted_erasure_is_reported_and_completed_by_running_it_again(
    store4: tuple[Path, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, _ = store4
    import sentinel.store.sqlite_audit as sa

    real = sa._apply
    calls = []

    def crash_after_two(path: Path, items: list[tuple[int, str, bytes, int]]) -> None:
        calls.append(path)
        if len(calls) > 2:
            raise KeyboardInterrupt  # as if killed here
        real(path, items)

    monkeypatch.setattr(sa, "_apply", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        SQLiteAudit(live).erase_user("bob", actor="root", reason="r")
    found = problems(live)
    assert len(found) == 1 and "erasure incomplete" in found[0].message
    monkeypatch.setattr(sa, "_apply", real)
    result = SQLiteAudit(live).erase_user("bob", actor="root", reason="r")
    assert result.completed > 0 and result.records == 0  # finished, nothing erased twice
    assert problems(live) == []
    assert list(SQLiteAudit(live).export_user("bob")) == []


def test_a_tampered_record_is_not_laundered_by_erasure(store4: tuple[Path, SQLiteStore]) -> None:
    live, _ = store4
    with sqlite3.connect(live) as db:
        db.execute("UPDATE events SET doc = replace(doc, 'port', 'PORT') WHERE id = 164")  # dave's
    with pytest.raises(Exception, match="record 164: does not match its chain hash"):
        SQLiteAudit(live).erase_user("dave", actor="root", reason="r")


# -- durability -----------------------------------------------------------------------------------

WRITER = """
import sys
from sentinel.collectors.sources.base import Batch
from sentinel.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
start = (store.checkpoint("w") or {"batch": -1})["batch"] + 1
for b in range(start, start + 100000):
    store.commit_many([Batch("w", [{"@timestamp": "2024-01-01T00:00:00Z", "batch": b, "i": i} for i in range(50)],
                             {"batch": b})])
    print(b, flush=True)
"""


def test_every_acknowledged_commit_survives_sigkill(tmp_path: Path) -> None:
    live = tmp_path / "events.db"
    acked = -1
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(live)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for _ in range(40 + 37 * round_):
            line = proc.stdout.readline()
            assert line, "the writer died"
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)  # mid-way through the next commits
        proc.wait()
        with SQLiteStore(live) as store:
            batches: dict[int, int] = {}
            for e in store.iter_events(batch_size=5000):
                batches[e["batch"]] = batches.get(e["batch"], 0) + 1
            committed = (store.checkpoint("w") or {})["batch"]
        assert committed >= acked
        assert sorted(batches) == list(range(committed + 1))  # no loss, no partial batch, no duplicate
        assert set(batches.values()) == {50}
        assert problems(live) == []


SEALER = """
import sys
from pathlib import Path
from sentinel.store import maintenance
maintenance.PURGE_CHUNK = 500  # many small transactions: more places to be killed in
maintenance.maintain(Path(sys.argv[1]), 730, now=float(sys.argv[2]))
"""


def seal_state(live: Path) -> str:
    """Where a sealing run stands."""
    if partition_path(live, "2024-01").with_suffix(".db.partial").exists():
        return "copying"
    if not partition_path(live, "2024-01").exists():
        return "not started"
    with sqlite3.connect(live) as db:
        left = db.execute("SELECT count(*) FROM events").fetchone()[0]
    return "purging" if left else "done"


def test_sealing_killed_midway_is_finished_by_the_next_run(tmp_path: Path) -> None:
    live = tmp_path / "events.db"
    clock = Clock()
    with SQLiteStore(live, clock=clock) as store:
        for b in range(60):
            store.commit(Batch("w", [make_event(b * 500 + i, START) for i in range(500)], {"b": b}))
    clock.now += 40 * DAY
    seen = []
    delay = 0.1
    while "done" not in seen:
        proc = subprocess.Popen([sys.executable, "-c", SEALER, str(live), str(clock.now)])
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        seen.append(seal_state(live))
        assert problems(live) == [], seen
        with SQLiteStore(live, clock=clock) as store:
            assert store.count() == 30000
        delay += 0.1
    assert {"copying", "purging"} & set(seen), seen  # at least one kill landed mid-way
    assert [p.name for p in part_files(live)] == ["events-2024-01.db"]
    assert problems(live) == []
