"""The self-check: a source that stops advancing while its input grows, or whose thread died, is
reported (log, metric, event in the store); one that merely waits for room in the queue is not."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.sources.base import Batch, Source
from sentinel.collectors.sources.file import FileSource
from sentinel.config import FileSourceSettings, Settings
from sentinel.daemon import Daemon
from sentinel.event import Event
from sentinel.store import SQLiteStore
from tests.conftest import sshd_line, wait_until


def settings(tmp_path: Path, **collectors: object) -> Settings:
    return Settings.model_validate(
        {
            "daemon": {"state_dir": tmp_path / "state", "hostname": "test-host"},
            "collectors": {"poll_interval": 0.02, "stall_checks": 2, **collectors},
            "ports": {"enabled": False},
        }
    )


def health(store: Path) -> list[Event]:
    with sqlite3.connect(store, timeout=10) as conn:
        docs = [json.loads(r[0]) for r in conn.execute("SELECT doc FROM events")]
    return [d for d in docs if d.get("event.dataset") == "sentinel.health"]


def stalled_metric(daemon: Daemon, source: str) -> float | None:
    for family in daemon.watch.metrics():
        for s in family.samples:
            if s.name == "sentinel_source_stalled" and s.labels == {"source": source}:
                return s.value
    return None


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def test_a_stuck_parser_is_reported_stalled_then_resumed(
    tmp_path: Path, daemons: list[Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(b"".join(sshd_line(i) for i in range(5)))
    gate = threading.Event()
    syslog = get_parser("syslog")

    def parse(line: str) -> Event | None:
        if "POISON" in line:
            gate.wait(30)  # a parser stuck on one pathological line
        return syslog(line)

    store_path = tmp_path / "events.db"
    daemon = Daemon(settings(tmp_path), SQLiteStore(store_path))
    source = FileSource(
        "auth",
        FileSourceSettings(paths=[log], start_at="beginning", format="syslog"),
        None,
        poll_interval=0.02,
        parser=parse,
    )
    daemon.sources.append(source)
    daemon.start()
    daemons.append(daemon)
    (job,) = [j for j in daemon.scheduler.status() if j["id"] == "self-check"]
    assert job["interval"] == 60
    wait_until(lambda: source.status.stats.events == 5)
    daemon.watch.check()
    daemon.watch.check()
    daemon.watch.check()
    assert daemon.watch.stalled() == {}, "no input waiting: idle, not stalled"

    with log.open("ab") as fh:
        fh.write(b"Nov 22 10:00:00 web1 sshd[77]: POISON\n" + b"".join(sshd_line(i) for i in range(5, 10)))
    wait_until(lambda: (source.progress() or ((), 0))[1] > 0)
    daemon.watch.check()
    assert daemon.watch.stalled() == {}, "one check without progress is not enough"
    daemon.watch.check()
    assert "input is waiting past its position" in daemon.watch.stalled()["auth"]
    assert stalled_metric(daemon, "auth") == 1
    assert "source auth is stalled" in caplog.text
    wait_until(lambda: any(e["event.action"] == "source-stalled" for e in health(store_path)))
    (stalled,) = [e for e in health(store_path) if e["event.action"] == "source-stalled"]
    assert stalled["sentinel.source.name"] == "auth" and stalled["sentinel.source.backlog"] > 0
    assert stalled["event.outcome"] == "failure" and stalled["host.hostname"] == "test-host"
    daemon.watch.check()  # still stalled: reported once
    assert sum(e["event.action"] == "source-stalled" for e in health(store_path)) == 1

    gate.set()
    wait_until(lambda: (source.progress() or ((), 1))[1] == 0)  # read to the end
    assert source.status.stats.lines == 11
    daemon.scheduler.run_now("self-check")  # the scheduled job, this time
    wait_until(lambda: any(e["event.action"] == "source-resumed" for e in health(store_path)))
    (resumed,) = [e for e in health(store_path) if e["event.action"] == "source-resumed"]
    assert resumed["event.outcome"] == "success" and resumed["event.duration"] > 0
    assert daemon.watch.stalled() == {} and stalled_metric(daemon, "auth") == 0
    counts = {s.name: s.value for f in daemon.watch.metrics() for s in f.samples}
    assert counts["sentinel_source_stalls_total"] == 1


class Quitter(Source):
    """Calls sys.exit() (as some library code does): SystemExit ends its thread without a word."""

    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        sys.exit(3)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_source_thread_is_reported(tmp_path: Path, daemons: list[Daemon]) -> None:
    store_path = tmp_path / "events.db"
    daemon = Daemon(settings(tmp_path), SQLiteStore(store_path))
    daemon.sources.append(Quitter("quitter", None))
    daemon.start()
    daemons.append(daemon)
    wait_until(lambda: not daemon._source_threads["quitter"].is_alive())
    daemon.watch.check()
    assert daemon.watch.stalled() == {"quitter": "its thread died"}
    wait_until(lambda: bool(health(store_path)))
    (event,) = health(store_path)
    assert event["event.action"] == "source-stalled" and event["event.reason"] == "its thread died"


def test_a_source_waiting_for_room_is_not_stalled(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(b"")
    store_path = tmp_path / "events.db"
    daemon = Daemon(
        settings(
            tmp_path,
            queue_size=10,
            overflow_wait=0.1,
        ).model_copy(
            update={
                "sources": [
                    FileSourceSettings(name="auth", paths=[log], start_at="beginning", format="syslog"),
                ]
            }
        ),
        SQLiteStore(store_path),
    )
    daemon.build_sources()
    daemon.start()
    daemons.append(daemon)
    lock = sqlite3.connect(store_path, isolation_level=None, timeout=10)
    lock.execute("BEGIN IMMEDIATE")  # the store is stuck
    try:
        source = daemon.sources[0]

        def waiting_or_read(n: int) -> bool:
            return "auth" in daemon._emitting or source.status.stats.events >= n

        for i in range(0, 40, 5):
            with log.open("ab") as fh:
                fh.write(b"".join(sshd_line(j) for j in range(i, i + 5)))
            wait_until(partial(waiting_or_read, i + 5))
        wait_until(lambda: "auth" in daemon._emitting)
        with log.open("ab") as fh:
            fh.write(sshd_line(40))
        for _ in range(4):
            daemon.watch.check()
        assert daemon.watch.stalled() == {}
        wait_until(lambda: daemon.queue.stats.overflowing)  # the queue's overflow is what is reported instead
    finally:
        lock.execute("ROLLBACK")
        lock.close()
