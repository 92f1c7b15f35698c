"""Bounded queues between stages: a stuck store never goes unnoticed, and never loses data silently.

The end-to-end tests make the store really stuck: another connection holds a SQLite write
transaction on the event store (as a long `sentinel audit erase` or a backup tool could), so the
daemon's writer blocks inside its commit while a real file source keeps reading a real log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.collectors.sources.base import Batch
from sentinel.config import Settings
from sentinel.daemon import BatchQueue, Daemon, QueueClosed
from sentinel.event import Event
from sentinel.queues import OVERFLOW_ACTION, queue_metrics
from sentinel.responders.alerts import AlertResponder, AlertSettings
from sentinel.store import SQLiteStore
from tests.conftest import sshd_line, wait_until


def batch(n: int, source: str = "s") -> Batch:
    return Batch(source, [{"n": i} for i in range(n)], {"n": n})


def overflow_events(batches: list[Batch]) -> list[Event]:
    return [e for b in batches for e in b.events if e.get("event.action") == OVERFLOW_ACTION]


def drain(q: BatchQueue) -> list[Batch]:
    out: list[Batch] = []
    while True:
        got = q.get_many(1000, timeout=0.05)
        if not got:
            return out
        out.extend(got)


def metric_values(q: BatchQueue) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value for m in queue_metrics([q.stats]) for s in m.samples}


# -- the queue itself ----------------------------------------------------------------------------


def test_block_waits_reports_one_episode_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    q = BatchQueue(10, policy="block", overflow_wait=0.1, hostname="h")
    q.put(batch(10, "a"))
    done = threading.Event()

    def producer() -> None:
        q.put(batch(5, "b"))
        done.set()

    waiters = [threading.Thread(target=producer, daemon=True) for _ in range(2)]
    for t in waiters:
        t.start()
    wait_until(lambda: q.stats.episode is not None and q.stats.episode.waited == 2, timeout=2)
    assert not done.is_set(), "block: the producers wait"
    assert q.stats.overflows == 1
    assert "queue collectors is full (10 events)" in caplog.text
    assert metric_values(q)[("sentinel_queue_overflowing", ("collectors",))] == 1
    got = drain(q)
    for t in waiters:
        t.join(2)
    got += drain(q)
    assert sorted(len(b.events) for b in got if b.source != "sentinel.health") == [5, 5, 10]
    (event,) = overflow_events(got)
    assert event["sentinel.queue.name"] == "collectors" and event["sentinel.queue.policy"] == "block"
    assert event["sentinel.queue.waited"] == 2 and event["sentinel.queue.dropped"] == 0
    assert event["event.outcome"] == "success" and event["event.dataset"] == "sentinel.health"
    assert event["event.duration"] >= 0.1e9 and event["host.hostname"] == "h"
    assert not q.stats.overflowing
    values = metric_values(q)
    assert values[("sentinel_queue_overflows_total", ("collectors",))] == 1
    assert values[("sentinel_queue_overflowing", ("collectors",))] == 0
    assert values[("sentinel_queue_overflow_seconds_total", ("collectors",))] >= 0.1


def test_a_short_wait_is_back_pressure_not_an_overflow() -> None:
    q = BatchQueue(10, policy="block", overflow_wait=5.0)
    q.put(batch(10))
    t = threading.Thread(target=q.put, args=(batch(5),), daemon=True)
    t.start()
    time.sleep(0.1)
    drain(q)
    t.join(2)
    assert not t.is_alive()
    assert q.stats.overflows == 0 and not overflow_events(drain(q))


def test_drop_newest_counts_every_dropped_event_per_source() -> None:
    q = BatchQueue(10, policy="drop_newest", overflow_wait=0.05, hostname="h")
    assert q.put(batch(8, "a"))
    started = time.monotonic()
    assert q.put(batch(3, "b")) is False  # waited overflow_wait, then dropped
    assert time.monotonic() - started >= 0.05
    started = time.monotonic()
    assert q.put(batch(4, "b")) is False  # during the episode: dropped at once
    assert q.put(batch(2, "a")) is True  # it fits
    assert q.put(batch(7, "c")) is False
    assert q.put(batch(0, "c")) is False  # a checkpoint only: dropped, nothing to count
    assert time.monotonic() - started < 0.05
    assert dict(q.stats.dropped_total) == {"b": 7, "c": 7}
    got = drain(q)
    (event,) = overflow_events(got)
    assert event["sentinel.queue.dropped"] == 14 and event["sentinel.queue.dropped_by"] == {"b": 7, "c": 7}
    assert event["event.outcome"] == "failure" and "14 events dropped (7 from b, 7 from c)" in event["message"]
    assert [len(b.events) for b in got if b.source != "sentinel.health"] == [8, 2]
    values = metric_values(q)
    assert values[("sentinel_queue_dropped_total", ("collectors", "b"))] == 7
    assert values[("sentinel_queue_dropped_total", ("collectors", "c"))] == 7


def test_the_internal_lane_never_blocks_and_goes_first() -> None:
    q = BatchQueue(10, policy="block")
    q.put(batch(10, "a"))
    started = time.monotonic()
    assert q.put_internal(batch(3, "responders"))
    assert time.monotonic() - started < 0.05
    got = q.get_many(100, timeout=0.1)
    assert got is not None and [b.source for b in got] == ["responders", "a"]
    assert q.put_internal(batch(10, "responders"))
    assert q.put_internal(batch(1, "responders")) is False  # its own bound: dropped, counted
    assert q.stats.dropped_total["responders"] == 1
    q.close()
    with pytest.raises(QueueClosed):
        q.put_internal(batch(1))


# -- the daemon with a stuck store ------------------------------------------------------------------


def settings_for(tmp_path: Path, log: Path, overflow: str) -> Settings:
    return Settings.model_validate(
        {
            "daemon": {"state_dir": tmp_path / "state", "hostname": "test-host"},
            "collectors": {"poll_interval": 0.02, "queue_size": 10, "overflow": overflow, "overflow_wait": 0.2},
            "ports": {"enabled": False},
            "sources": [{"type": "file", "name": "auth", "paths": [log], "start_at": "beginning", "format": "syslog"}],
        }
    )


class StuckStore:
    """Another connection holding a write transaction on the event store: every commit waits."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Any]]:
    held: dict[str, Any] = {}
    yield held
    if "stuck" in held:
        with contextlib.suppress(sqlite3.ProgrammingError):  # released by the test already
            held["stuck"].release()
    if "daemon" in held:
        held["daemon"].stop()


