"""The daemon's periodic jobs, on one APScheduler ``BackgroundScheduler`` (UTC).

The daemon registers what must happen on a clock rather than on input (see the README's
Operations section): the listening-port audit, the store's retention and sealing, the firewall's
comparison of Sentinel's bans with the kernel, the wallet and identity-provider check, and the
self-check that every source still advances.  Each job:

- never overlaps itself (``max_instances=1``) and runs once for any number of missed runs
  (``coalesce=True``); a run skipped because the previous one is still going is counted;
- cannot kill the scheduler: an exception is caught here, logged (the first time, and again
  only when the error changes, so a job failing every 30 s does not flood the log or Sentry)
  and counted in ``sentinel_job_failures_total``;
- reports its last outcome, duration and next run for ``sentinel status``.

:meth:`Scheduler.shutdown` stops new runs and waits briefly for those in progress; the daemon
calls it on SIGTERM before it drains its queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sentinel.collectors.parsers.timestamps import epoch_to_utc

if TYPE_CHECKING:
    from apscheduler.events import JobEvent
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

#: Threads running jobs: more than there are jobs, so one stuck job never delays another.
WORKERS: Final = 10


@dataclass(frozen=True)
class JobSpec:
    """A periodic job: what to call, how often, and when first (``None``: after one interval)."""

    id: str
    func: Callable[[], object]
    interval: float
    first_delay: float | None = None
    description: str = ""


@dataclass
class JobState:
    """What a job did last (for status and metrics)."""

    spec: JobSpec
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    running: bool = False
    last_start: float | None = None
    last_duration: float | None = None
    last_outcome: str = "never"
    last_error: str | None = None
    last_success: float | None = None
    skipping: bool = False


class Scheduler:
    """One background scheduler for all of the daemon's periodic jobs."""

    def __init__(self, workers: int = WORKERS) -> None:
        # Imported here: configuration loading and the CLI, which see JobSpec, need not pay for it.
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        # APScheduler logs every run at INFO and every skipped run at WARNING; this class logs
        # what matters (failures, the first skipped run) itself.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self._sched = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        self._sched.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._jobs: dict[str, JobState] = {}
        self._cond = threading.Condition()
        #: Set when the daemon stops: long jobs may look at it to give up early.
        self.stopping = threading.Event()

    # -- registering and running ---------------------------------------------------------------
    def add(self, spec: JobSpec) -> None:
        """Register ``spec`` (before or after :meth:`start`); an id already registered is replaced."""
        if spec.interval <= 0:
            raise ValueError(f"job {spec.id}: the interval must be positive")
        with self._cond:
            self._jobs[spec.id] = JobState(spec)
        first = None if spec.first_delay is None else datetime.now(UTC) + timedelta(seconds=max(0.0, spec.first_delay))
        kwargs: dict[str, Any] = {} if first is None else {"next_run_time": first}
        from apscheduler.triggers.interval import IntervalTrigger

        self._sched.add_job(
            self._run,
            IntervalTrigger(seconds=spec.interval, timezone=UTC),
            args=(spec.id,),
            id=spec.id,
            name=spec.description or spec.id,
            replace_existing=True,
            **kwargs,
        )

    def add_all(self, specs: list[JobSpec]) -> None:
        for spec in specs:
            self.add(spec)

    def start(self) -> None:
        self._sched.start()

    def run_now(self, job_id: str) -> None:
        """Bring ``job_id``'s next run forward to now (tests, an operator's request)."""
        self._sched.modify_job(job_id, next_run_time=datetime.now(UTC))

    def shutdown(self, timeout: float = 2.0) -> bool:
        """No more runs; wait up to ``timeout`` for those in progress.  True if none is left running."""
        self.stopping.set()
        if self._sched.running:
            self._sched.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(s.running for s in self._jobs.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    busy = ", ".join(s.spec.id for s in self._jobs.values() if s.running)
                    log.warning("scheduled jobs still running at shutdown: %s", busy)
                    return False
                self._cond.wait(left)
        return True

    def _run(self, job_id: str) -> None:
        with self._cond:
            state = self._jobs[job_id]
            state.running = True
            state.skipping = False
            state.last_start = time.time()
        started = time.monotonic()
        error: str | None = None
        try:
            state.spec.func()
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            if self.stopping.is_set():  # e.g. the queue closed under it: not a failure
                log.debug("job %s interrupted by shutdown: %s", job_id, error)
            elif error != state.last_error:
                # Expected trouble (files, permissions, the network) needs no traceback.
                expected = isinstance(exc, (OSError, RuntimeError, ValueError))
                log.error("job %s failed: %s", job_id, error, exc_info=not expected, extra={"job": job_id})
            else:
                log.debug("job %s failed again: %s", job_id, error)
        finally:
            with self._cond:
                state.running = False
                state.runs += 1
                state.last_duration = time.monotonic() - started
                if error is None:
                    if state.last_outcome == "error":
                        log.info("job %s works again", job_id, extra={"job": job_id})
                    state.last_outcome, state.last_error, state.last_success = "ok", None, state.last_start
                elif not self.stopping.is_set():
                    state.failures += 1
                    state.last_outcome, state.last_error = "error", error
                self._cond.notify_all()

    def _on_skipped(self, event: JobEvent) -> None:
        with self._cond:
            state = self._jobs.get(event.job_id)
            if state is None:
                return
            state.skipped += 1
            first = not state.skipping
            state.skipping = True
        if first:
            log.warning(
                "job %s skipped a run: the previous one is still running (since %s)",
                event.job_id,
                epoch_to_utc(state.last_start) if state.last_start else "?",
                extra={"job": event.job_id},
            )

    # -- reporting -----------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Each job: interval, next run, last run and its outcome (for ``sentinel status``)."""
        out = []
        with self._cond:
            states = list(self._jobs.values())
        for s in states:
            job = self._sched.get_job(s.spec.id)
            nxt = getattr(job, "next_run_time", None) if job is not None else None
            out.append(
                {
                    "id": s.spec.id,
                    "description": s.spec.description,
                    "interval": s.spec.interval,
                    "next_run": nxt.astimezone(UTC).isoformat().replace("+00:00", "Z") if nxt is not None else None,
                    "last_run": epoch_to_utc(s.last_start) if s.last_start is not None else None,
                    "last_duration": None if s.last_duration is None else round(s.last_duration, 3),
                    "last_outcome": "running" if s.running else s.last_outcome,
                    "last_error": s.last_error,
                    "runs": s.runs,
                    "failures": s.failures,
                    "skipped": s.skipped,
                }
            )
        return out

    def state(self, job_id: str) -> JobState:
        """The live state of ``job_id`` (tests)."""
        with self._cond:
            return self._jobs[job_id]

    def metrics(self) -> Iterator[Metric]:
        """Prometheus families per job (for ``MetricsSources.extra``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        runs = CounterMetricFamily("sentinel_job_runs", "Runs of a scheduled job", labels=["job"])
        failures = CounterMetricFamily("sentinel_job_failures", "Runs that raised an exception", labels=["job"])
        skipped = CounterMetricFamily(
            "sentinel_job_skipped", "Runs skipped because the previous one was still running", labels=["job"]
        )
        duration = GaugeMetricFamily("sentinel_job_last_duration_seconds", "Length of the last run", labels=["job"])
        success = GaugeMetricFamily(
            "sentinel_job_last_success_timestamp_seconds", "When the last successful run started", labels=["job"]
        )
        with self._cond:
            states = list(self._jobs.values())
        for s in states:
            runs.add_metric([s.spec.id], s.runs)
            failures.add_metric([s.spec.id], s.failures)
            skipped.add_metric([s.spec.id], s.skipped)
            if s.last_duration is not None:
                duration.add_metric([s.spec.id], s.last_duration)
            if s.last_success is not None:
                success.add_metric([s.spec.id], s.last_success)
        yield from (runs, failures, skipped, duration, success)
