"""The daemon's parts (queue, store, supervisor, stages) and ``sentinel run`` as a real process."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel.collectors.sources.base import Batch, Source
from sentinel.config import Settings
from sentinel.daemon import BatchQueue, Daemon, QueueClosed, source_name
from sentinel.store import SQLiteStore
from tests.conftest import SentinelProcess, clean_env, sshd_line, wait_until

# -- BatchQueue ----------------------------------------------------------------------------------


def batch(n: int, source: str = "s", offset: int = 0) -> Batch:
    return Batch(source, [{"n": i} for i in range(n)], {"offset": offset})


def test_queue_blocks_when_full_and_never_drops() -> None:
    q = BatchQueue(max_events=10)
    q.put(batch(8))
    done = threading.Event()

    def producer() -> None:
        q.put(batch(5))  # 8 + 5 > 10: must wait for the consumer
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.2)
    got = q.get_many(max_events=100, timeout=1)
    assert got is not None and [len(b.events) for b in got] == [8]
    assert done.wait(2)
    got = q.get_many(max_events=100, timeout=1)
    assert got is not None and [len(b.events) for b in got] == [5]


def test_queue_takes_an_oversized_batch_when_empty_and_drains_after_close() -> None:
    q = BatchQueue(max_events=10)
    q.put(batch(50))
    got = q.get_many(max_events=5, timeout=0.1)
    assert got is not None and [len(b.events) for b in got] == [50]
    for _ in range(10):
        q.put(batch(0))  # a checkpoint-only batch counts as one: the queue is now full
    q.close()
    with pytest.raises(QueueClosed):
        q.put(batch(1))
    got = q.get_many(max_events=5, timeout=0.1)
    assert got is not None and len(got) == 10
    assert q.get_many(max_events=5, timeout=0.1) is None


# -- SQLiteStore ---------------------------------------------------------------------------------


def test_store_commits_events_with_checkpoint_and_reads_them_back(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "events.db") as store:
        store.commit(Batch("a", [{"@timestamp": "2024-01-01T00:00:00Z", "message": "x"}], {"offset": 10}))
        store.commit_many([batch(2, "b", 1), batch(3, "a", 20), batch(0, "b", 30)])
        assert store.count() == 6
        assert store.checkpoint("a") == {"offset": 20}
        assert store.checkpoint("b") == {"offset": 30}
        assert store.checkpoint("nobody") is None
        events = list(store.iter_events(batch_size=2))
        assert events[0] == {"@timestamp": "2024-01-01T00:00:00Z", "message": "x"}
        assert [e["n"] for e in events[1:]] == [0, 1, 0, 1, 2]
    with sqlite3.connect(tmp_path / "events.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # ts: the event's @timestamp in microseconds since the epoch (indexed for time queries)
        assert conn.execute("SELECT ts FROM events WHERE id = 1").fetchone()[0] == 1_704_067_200_000_000


def test_store_commit_is_all_or_nothing(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "events.db") as store:
        store.commit(batch(1, "a", 1))
        bad = Batch("a", [{"n": 1}, {"n": 2}], {"unserialisable": object()})
        with pytest.raises(TypeError):
            store.commit(bad)  # fails after the events were inserted: rolled back
        assert store.count() == 1
        assert store.checkpoint("a") == {"offset": 1}


# -- Daemon in-process ---------------------------------------------------------------------------


def settings_for(tmp_path: Path, log: Path, **collectors: Any) -> Settings:
    return Settings.model_validate(
        {
            "daemon": {"state_dir": tmp_path / "state"},
            "collectors": {"poll_interval": 0.1, **collectors},
            "ports": {"enabled": False},
            "sources": [{"type": "file", "paths": [log], "start_at": "beginning", "format": "syslog"}],
        }
    )


def test_daemon_runs_stages_between_parsing_and_store(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(b"".join(sshd_line(i) for i in range(100)))
    store = SQLiteStore(tmp_path / "events.db")

    def tag(b: Batch) -> Batch:
        return Batch(b.source, [{**e, "labels.stage": "seen"} for e in b.events], b.checkpoint)

    daemon = Daemon(settings_for(tmp_path, log), store, stages=[tag])
    daemon.build_sources()
    daemon.start()
    wait_until(lambda: store.count() == 100)
    assert daemon.stop()
    check = SQLiteStore(tmp_path / "events.db")
    events = list(check.iter_events())
    assert {e["labels.stage"] for e in events} == {"seen"}
    assert sorted(e["process.pid"] for e in events) == list(range(100))
    assert check.checkpoint(f"file:{log}") is not None
    check.close()


class FlakySource(Source):
    """Fails twice (as a source whose file is unreadable would), then emits one batch."""

    def __init__(self) -> None:
        super().__init__("flaky", None)
        self.calls = 0

    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise PermissionError(13, "Permission denied", "/var/log/secret.log")
        emit(Batch(self.name, [{"message": "finally"}], {"done": True}))
        stop.wait()


def test_failing_source_is_retried_with_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    daemon = Daemon(Settings.model_validate({"daemon": {"state_dir": tmp_path}}), store)
    daemon.retry_delay = 0.05
    source = FlakySource()
    daemon.sources.append(source)
    with caplog.at_level("DEBUG", logger="sentinel.daemon"):
        daemon.start()
        wait_until(lambda: store.count() == 1)
        daemon.stop()
    assert source.calls == 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Permission denied" in errors[0]  # reported once, retried quietly


def test_source_names_are_derived_and_must_be_unique(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "sources": [
                {"type": "file", "paths": ["/var/log/auth.log", "/var/log/secure"]},
                {"type": "journald"},
                {"type": "journald", "name": "sshd"},
            ]
        }
    )
    assert [source_name(s) for s in settings.sources] == [
        "file:/var/log/auth.log,/var/log/secure",
        "journald",
        "sshd",
    ]
    dupes = Settings.model_validate({"sources": [{"type": "file", "paths": ["/a"]}] * 2})
    daemon = Daemon(dupes, SQLiteStore(tmp_path / "events.db"))
    with pytest.raises(ValueError, match="share the name"):
        daemon.build_sources()


# -- sentinel run, a real process ----------------------------------------------------------------


def write_config(tmp_path: Path, body: str) -> tuple[Path, dict[str, str]]:
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text("[collectors]\npoll_interval = 0.2\n\n" + body)
    env = clean_env(SENTINEL_DAEMON__STATE_DIR=str(tmp_path / "state" / "nested"))
    return cfg, env


def stored(tmp_path: Path) -> int:
    db = tmp_path / "state" / "nested" / "events.db"
    try:
        with sqlite3.connect(db) as conn:
            query = """SELECT count(*) FROM events WHERE json_extract(doc, '$."log.offset"') IS NOT NULL"""
            return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_run_keeps_going_when_sources_fail_and_stops_cleanly_on_sigterm(
    tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    log = tmp_path / "auth.log"
    (tmp_path / "not-a-file").mkdir()
    cfg, env = write_config(
        tmp_path,
        f'[[sources]]\ntype = "file"\nname = "auth"\npaths = ["{log}"]\nstart_at = "beginning"\n\n'
        f'[[sources]]\ntype = "file"\nname = "broken"\npaths = ["{tmp_path / "not-a-file"}"]\n\n'
        f'[[sources]]\ntype = "journald"\ndirectory = "{tmp_path / "no-journal"}"\n',
    )
    env["SENTINEL_DAEMON__LOG_FORMAT"] = "json"
    proc = sentinel_process(cfg, env)
    proc.wait_log('"running with')
    log.write_bytes(b"".join(sshd_line(i) for i in range(50)))
    wait_until(lambda: stored(tmp_path) == 50)
    records = [json.loads(line) for line in proc.log().splitlines()]
    watching = [r["message"] for r in records if r["message"].startswith("watching ")]
    assert len(watching) == 3 and any(str(log) in m for m in watching)
    errors = {r.get("source"): r["message"] for r in records if r["log.level"] == "error"}
    assert "not a regular file" in errors["broken"] or "directory" in errors["broken"]
    assert "journal" in errors[f"journald:{tmp_path / 'no-journal'}"]
    assert proc.alive()
    started = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - started < 5
    assert json.loads(proc.log().splitlines()[-1])["message"] == "stopped"


def test_sigint_stops_too_and_a_restart_resumes(
    tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(b"".join(sshd_line(i) for i in range(10)))
    cfg, env = write_config(tmp_path, f'[[sources]]\ntype = "file"\npaths = ["{log}"]\nstart_at = "end"\n')
    proc = sentinel_process(cfg, env)
    proc.wait_log("running with")
    with log.open("ab") as fh:
        fh.write(sshd_line(10))
    wait_until(lambda: stored(tmp_path) == 1)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(10) == 0
    with log.open("ab") as fh:  # written while down: read after the restart, start_at = "end" or not
        fh.write(sshd_line(11))
    proc = sentinel_process(cfg, env)
    wait_until(lambda: stored(tmp_path) == 2)
    assert proc.stop() == 0


def test_duplicate_source_names_are_a_startup_error(
    tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    cfg, env = write_config(
        tmp_path,
        '[[sources]]\ntype = "file"\nname = "x"\npaths = ["/a"]\n\n'
        '[[sources]]\ntype = "file"\nname = "x"\npaths = ["/b"]\n',
    )
    proc = sentinel_process(cfg, env)
    assert proc.proc is not None and proc.proc.wait(10) == 2
    assert "share the name 'x'" in proc.log()


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(
    tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    """Two daemons on one state directory would read every line twice and fight over checkpoints."""
    log = tmp_path / "auth.log"
    log.write_bytes(b"".join(sshd_line(i) for i in range(5)))
    cfg, env = write_config(tmp_path, f'[[sources]]\ntype = "file"\npaths = ["{log}"]\nstart_at = "beginning"\n')
    first = sentinel_process(cfg, env)
    first.wait_log("running with")
    second_cfg = cfg.with_name("second.toml")
    second_cfg.write_text(cfg.read_text())
    second = sentinel_process(second_cfg, env)
    assert second.proc is not None and second.proc.wait(10) == 1
    assert "another sentinel is already running with the state directory" in second.log()
    wait_until(lambda: stored(tmp_path) == 5)
    assert first.stop() == 0
    # The lock goes with the process: a new daemon starts and reads nothing twice.
    third_cfg = cfg.with_name("third.toml")  # a fresh stderr file, for wait_log
    third_cfg.write_text(cfg.read_text())
    third = sentinel_process(third_cfg, env)
    third.wait_log("running with")
    assert third.stop() == 0
    assert stored(tmp_path) == 5