def write_lines(log: Path, start: int, count: int, per_append: int = 5, pause: float = 0.06) -> None:
    """Append ``count`` lines in several writes, so the source hands them on in several batches."""
    for i in range(start, start + count, per_append):
        with log.open("ab") as fh:
            fh.write(b"".join(sshd_line(j) for j in range(i, min(i + per_append, start + count))))
        time.sleep(pause)


def log_events(store_path: Path) -> list[int]:
    with sqlite3.connect(store_path, timeout=10) as conn:
        rows = conn.execute("""SELECT json_extract(doc, '$."process.pid"') FROM events""").fetchall()
    return sorted(r[0] for r in rows if r[0] is not None)


def health_events(store_path: Path) -> list[Event]:
    with sqlite3.connect(store_path, timeout=10) as conn:
        docs = [json.loads(r[0]) for r in conn.execute("SELECT doc FROM events")]
    return [d for d in docs if d.get("event.dataset") == "sentinel.health"]


def test_block_mode_with_a_stuck_store_reports_it_and_loses_nothing(
    tmp_path: Path, running: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(b"")
    store_path = tmp_path / "events.db"
    store = SQLiteStore(store_path)
    daemon = running["daemon"] = Daemon(settings_for(tmp_path, log, "block"), store)
    daemon.build_sources()
    daemon.start()
    running["stuck"] = stuck = StuckStore(store_path)
    with caplog.at_level(logging.INFO, logger="sentinel.queues"):
        write_lines(log, 0, 60)
        wait_until(lambda: daemon.queue.stats.overflowing, timeout=5)
        (source,) = daemon.sources
        assert "auth" in daemon._emitting, "block: the source waits for room"
        assert daemon.queue.stats.overflows == 1
        assert "queue collectors is full" in caplog.text
        stuck.release()  # the store recovers
        wait_until(lambda: log_events(store_path) == list(range(60)), timeout=15)
        wait_until(lambda: bool(health_events(store_path)), timeout=5)
    (event,) = health_events(store_path)
    assert event["event.action"] == "queue-overflow" and event["sentinel.queue.name"] == "collectors"
    assert event["sentinel.queue.waited"] >= 1 and event["sentinel.queue.dropped"] == 0
    assert event["event.duration"] >= 0.2e9 and event["host.hostname"] == "test-host"
    assert source.status.stats.events == 60
    assert daemon.queue.stats.overflows == 1 and not daemon.queue.stats.dropped_total


def test_drop_mode_with_a_stuck_store_keeps_reading_and_counts_every_drop(
    tmp_path: Path, running: dict[str, Any]
) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(b"")
    store_path = tmp_path / "events.db"
    store = SQLiteStore(store_path)
    daemon = running["daemon"] = Daemon(settings_for(tmp_path, log, "drop_newest"), store)
    daemon.build_sources()
    daemon.start()
    running["stuck"] = stuck = StuckStore(store_path)
    write_lines(log, 0, 100)
    (source,) = daemon.sources
    # The source keeps reading while the store is stuck: it reaches the end of the file.
    wait_until(lambda: source.status.stats.events == 100, timeout=10)
    wait_until(lambda: (source.progress() or ((), 1))[1] == 0, timeout=5)  # nothing left unread
    dropped = daemon.queue.stats.dropped_total["auth"]
    assert dropped > 0 and daemon.queue.stats.overflowing
    stuck.release()
    wait_until(lambda: bool(health_events(store_path)), timeout=15)
    stored = log_events(store_path)
    assert len(stored) + dropped == 100, "every event is either stored or counted as dropped"
    (event,) = health_events(store_path)
    assert event["sentinel.queue.dropped"] == dropped and event["sentinel.queue.dropped_by"] == {"auth": dropped}
    assert event["event.outcome"] == "failure"
    assert f"{dropped} events dropped ({dropped} from auth)" in event["message"]
    # Once there is room again nothing more is dropped.
    write_lines(log, 100, 10)
    wait_until(lambda: log_events(store_path)[-10:] == list(range(100, 110)), timeout=10)
    assert daemon.queue.stats.dropped_total["auth"] == dropped


# -- responder queues ----------------------------------------------------------------------------------


def finding(i: int) -> Event:
    return {
        "@timestamp": "2026-11-22T10:00:00Z",
        "event.kind": "alert",
        "event.id": f"f-{i}",
        "rule.id": "unexpected-port",
        "rule.name": "Unexpected listening port",
        "message": f"port {i}",
        "sentinel.group.port": str(i),
        "sentinel.actions": [{"type": "alert", "severity": "high"}],
    }


def test_a_stuck_alert_dispatcher_drops_the_oldest_alerts_and_says_so() -> None:
    gate = threading.Event()
    events: list[Event] = []
    lock = threading.Lock()

    def emit(batch: list[Event]) -> None:
        if threading.current_thread().name == "alerts-dispatch":
            gate.wait(10)  # the dispatcher is stuck on its first event
        with lock:
            events.extend(batch)

    responder = AlertResponder(AlertSettings(queue_size=10, response_wait=0.0, rate_limit=100), channels=[])
    responder.start(emit)
    try:
        responder.submit(finding(0), {"type": "alert", "severity": "high"})
        wait_until(lambda: not responder._inbox, timeout=5)  # taken: the dispatcher is now stuck
        time.sleep(0.1)
        for i in range(1, 16):
            responder.submit(finding(i), {"type": "alert", "severity": "high"})
        assert len(responder._inbox) == 10
        with lock:
            dropped = [e for e in events if e.get("sentinel.status") == "dropped"]
        assert [e["sentinel.finding_id"] for e in dropped] == [f"f-{i}" for i in range(1, 6)]
        assert all(e["event.outcome"] == "failure" for e in dropped)
        assert "alert queue full" in dropped[0]["sentinel.alert"]["reason"]
        gate.set()
        wait_until(lambda: any(e.get("event.action") == OVERFLOW_ACTION for e in list(events)), timeout=5)
    finally:
        gate.set()
        responder.stop(2)
    (overflow,) = [e for e in events if e.get("event.action") == OVERFLOW_ACTION]
    assert overflow["sentinel.queue.name"] == "alerts" and overflow["sentinel.queue.dropped"] == 5
    assert overflow["sentinel.queue.policy"] == "drop_oldest"
    unrouted = {e["sentinel.finding_id"] for e in events if e.get("sentinel.status") == "unrouted"}
    assert unrouted == {f"f-{i}" for i in (0, *range(6, 16))}, "the others are all handled"


def test_an_episode_cut_short_by_a_restart_is_stored_by_the_next_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    journal = state / "queue-overflow.json"
    q = BatchQueue(10, policy="drop_newest", overflow_wait=0.05, journal=journal)
    q.put(batch(10, "a"))
    assert not q.put(batch(3, "b"))
    assert json.loads(journal.read_bytes())["dropped"] == {"b": 3}, "kept at once when the episode starts"
    assert not q.put(batch(4, "b"))
    time.sleep(1.05)
    assert not q.put(batch(5, "c"))  # kept at most once a second
    assert json.loads(journal.read_bytes())["dropped"] == {"b": 7, "c": 5}
    # The process is killed here (the watchdog): the queue never drains.  The next start:
    store_path = tmp_path / "events.db"
    settings = Settings.model_validate({"daemon": {"state_dir": state, "hostname": "h"}, "ports": {"enabled": False}})
    daemon = Daemon(settings, SQLiteStore(store_path))
    daemon.start()
    try:
        wait_until(lambda: bool(health_events(store_path)))
    finally:
        daemon.stop()
    (event,) = health_events(store_path)
    assert event["event.action"] == OVERFLOW_ACTION and event["sentinel.queue.interrupted"] is True
    assert event["sentinel.queue.dropped_by"] == {"b": 7, "c": 5} and event["sentinel.queue.dropped"] == 12
    assert event["event.duration"] >= 1e9 and "Sentinel stopped before the queue drained" in event["message"]
    assert not journal.exists()


def test_a_finished_episode_leaves_no_record(tmp_path: Path) -> None:
    journal = tmp_path / "queue-overflow.json"
    q = BatchQueue(10, policy="drop_newest", overflow_wait=0.01, journal=journal)
    q.put(batch(10))
    assert not q.put(batch(1))
    assert journal.exists()
    assert overflow_events(drain(q))
    assert not journal.exists()
