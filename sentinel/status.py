"""``sentinel status``: what the running daemon is doing, asked over the control socket.

The daemon registers a ``status`` command that reports its sources (lines read, lag, last
error, stalled), its bounded queues (depth, policy, overflows, drops), the last commit, the
scheduled jobs (next run, last outcome), findings per rule, the most recent findings and the
last warnings and errors it logged; ``sentinel status`` prints that for a person (or as JSON).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sentinel.event import Event

if TYPE_CHECKING:
    from sentinel.control import Handler, Peer
    from sentinel.daemon import Daemon
    from sentinel.pipeline import DetectionStage


class RecentRecords(logging.Handler):
    """Keeps the last warnings and errors the daemon logged, for ``sentinel status``."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"time": record.created, "level": record.levelname, "message": record.getMessage()})


class StatusProvider:
    """Offers the ``status`` control command (see :mod:`sentinel.control`)."""

    def __init__(self, daemon: Daemon, detection: DetectionStage, recent: RecentRecords) -> None:
        self.handler = status_command(daemon, detection, recent)

    def control_commands(self) -> dict[str, Handler]:
        return {"status": self.handler}


def status_command(daemon: Daemon, detection: DetectionStage, recent: RecentRecords) -> Handler:
    """The ``status`` control command."""

    def status(args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        now = time.time()
        engine = detection.engine
        firewall = [r.manager.status() for r in daemon.responders if hasattr(r, "manager")]
        stalled = daemon.watch.stalled()
        return {
            "dry_run": not detection.live,
            "firewall": firewall[0] if firewall else None,
            "sources": [
                {
                    "name": s.name,
                    "kind": s.status.kind,
                    "lines": s.status.stats.lines,
                    "events": s.status.stats.events,
                    "bad_input": s.status.stats.invalid_utf8 + s.status.stats.truncated + s.status.stats.nul_bytes,
                    "last_read_age": None if s.status.last_read is None else round(now - s.status.last_read, 1),
                    "last_error": s.status.last_error,
                    "stalled": stalled.get(s.name),
                }
                for s in daemon.sources
            ],
            "queue_events": daemon.queue.events(),
            "queues": [q.status() for q in daemon.queues()],
            "jobs": daemon.scheduler.status(),
            "shipping": daemon.store.status() if hasattr(daemon.store, "status") else None,
            "last_commit_age": None if daemon.last_commit is None else round(now - daemon.last_commit, 1),
            "findings": dict(engine.stats.findings),
            "recent_findings": list(detection.recent_findings),
            "recent_problems": list(recent.records),
        }

    return status


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:g}s ago"


def print_status(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The status reply, for a person."""
    out("Sources:")
    for s in result["sources"]:
        problem = f"  ERROR: {s['last_error']}" if s["last_error"] else ""
        if s.get("stalled"):
            problem += f"  STALLED: {s['stalled']}"
        out(
            f"  {s['name']:24} {s['kind']:20} lines={s['lines']} events={s['events']} bad={s['bad_input']} "
            f"last read {_age(s['last_read_age'])}{problem}"
        )
    out(f"Queue: {result['queue_events']} events waiting; last commit {_age(result['last_commit_age'])}")
    for q in result.get("queues", ()):
        state = "FULL" if q["overflowing"] else "ok"
        out(
            f"  {q['name']:12} {q['depth']}/{q['capacity']} {q['unit']} ({q['policy']}) {state}; "
            f"overflows={q['overflows']} dropped={q['dropped']}"
        )
    shipping = result.get("shipping")
    if shipping:
        lag = shipping["lag_seconds"]
        out(
            f"Elasticsearch: spool {shipping['spool_bytes']} bytes, lag {'none' if lag is None else f'{lag:.0f}s'}; "
            f"shipped={shipping['shipped']} duplicates={shipping['duplicates']} "
            f"pipeline_errors={shipping['pipeline_errors']} dropped={shipping['dropped']} "
            f"withheld={shipping['withheld']}"
            + (f"  ERROR: {shipping['last_error']}" if shipping["last_error"] else "")
        )
    if result.get("jobs"):
        out("Jobs:")
        for j in result["jobs"]:
            error = f"  ERROR: {j['last_error']}" if j["last_error"] else ""
            out(
                f"  {j['id']:22} every {j['interval']:g}s  next {j['next_run'] or '-'}  "
                f"last {j['last_run'] or 'never'} ({j['last_outcome']}){error}"
            )
    if result["dry_run"]:
        out("Responders: dry-run (actions are recorded, not taken)")
    firewall = result.get("firewall")
    if firewall:
        out("Firewall: " + ", ".join(f"{k}={v}" for k, v in firewall.items() if not isinstance(v, (dict, list))))
    out("Findings per rule: " + (", ".join(f"{k}={v}" for k, v in sorted(result["findings"].items())) or "none"))
    if result["recent_findings"]:
        out("Recent findings:")
        for f in result["recent_findings"]:
            out(f"  {f['@timestamp']}  {f['rule.id']:24} {f['message']}")
    if result["recent_problems"]:
        out("Recent warnings and errors:")
        for p in result["recent_problems"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["time"]))
            out(f"  {when} {p['level']:7} {p['message']}")


def summarize(finding: Event) -> dict[str, Any]:
    """What ``status`` shows of a finding."""
    return {k: finding.get(k) for k in ("@timestamp", "rule.id", "message", "source.ip", "user.name")}
