"""The daemon's scheduler: jobs run on time, never overlap, survive exceptions, report their state."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel.scheduler import JobSpec, Scheduler
from sentinel.store import MaintenanceJob, SQLiteStore
from tests.conftest import wait_until


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    s = Scheduler()
    yield s
    s.shutdown(2)


def samples(scheduler: Scheduler) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("job", "")): s.value for m in scheduler.metrics() for s in m.samples}


def test_a_job_runs_first_after_its_delay_then_every_interval(scheduler: Scheduler) -> None:
    runs: list[float] = []
    started = time.monotonic()
    scheduler.add(JobSpec("tick", lambda: runs.append(time.monotonic()), 0.3, first_delay=0.0))
    scheduler.start()
    wait_until(lambda: len(runs) >= 3, timeout=5)
    assert runs[0] - started < 0.25  # first_delay=0: at once
    assert all(0.15 < b - a < 0.6 for a, b in itertools.pairwise(runs))
    (status,) = scheduler.status()
    assert status["id"] == "tick" and status["interval"] == 0.3
    assert status["last_outcome"] == "ok" and status["runs"] >= 3 and status["failures"] == 0
    assert status["next_run"] is not None and status["next_run"].endswith("Z")


def test_a_slow_job_never_overlaps_itself_and_skips_are_counted(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5)
        with lock:
            running -= 1

    scheduler.add(JobSpec("slow", slow, 0.05, first_delay=0.0))
    scheduler.start()
    wait_until(lambda: scheduler.state("slow").skipped >= 3, timeout=5)
    assert scheduler.status()[0]["last_outcome"] == "running"
    release.set()
    wait_until(lambda: scheduler.state("slow").runs >= 2, timeout=5)
    assert most == 1
    skipped_logs = [r for r in caplog.records if "skipped a run" in r.getMessage()]
    assert len(skipped_logs) == 1, "one warning per stretch of skipped runs"
    assert samples(scheduler)[("sentinel_job_skipped_total", "slow")] >= 3


def test_an_exception_is_logged_once_counted_and_the_scheduler_keeps_running(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    other: list[int] = []

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("the disk is on fire")

    caplog.set_level("INFO", logger="sentinel.scheduler")
    scheduler.add(JobSpec("flaky", flaky, 0.05, first_delay=0.0))
    scheduler.add(JobSpec("other", lambda: other.append(1), 0.05, first_delay=0.0))
    scheduler.start()
    wait_until(lambda: scheduler.state("flaky").runs >= 5 and len(other) >= 5, timeout=5)
    state = scheduler.state("flaky")
    assert state.failures == 3 and state.last_outcome == "ok" and state.last_error is None
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "flaky" in r.getMessage()]
    assert len(errors) == 1 and "the disk is on fire" in errors[0].getMessage()
    assert any("job flaky works again" in r.getMessage() for r in caplog.records)
    metrics = samples(scheduler)
    assert metrics[("sentinel_job_failures_total", "flaky")] == 3
    assert metrics[("sentinel_job_runs_total", "flaky")] >= 5
    assert ("sentinel_job_last_success_timestamp_seconds", "flaky") in metrics


def test_shutdown_stops_new_runs_and_waits_for_the_running_one(scheduler: Scheduler) -> None:
    entered = threading.Event()
    finished = threading.Event()

    def job() -> None:
        entered.set()
        time.sleep(0.3)
        finished.set()

    scheduler.add(JobSpec("job", job, 0.05, first_delay=0.0))
    scheduler.start()
    assert entered.wait(5)
    assert scheduler.shutdown(5) is True
    assert finished.is_set()
    runs = scheduler.state("job").runs
    time.sleep(0.3)
    assert scheduler.state("job").runs == runs


def test_store_maintenance_is_a_scheduled_job(scheduler: Scheduler, tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "events.db").close()
    job = MaintenanceJob(tmp_path / "events.db", 730, first_delay=0.05, interval=3600)
    job.schedule(scheduler)
    scheduler.start()
    wait_until(lambda: job.last_report is not None, timeout=10)
    assert job.last_report is not None and job.last_report.head is not None
    (status,) = scheduler.status()
    assert status["id"] == "store-maintenance" and status["interval"] == 3600
    assert status["last_outcome"] == "ok"
