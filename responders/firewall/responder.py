"""The firewall responder: findings' ``ban`` actions → :class:`~.manager.BanManager` → the kernel.

``submit`` only queues (it runs on the daemon's writer thread); the manager's thread does the
kernel work and reports every outcome as a response event.  The responder also offers the
control commands behind ``sentinel bans list|add|remove`` (:mod:`sentinel.control`), so manual
bans go through the same checks (allowlist), state and kernel as the engine's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sentinel.control import CommandError, Handler, Peer
from sentinel.engine.allowlist import Allowlist
from sentinel.engine.durations import parse_duration
from sentinel.event import Event
from sentinel.responders.base import Emit, Responder
from sentinel.responders.firewall import make_backend
from sentinel.responders.firewall.backend import Backend
from sentinel.responders.firewall.manager import BanManager, BanRequest, Reply
from sentinel.responders.firewall.settings import FirewallSettings

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from sentinel.queues import QueueStats
    from sentinel.scheduler import JobSpec

log = logging.getLogger(__name__)

#: File of the ban state, in the state directory.
STATE_FILE = "firewall.db"
#: How long a control command waits for the kernel before answering "queued".
REPLY_TIMEOUT = 10.0


class FirewallResponder(Responder):
    """Bans and unbans at the kernel firewall; never blocks the detection stage."""

    action_types: ClassVar[frozenset[str]] = frozenset({"ban"})

    def __init__(
        self,
        settings: FirewallSettings,
        state_dir: Path,
        allowlist: Allowlist,
        backend: Backend | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else make_backend(settings)
        self.manager = BanManager(
            settings,
            state_dir / STATE_FILE,
            self.backend,
            allowlist,
            previous_backend=lambda name: make_backend(settings, name),
        )

    def start(self, emit: Emit) -> None:
        chosen = f"auto → {self.backend.name}" if self.settings.backend == "auto" else self.backend.name
        log.info("firewall (%s): %s", chosen, self.backend.describe())
        self.manager.start(emit)

    def submit(self, finding: Event, action: dict[str, Any]) -> None:
        offence = action.get("offence")
        self.manager.submit(
            BanRequest(
                "ban",
                str(action.get("target") or ""),
                duration=action.get("duration"),
                permanent=bool(action.get("permanent")),
                offence=int(offence) if isinstance(offence, int) else 1,
                origin=f"rule:{finding.get('rule.id')}",
                finding=finding,
            )
        )

    def stop(self, timeout: float) -> None:
        self.manager.stop(timeout)

    def jobs(self) -> list[JobSpec]:
        """The periodic comparison of the kernel with the bans (``[firewall] reconcile_interval``)."""
        from sentinel.scheduler import JobSpec

        interval = self.settings.reconcile_interval
        if interval <= 0:
            return []
        return [
            JobSpec(
                "firewall-reconcile",
                self.reconcile,
                interval,
                description=f"compare the kernel's sets with the bans every {interval:g}s, repair drift",
            )
        ]

    def reconcile(self) -> None:
        """One comparison (the job); raises when it could not be done, so the scheduler counts it."""
        reply = self.manager.verify(REPLY_TIMEOUT * 6)
        if reply["outcome"] in ("failed", "pending"):
            raise RuntimeError(reply["message"])

    def queues(self) -> list[QueueStats]:
        return [self.manager.queue_stats]

    def metrics(self) -> Iterator[Metric]:
        """Prometheus families (for ``MetricsSources.extra``), read from the manager's counters."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.manager.status()
        yield GaugeMetricFamily("sentinel_firewall_up", "1 while the firewall can be changed", value=status["healthy"])
        yield GaugeMetricFamily("sentinel_firewall_bans", "Active bans (in the state)", value=status["active"])
        yield GaugeMetricFamily(
            "sentinel_firewall_pending", "Bans and unbans not yet in the kernel (retried)", value=status["pending"]
        )
        changes = CounterMetricFamily("sentinel_firewall_changes", "Firewall outcomes by kind", labels=["kind"])
        for kind in ("bans", "unbans", "refused", "failures", "dropped", "repairs"):
            changes.add_metric([kind], self.manager.stats[kind])
        yield changes
        yield CounterMetricFamily(
            "sentinel_firewall_drift",
            "Differences between the kernel and the bans found by reconciliation (each repaired)",
            value=self.manager.stats["drift"],
        )

    # -- control commands ---------------------------------------------------------------------------
    def control_commands(self) -> dict[str, Handler]:
        return {"bans.list": self._list, "bans.add": self._add, "bans.remove": self._remove}

    def _list(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        bans = sorted(self.manager.snapshot(), key=lambda b: (b.expires is not None, b.expires or 0.0, b.target))
        limit = args.get("limit")
        if isinstance(limit, int) and limit >= 0:
            bans = bans[:limit]
        return {
            "status": self.manager.status(),
            "bans": [b.summary() for b in bans],
        }

    def _add(self, args: dict[str, Any], peer: Peer) -> Reply:
        target = _target(args)
        permanent = bool(args.get("permanent"))
        duration: float | None = None
        if args.get("duration") is not None and not permanent:
            try:
                duration = parse_duration(args["duration"])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            if duration <= 0:
                raise CommandError("the duration must be positive")
        request = BanRequest(
            "ban", target, duration=duration, permanent=permanent, origin=f"cli:uid={peer.uid}", user_id=peer.uid
        )
        return self._wait(request)

    def _remove(self, args: dict[str, Any], peer: Peer) -> Reply:
        request = BanRequest("unban", _target(args), origin=f"cli:uid={peer.uid}", user_id=peer.uid)
        return self._wait(request)

    def _wait(self, request: BanRequest) -> Reply:
        request.reply = Future()
        self.manager.submit(request)
        try:
            return request.reply.result(REPLY_TIMEOUT)
        except FutureTimeout:
            return {"outcome": "pending", "message": "queued; the firewall thread is busy (see the daemon's log)"}


def _target(args: dict[str, Any]) -> str:
    target = args.get("target")
    if not isinstance(target, str) or not target:
        raise CommandError("a target address or CIDR network is required")
    return target
