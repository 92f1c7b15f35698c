"""Ban bookkeeping: state, reconciliation with the kernel, expiry, retries with backoff.

One thread (``sentinel-firewall``) owns the backend and the state table.  Requests (bans from
findings, bans and unbans from ``sentinel bans``) queue in memory and are taken *all at once*:
one state transaction and one kernel batch per wake-up, so a burst of findings costs one
``nft`` transaction, and a single ban reaches the kernel within milliseconds.

- **State first, kernel second.**  A request is written to the state table before the kernel is
  touched, so a ban the kernel refused (no CAP_NET_ADMIN, a missing module or program, a full
  set) is not lost: it is reported at once (a failure event, ``sentinel.firewall.pending``),
  retried with exponential backoff by reloading the whole state into the kernel, and reported
  again (success) once in effect.
- **Reconciliation.**  On start the kernel sets are made to hold exactly the state's active bans,
  each with its remaining time, in one bulk operation (an nft transaction, or ``ipset restore``
  and swap); members the state does not know are thereby removed.  Bans that expired while the
  daemon was down are purged and reported as unbans.  Afterwards :meth:`BanManager.verify` (a job
  of the daemon's scheduler, ``[firewall] reconcile_interval``) compares the kernel's members with
  the bans: a ban missing from the kernel (someone ran ``nft flush ruleset``, a reboot without
  Sentinel's unit), a member Sentinel never banned, or a permanent ban turned temporary is
  repaired by the same bulk reload and recorded as a ``firewall-repaired`` event.
- **Bounded queue.**  At most ``[firewall] queue_size`` requests wait for the thread; beyond
  that (the thread is hung in the kernel) ``overflow = "drop_newest"`` refuses a new request
  with a failed ``ban`` event (``event.reason: "queue full"``), ``"block"`` makes the caller wait.
- **Expiry** is the kernel's (element timeouts); the thread only purges the rows at the same
  moment and reports the unban.  Backends with a timeout ceiling (ipset: about 24.8 days) get
  longer bans refreshed before the kernel would drop them.
- **Escalation** is computed by the engine (its offence history is part of the rule state the
  daemon saves); ``permanent_after`` turns a repeat offence into a permanent ban.
- **Never ban** what the allowlist protects (loopback, link-local, unspecified, this host's own
  addresses, configured networks): such a request is refused and recorded, whatever its origin.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any, Literal

from sentinel.collectors.parsers.timestamps import epoch_to_utc
from sentinel.engine.allowlist import Allowlist
from sentinel.event import Event
from sentinel.queues import QueueStats, wait_for_room
from sentinel.responders.firewall.backend import Backend, BackendError, Element, maximal, normalize
from sentinel.responders.firewall.events import ban_event
from sentinel.responders.firewall.settings import FirewallSettings
from sentinel.responders.firewall.state import Ban, BanStore

log = logging.getLogger(__name__)

Emit = Callable[[list[Event]], None]
Reply = dict[str, Any]

#: Seconds between purges of expired rows (and refreshes of capped timeouts).
MAINTENANCE_INTERVAL = 1.0
#: Bans this close to their end are not checked by :meth:`BanManager.verify` (the kernel may
#: have expired them a moment before the purge).
EXPIRY_SLACK = 2.0
#: ``event.action`` of the event recording a repair.
REPAIRED = "firewall-repaired"
#: Targets named in a ``firewall-repaired`` event, at most (the counts are always complete).
REPAIR_LIST_MAX = 100


@dataclass(slots=True)
class BanRequest:
    """A ban or unban asked for by a finding, ``sentinel bans`` or a test."""

    kind: Literal["ban", "unban", "flush", "verify"]
    target: str = ""
    #: Seconds; None: the configured default (``permanent`` overrides it).
    duration: float | None = None
    permanent: bool = False
    offence: int = 1
    origin: str = "api"
    finding: Event | None = None
    user_id: int | None = None
    reply: Future[Reply] | None = field(default=None, repr=False)
    #: When it was queued (monotonic): the events report how long it took to reach the kernel.
    queued: float = field(default_factory=time.monotonic)

    def answer(self, outcome: str, message: str, **extra: Any) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result({"outcome": outcome, "message": message, **extra})


def refusal_reason(target: str) -> str:
    """Why the allowlist protects ``target``, in words."""
    net = ipaddress.ip_network(target, strict=False)
    addr = net.network_address
    if net.num_addresses == 1:
        if addr.is_loopback:
            return "loopback address"
        if addr.is_link_local:
            return "link-local address"
        if addr.is_unspecified:
            return "unspecified address"
    return "allowlisted (the [engine] allowlist, loopback, link-local or this host's own addresses)"


class BanManager:
    """Active bans, their kernel counterpart, and the thread that keeps the two consistent."""

    def __init__(
        self,
        settings: FirewallSettings,
        state_path: Path,
        backend: Backend,
        allowlist: Allowlist,
        previous_backend: Callable[[str], Backend | None] | None = None,
    ) -> None:
        self.settings = settings
        self.state_path = state_path
        self.backend = backend
        self.allowlist = allowlist
        self._previous_backend = previous_backend
        self.bans: dict[str, Ban] = {}
        self._lock = threading.Lock()  # guards self.bans for readers on other threads
        self._cond = threading.Condition()
        self._queue: list[BanRequest] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._emit: Emit = lambda events: None
        self._store: BanStore | None = None
        self._expiry: list[tuple[float, str]] = []  # heap, lazily cleaned
        self._nets: dict[tuple[int, int], set[int]] = {}  # (version, prefixlen) → network ints
        self._net_lengths: Counter[tuple[int, int]] = Counter()
        self._capped: dict[str, float] = {}  # target → when its (capped) kernel timeout ends
        self._waiting: dict[str, list[BanRequest]] = {}  # requests not yet in effect
        self.healthy = False
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._delay = settings.retry_initial
        self.reconciled = threading.Event()
        self.stats: Counter[str] = Counter()
        self.queue_stats = QueueStats(
            "firewall", settings.queue_size, settings.overflow, lambda: len(self._queue), unit="requests"
        )

    # -- public ---------------------------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        """Open the state, then reconcile and serve requests on the firewall thread."""
        self._emit = emit
        self._store = BanStore(self.state_path)
        now = time.time()
        expired: list[Ban] = []
        for ban in self._store.load():
            if ban.expires is not None and ban.expires <= now:
                expired.append(ban)
            else:
                self._index(ban)
        if expired:
            self._store.save(removed=[b.target for b in expired])
            self._report([self._expired_event(b) for b in expired])
        self._thread = threading.Thread(target=self._run, name="sentinel-firewall", daemon=True)
        self._thread.start()

    def submit(self, request: BanRequest) -> None:
        """Queue one request (never blocks on I/O; waits for room only with ``overflow = "block"``)."""
        self.submit_many((request,))

    def submit_many(self, requests: Iterable[BanRequest]) -> None:
        """Queue many requests at once: they are applied as one batch.

        A full queue (``queue_size``; one batch larger than that still fits in an empty queue)
        refuses the batch's bans and unbans with ``overflow = "drop_newest"``, each reported,
        or waits for room with ``"block"``.  ``flush`` and ``verify`` are always queued.
        """
        batch = list(requests)
        work = [r for r in batch if r.kind in ("ban", "unban")]
        refused: list[BanRequest] = []
        with self._cond:
            if work and self._queue and len(self._queue) + len(work) > self.settings.queue_size:
                if self.settings.overflow == "block":
                    size = self.settings.queue_size

                    def full() -> bool:
                        return bool(self._queue) and len(self._queue) + len(work) > size and not self._stopping

                    wait_for_room(self._cond, full, self.queue_stats)
                else:
                    if not self.queue_stats.overflowing:
                        log.error(
                            "the firewall thread takes no requests (%d waiting): new bans and unbans are refused "
                            "and recorded as failed until it does",
                            len(self._queue),
                        )
                    refused = work
                    kept = {id(r) for r in work}
                    batch = [r for r in batch if id(r) not in kept]
                    for r in refused:
                        self.queue_stats.dropped(r.origin)
            self._queue.extend(batch)
            self._cond.notify_all()
        if refused:
            self._report([self._queue_full(r) for r in refused])

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before now has been handled (kernel included)."""
        done: Future[Reply] = Future()
        self.submit(BanRequest("flush", reply=done))
        try:
            done.result(timeout)
        except TimeoutError:
            return False
        return True

    def verify(self, timeout: float = 60.0) -> Reply:
        """Compare the kernel with the bans on the firewall thread and repair drift (the scheduled job).

        Returns ``{"outcome": "ok" | "repaired" | "failed" | "skipped" | "pending", "message", …}``.
        """
        done: Future[Reply] = Future()
        self.submit(BanRequest("verify", origin="reconcile", reply=done))
        deadline = time.monotonic() + timeout
        while True:  # in slices, so a stopping daemon is not held up by a hung firewall thread
            try:
                return done.result(min(0.5, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if self._stopping:
                    return {"outcome": "skipped", "message": "the firewall is stopping"}
                if time.monotonic() >= deadline:
                    return {"outcome": "pending", "message": f"the firewall thread did not answer within {timeout:g}s"}

    def snapshot(self) -> list[Ban]:
        """The active bans now (copies)."""
        with self._lock:
            return [
                Ban(b.target, b.expires, b.created, b.offence, b.origin, b.finding_id, b.applied)
                for b in self.bans.values()
            ]

    def status(self) -> dict[str, Any]:
        """What the firewall side is doing, for ``sentinel bans list`` and ``sentinel status``."""
        with self._lock:
            active = len(self.bans)
            pending = sum(1 for b in self.bans.values() if not b.applied)
            permanent = sum(1 for b in self.bans.values() if b.expires is None)
        return {
            "backend": self.backend.name,
            "manages": self.backend.describe(),
            "healthy": self.healthy,
            "last_error": self.last_error,
            "active": active,
            "permanent": permanent,
            "pending": pending,
            "retry_in": max(0.0, self._retry_at - time.time()) if not self.healthy else None,
            "failures": self.stats["failures"],
            "max_elements": self.settings.max_elements,
            "state": str(self.state_path),
        }

    def stop(self, timeout: float) -> bool:
        """Handle what is queued, then stop the thread; True if it finished in time.

        The kernel keeps the sets: bans outlive the daemon and end on their own timeouts.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("firewall thread did not stop within %gs; queued requests are in the state", timeout)
                return False
        if self._store is not None:
            self._store.close()
        self.backend.close()
        return True

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        self._reconcile(first=True)
        self.reconciled.set()
        next_maintenance = time.time() + MAINTENANCE_INTERVAL
        while True:
            with self._cond:
                if not self._queue and not self._stopping:
                    wake = next_maintenance if self.healthy else min(next_maintenance, self._retry_at)
                    self._cond.wait(max(0.0, wake - time.time()))
                requests, self._queue = self._queue, []
                stopping = self._stopping
                if requests:
                    self._cond.notify_all()  # room again for submitters waiting with overflow = "block"
            overflow = self.queue_stats.settle(0, 0)
            try:
                if overflow is not None:
                    self._report([overflow])
                if requests:
                    self._handle(requests)
                now = time.time()
                if not self.healthy and now >= self._retry_at:
                    self._reconcile()
                if now >= next_maintenance:
                    self._maintain(now)
                    next_maintenance = now + MAINTENANCE_INTERVAL
            except Exception:  # a bug must not end the thread: log it and carry on
                log.exception("firewall thread: unexpected error")
            if stopping:
                with self._cond:
                    if not self._queue:
                        return

    def _reconcile(self, first: bool = False) -> bool:
        """Make the kernel sets hold exactly the active bans (bulk); on failure, back off.  True if done."""
        assert self._store is not None
        if first:
            self._forget_previous_backend()
        now = time.time()
        started = time.perf_counter()
        with self._lock:
            bans = list(self.bans.values())
        elements = [self._element(b, now) for b in bans]
        try:
            self.backend.restore(elements)
        except BackendError as exc:
            self._failed(str(exc))
            return False
        self._store.mark_applied()
        with self._lock:
            for b in bans:
                b.applied = True
        took = time.perf_counter() - started
        was_failing = not self.healthy and self.last_error is not None
        self.healthy, self.last_error, self._delay = True, None, self.settings.retry_initial
        self._store.set_meta("backend", self.backend.name)
        permanent = sum(1 for b in bans if b.expires is None)
        log.info(
            "firewall %s: %d bans in the kernel (%d permanent) in %.3fs",
            "restored" if first else "recovered" if was_failing else "reloaded",
            len(bans),
            permanent,
            took,
        )
        if was_failing:
            log.warning("firewall changes work again; %d waiting requests are now in effect", len(self._waiting))
        self._settle_waiting(now)
        return True

    def _forget_previous_backend(self) -> None:
        """If another backend held the bans last time, remove its table/chain and sets."""
        assert self._store is not None
        previous = self._store.get_meta("backend")
        if previous is None or previous == self.backend.name or self._previous_backend is None:
            return
        old = self._previous_backend(previous)
        if old is None:
            return
        try:
            old.teardown()
            log.info("firewall: removed the %s objects of the previous backend", previous)
        except BackendError as exc:
            log.warning("firewall: could not remove the previous backend's (%s) objects: %s", previous, exc)
        finally:
            old.close()

    def _failed(self, error: str) -> None:
        """The kernel refused a change: remember, log once per distinct error, back off."""
        if error != self.last_error:
            log.error("firewall cannot be changed: %s; retrying in %gs", error, self._delay)
        else:
            log.debug("firewall still cannot be changed: %s", error)
        self.stats["failures"] += 1
        self.healthy, self.last_error = False, error
        self._retry_at = time.time() + self._delay
        self._delay = min(self._delay * 2, self.settings.retry_max)

    # -- requests -------------------------------------------------------------------------------------
    def _handle(self, requests: Sequence[BanRequest]) -> None:
        assert self._store is not None
        now = time.time()
        changed: dict[str, Ban] = {}
        removed: dict[str, Ban] = {}
        applying: list[tuple[BanRequest, str]] = []  # requests whose outcome waits for the kernel
        events: list[Event] = []
        flushes: list[BanRequest] = []
        verifies: list[BanRequest] = []

        def current(target: str) -> Ban | None:
            if target in changed:
                return changed[target]
            if target in removed:
                return None
            return self.bans.get(target)

        for r in requests:
            if r.kind == "flush":
                flushes.append(r)
                continue
            if r.kind == "verify":
                verifies.append(r)
                continue
            try:
                target = normalize(r.target)
            except ValueError:
                events.append(self._refused(r, r.target, "invalid target", f"not an address or network: {r.target!r}"))
                continue
            old = current(target)
            if r.kind == "unban":
                if old is None:
                    r.answer("noop", f"{target} is not banned")
                    continue
                changed.pop(target, None)
                removed[target] = old
                applying.append((r, target))
                continue
            if self.allowlist.allowed(target):
                reason = refusal_reason(target)
                events.append(self._refused(r, target, reason, f"ban of {target} refused: {reason}"))
                continue
            ban = self._new_ban(r, target, now, old)
            if ban is None:
                assert old is not None
                if old.applied:
                    until = "permanently" if old.expires is None else f"until {epoch_to_utc(old.expires)}"
                    message = f"{target} is already banned {until}"
                    events.append(self._ban_outcome(r, old, "success", message, reason="already banned", now=now))
                    r.answer("success", message, expires=old.expires)
                else:
                    self._waiting.setdefault(target, []).append(r)
                    r.answer("pending", f"{target} is banned in the state; the firewall is not updated yet")
                continue
            removed.pop(target, None)
            changed[target] = ban
            applying.append((r, target))

        # State first: what is asked for is kept, whatever the kernel says.
        self._store.save(changed.values(), list(removed))
        with self._lock:
            for target in removed:
                self._unindex(target)
            for ban in changed.values():
                self._index(ban)
        if changed or removed:
            self._apply(changed, removed, applying, now, events)
        self._report(events)
        if verifies:
            reply = self._verify(time.time())
            for r in verifies:
                r.answer(**reply)
        for r in flushes:
            r.answer("success", "flushed")

    def _new_ban(self, r: BanRequest, target: str, now: float, old: Ban | None) -> Ban | None:
        """The ban ``r`` asks for, merged with ``old``; None when ``old`` already lasts as long."""
        permanent = r.permanent or (self.settings.permanent_after > 0 and r.offence >= self.settings.permanent_after)
        duration = r.duration if r.duration is not None else self.settings.default_duration
        expires = None if permanent else now + max(1.0, float(duration))
        offence = r.offence
        if old is not None:
            if old.expires is None or (expires is not None and old.expires >= expires):
                return None
            offence = max(offence, old.offence)
        finding_id = r.finding.get("event.id") if r.finding is not None else None
        created = old.created if old is not None else now
        return Ban(target, expires, created, offence, r.origin, finding_id, applied=False)

    def _apply(
        self,
        changed: dict[str, Ban],
        removed: dict[str, Ban],
        applying: list[tuple[BanRequest, str]],
        now: float,
        events: list[Event],
    ) -> None:
        """Put ``changed`` and ``removed`` into the kernel; report each request's outcome."""
        assert self._store is not None
        error: str | None = None
        if self.healthy:
            try:
                if self._needs_reload(changed, removed):
                    with self._lock:
                        everything = list(self.bans.values())
                    self.backend.restore([self._element(b, now) for b in everything])
                else:
                    self.backend.delete(list(removed))
                    self.backend.add([self._element(b, now) for b in changed.values()])
            except BackendError as exc:
                error = str(exc)
                self._failed(error)
        else:
            error = self.last_error or "the firewall is not set up yet"
        if error is None:
            self._store.mark_applied(list(changed))
            with self._lock:
                for ban in changed.values():
                    ban.applied = True
            self.stats["bans"] += len(changed)
            self.stats["unbans"] += len(removed)
        self._log_outcome(applying, changed, error, now)
        for r, target in applying:
            if r.kind == "unban":
                if error is not None:
                    self._waiting.setdefault(target, []).append(r)
                events.append(self._unban_outcome(r, target, error))
                continue
            new = changed.get(target)
            if new is None:  # banned, then unbanned in the same batch
                continue
            if error is None:
                events.append(self._ban_outcome(r, new, "success", self._ban_message(new, now), now=now))
                r.answer("success", self._ban_message(new, now), expires=new.expires)
            else:
                self._waiting.setdefault(target, []).append(r)
                message = f"ban of {target} not in effect yet: {error}; retrying"
                events.append(self._ban_outcome(r, new, "failure", message, error=error, pending=True, now=now))
                r.answer("pending", message, expires=new.expires)

    def _log_outcome(
        self, applying: list[tuple[BanRequest, str]], changed: dict[str, Ban], error: str | None, now: float
    ) -> None:
        """One line per ban or unban (a summary for large batches)."""
        if len(applying) > 20:
            verb = "applied" if error is None else "recorded, not in effect yet:"
            log.log(
                logging.INFO if error is None else logging.WARNING,
                "firewall: %d bans and unbans %s%s",
                len(applying),
                verb,
                f" {error}" if error else "",
            )
            return
        for r, target in applying:
            ban = changed.get(target)
            if error is None:
                what = f"unbanned {target}" if ban is None else self._ban_message(ban, now)
                log.info("%s", what, extra={"origin": r.origin})
            else:
                what = f"{'unban' if ban is None else 'ban'} of {target}"
                log.warning("%s recorded, not in effect yet (%s); retrying", what, error, extra={"origin": r.origin})

    def _settle_waiting(self, now: float) -> None:
        """After a reload succeeded: report the requests that waited for it."""
        events = []
        for target, requests in self._waiting.items():
            ban = self.bans.get(target)
            for r in requests:
                if r.kind == "unban" and ban is None:
                    events.append(
                        ban_event(
                            "unban",
                            "success",
                            target,
                            message=f"unbanned {target} (after retrying)",
                            reason="applied after retry",
                            **self._common(r),
                        )
                    )
                elif r.kind == "ban" and ban is not None:
                    message = self._ban_message(ban, now) + " (after retrying)"
                    events.append(self._ban_outcome(r, ban, "success", message, reason="applied after retry", now=now))
        self._waiting.clear()
        self._report(events)

    def _verify(self, now: float) -> Reply:
        """The kernel's members against the bans; a bulk reload if they differ (firewall thread)."""
        if not self.healthy:
            return {"outcome": "skipped", "message": "the firewall is failing; the retry reloads it anyway"}
        try:
            kernel = self.backend.members()
        except BackendError as exc:
            self._failed(str(exc))
            return {"outcome": "failed", "message": f"cannot list the firewall's members: {exc}"}
        with self._lock:
            bans = list(self.bans.values())
        known = {b.target for b in bans}
        settled = [b for b in bans if b.applied and (b.expires is None or b.expires > now + EXPIRY_SLACK)]
        expected = [Element(b.target, None if b.expires is None else 1) for b in settled]
        if not self.backend.overlapping_networks:
            expected = maximal(expected)  # networks inside another are not in such sets
        missing = sorted(e.target for e in expected if e.target not in kernel)
        unexpected = sorted(t for t in kernel if t not in known)
        weakened = sorted(e.target for e in expected if e.timeout is None and kernel.get(e.target, None) is not None)
        if not (missing or unexpected or weakened):
            self.stats["verified"] += 1
            return {"outcome": "ok", "message": f"the firewall holds the {len(kernel)} bans it should"}
        drift = (
            f"{len(missing)} bans missing, {len(unexpected)} unknown members, {len(weakened)} permanent bans expiring"
        )
        log.warning("firewall drifted from Sentinel's bans (%s); reloading it", drift)
        self.stats["drift"] += len(missing) + len(unexpected) + len(weakened)
        repaired = self._reconcile()
        if repaired:
            self.stats["repairs"] += 1
        message = f"firewall drifted from Sentinel's bans: {drift}; " + (
            "reloaded" if repaired else f"reload failed: {self.last_error}"
        )
        event: Event = {
            "@timestamp": epoch_to_utc(now),
            "event.kind": "event",
            "event.category": ["configuration"],
            "event.type": ["change"],
            "event.action": REPAIRED,
            "event.outcome": "success" if repaired else "failure",
            "event.dataset": "sentinel.response",
            "event.reason": "drift",
            "message": message,
            "sentinel.dry_run": False,
            "sentinel.firewall.backend": self.backend.name,
            "sentinel.firewall.origin": "reconcile",
        }
        if not repaired and self.last_error:
            event["error.message"] = self.last_error
        event["event.id"] = blake2b(f"{REPAIRED}|{now}|{drift}".encode(), digest_size=8).hexdigest()
        event["sentinel.firewall.missing"] = missing[:REPAIR_LIST_MAX]
        event["sentinel.firewall.unexpected"] = unexpected[:REPAIR_LIST_MAX]
        event["sentinel.firewall.weakened"] = weakened[:REPAIR_LIST_MAX]
        event["sentinel.firewall.drift"] = {
            "missing": len(missing),
            "unexpected": len(unexpected),
            "weakened": len(weakened),
        }
        self._report([event])
        return {
            "outcome": "repaired" if repaired else "failed",
            "message": event["message"],
            "missing": missing,
            "unexpected": unexpected,
            "weakened": weakened,
        }

    def _needs_reload(self, changed: dict[str, Ban], removed: dict[str, Ban]) -> bool:
        """True when a changed network overlaps another (sets without overlap need a full reload)."""
        if self.backend.overlapping_networks:
            return False
        return any("/" in t and self._overlaps(t) for t in (*changed, *removed))

    # -- maintenance ------------------------------------------------------------------------------------
    def _maintain(self, now: float) -> None:
        """Purge bans that the kernel has just expired; refresh capped kernel timeouts."""
        assert self._store is not None
        expired: list[Ban] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires, target = heapq.heappop(self._expiry)
            ban = self.bans.get(target)
            if ban is not None and ban.expires == expires:
                expired.append(ban)
        if expired:
            reload = not self.backend.overlapping_networks and any(
                "/" in b.target and self._overlaps(b.target) for b in expired
            )
            self._store.save(removed=[b.target for b in expired])
            with self._lock:
                for ban in expired:
                    self._unindex(ban.target)
            self._report([self._expired_event(b) for b in expired])
            if reload and self.healthy:
                self._reconcile()
        if self._capped and self.healthy and self.backend.max_timeout:
            horizon = now + self.backend.max_timeout / 2
            due = [t for t, until in self._capped.items() if until < horizon and t in self.bans]
            if due:
                try:
                    self.backend.add([self._element(self.bans[t], now) for t in due])
                except BackendError as exc:
                    self._failed(str(exc))

    # -- indexes ----------------------------------------------------------------------------------------
    def _index(self, ban: Ban) -> None:
        old = self.bans.get(ban.target)
        self.bans[ban.target] = ban
        if ban.expires is not None:
            heapq.heappush(self._expiry, (ban.expires, ban.target))
        if old is None and "/" in ban.target:
            net = ipaddress.ip_network(ban.target)
            key = (net.version, net.prefixlen)
            self._nets.setdefault(key, set()).add(int(net.network_address))
            self._net_lengths[key] += 1

    def _unindex(self, target: str) -> None:
        if self.bans.pop(target, None) is None:
            return
        self._capped.pop(target, None)
        if "/" in target:
            net = ipaddress.ip_network(target)
            key = (net.version, net.prefixlen)
            self._nets.get(key, set()).discard(int(net.network_address))
            self._net_lengths[key] -= 1
            if self._net_lengths[key] <= 0:
                del self._net_lengths[key]
                self._nets.pop(key, None)

    def _overlaps(self, target: str) -> bool:
        """True if network ``target`` overlaps another active network ban."""
        net = ipaddress.ip_network(target)
        for (version, plen), members in self._nets.items():
            if version != net.version or plen == net.prefixlen:
                continue
            if plen < net.prefixlen:
                if int(net.supernet(new_prefix=plen).network_address) in members:
                    return True
            else:
                low, high = int(net.network_address), int(net.broadcast_address)
                if any(low <= m <= high for m in members):
                    return True
        return False

    def _element(self, ban: Ban, now: float) -> Element:
        """The kernel element for ``ban``: its remaining time, capped where the kernel needs it."""
        if ban.expires is None:
            return Element(ban.target, None)
        timeout = max(1, math.ceil(ban.expires - now))
        cap = self.backend.max_timeout
        if cap is not None and timeout > cap:
            self._capped[ban.target] = now + cap
            timeout = cap
        return Element(ban.target, timeout)

    # -- events -----------------------------------------------------------------------------------------
    def _report(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            self._emit(events)
        except Exception as exc:  # the daemon is stopping: the outcome stays in the state and the log
            log.warning("firewall: %d response events not stored: %s", len(events), exc)

    @staticmethod
    def _ban_message(ban: Ban, now: float) -> str:
        if ban.expires is None:
            return f"banned {ban.target} permanently"
        return f"banned {ban.target} for {round(ban.expires - now)} s, until {epoch_to_utc(ban.expires)}"

    def _common(self, r: BanRequest) -> dict[str, Any]:
        return {
            "finding": r.finding,
            "origin": r.origin,
            "backend": self.backend.name,
            "user_id": r.user_id,
        }

    def _ban_outcome(
        self,
        r: BanRequest,
        ban: Ban,
        outcome: str,
        message: str,
        *,
        reason: str | None = None,
        error: str | None = None,
        pending: bool = False,
        now: float,
    ) -> Event:
        return ban_event(
            "ban",
            outcome,
            ban.target,
            message=message,
            latency=time.monotonic() - r.queued if outcome == "success" else None,
            expires=ban.expires,
            permanent=ban.expires is None,
            duration=None if ban.expires is None else ban.expires - now,
            offence=ban.offence,
            reason=reason,
            error=error,
            pending=pending,
            **self._common(r),
        )

    def _unban_outcome(self, r: BanRequest, target: str, error: str | None) -> Event:
        if error is None:
            message = f"unbanned {target}"
            r.answer("success", message)
        else:
            message = f"unban of {target} recorded, the firewall is not updated yet: {error}; retrying"
            r.answer("pending", message)
        return ban_event(
            "unban",
            "success" if error is None else "failure",
            target,
            message=message,
            reason="removed",
            error=error,
            pending=error is not None,
            **self._common(r),
        )

    def _queue_full(self, r: BanRequest) -> Event:
        """A request refused because the queue is full (``overflow = "drop_newest"``)."""
        message = f"{r.kind} of {r.target} not queued: the firewall queue is full ({self.settings.queue_size} requests)"
        log.debug("%s", message, extra={"origin": r.origin})
        self.stats["dropped"] += 1
        r.answer("failed", message)
        return ban_event(
            r.kind,
            "failure",
            r.target,
            message=message,
            reason="queue full",
            error="the firewall thread is not taking requests",
            duration=r.duration,
            permanent=r.permanent,
            offence=r.offence,
            **self._common(r),
        )

    def _refused(self, r: BanRequest, target: str, reason: str, message: str) -> Event:
        log.warning("%s", message, extra={"origin": r.origin})
        self.stats["refused"] += 1
        r.answer("refused", message)
        return ban_event(
            "ban",
            "failure",
            target,
            message=message,
            reason=reason,
            duration=r.duration,
            permanent=r.permanent,
            offence=r.offence,
            **self._common(r),
        )

    def _expired_event(self, ban: Ban) -> Event:
        return ban_event(
            "unban",
            "success",
            ban.target,
            message=f"ban of {ban.target} expired",
            reason="expired",
            origin="expiry",
            backend=self.backend.name,
            now=ban.expires,
        )
