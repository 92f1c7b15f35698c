"""The OAuth revocation responder: a compromised account's tokens are revoked at its providers.

A finding whose rule asks for it (``login-new-country`` and ``impossible-travel`` by default)
carries ``{"type": "revoke_tokens", "user": U}``.  :meth:`OAuthRevocationResponder.submit`
queues a job and returns; the responder's thread looks ``U`` up in the unlocked wallet and
revokes each entry with its provider's adapter (:mod:`sentinel.responders.oauth_vendors`).

Every outcome is a response event (``event.action = "revoke_tokens"``, ``sentinel.status``):
``revoked``, ``already_invalid``, ``no_tokens`` (the wallet holds nothing for the account),
``retrying`` (a transient failure; retried with exponential backoff) and ``failed`` (a
permanent error, or retries exhausted), which also raises an alert and an error log (Sentry).
Pending jobs are kept in ``<state_dir>/oauth-pending.json`` — account names, finding
fields and wallet entry ids only, nothing secret — so a restart resumes them: a revocation is
never silently dropped.  At most ``[oauth] queue_size`` accounts wait; beyond that
``overflow = "drop_newest"`` fails the new revocation at once (a ``failed`` event, an error
log and a critical alert), ``"block"`` makes the detection stage wait.

**The credentials check** (a job of the daemon's scheduler, ``[oauth] check_interval``, hourly by
default) makes sure a revocation *could* happen before one is needed: the wallet file still
authenticates with the keys in memory and every record decrypts (deleted, tampered with, or
re-keyed under the running daemon: the usual "restart needed" surprise), each configured
provider has its client credentials in the wallet, every provider the wallet's entries name is
configured, OpenID discovery documents are fetched afresh (an issuer that moved or went away),
and Entra ID applications can still get a Graph token (an expired client secret).  A failing
check is an error in the log (and Sentry), ``sentinel_wallet_check_ok 0`` with
``sentinel_wallet_check_failures_total``, a ``credentials-check`` event (``event.outcome:
failure``) and a high-severity alert; its recovery is an event too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sentinel.engine.durations import Duration
from sentinel.event import Event
from sentinel.queues import QueueStats, health_event, wait_for_room
from sentinel.responders.base import Emit, Responder
from sentinel.responders.dry_run import response_event
from sentinel.responders.oauth_vendors import Adapter, OAuthProviderSettings, RevocationError, build_adapter
from sentinel.wallet import Entry, Wallet, WalletError, redact

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from sentinel.responders.alerts import AlertResponder
    from sentinel.scheduler import JobSpec

log = logging.getLogger(__name__)

ACTION: Final = "revoke_tokens"
#: ``event.action`` of the credentials check's events.
CHECK_ACTION: Final = "credentials-check"
#: Finding fields a pending job keeps (enough for its events and alerts; nothing secret).
_KEPT_FIELDS: Final = (
    "@timestamp",
    "event.id",
    "rule.id",
    "rule.name",
    "user.name",
    "source.ip",
    "host.hostname",
    "source.geo.country_iso_code",
    "source.geo.country_name",
    "source.geo.city_name",
    "source.as.number",
    "source.as.organization.name",
    "sentinel.severity",
)
_OUTCOME: Final = {
    "revoked": "success",
    "already_invalid": "success",
    "no_tokens": "unknown",
    "retrying": "failure",
    "failed": "failure",
}


class OAuthSettings(BaseModel):
    """``[oauth]``: token revocation (needs ``[responders] dry_run = false`` to act)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    #: Identity providers by name (the wallet keys their credentials by the same name).
    providers: dict[str, OAuthProviderSettings] = Field(default_factory=dict)
    #: Seconds one HTTP request may take.
    timeout: Duration = 10.0
    #: First wait before retrying a transient failure; it doubles each time up to retry_max.
    retry_initial: Duration = 5.0
    retry_max: Duration = 600.0
    #: Attempts before a revocation is declared failed (and alerted).
    max_attempts: int = Field(default=10, ge=1, le=1000)
    #: How often the wallet and the providers' credentials are checked (see above); 0: never.
    check_interval: Annotated[Duration, Field(ge=0, le=7 * 86400)] = 3600.0
    #: Accounts waiting for revocation, at most.
    queue_size: int = Field(default=10000, ge=10)
    #: When they are that many: "drop_newest" fails new revocations at once (event, error, critical
    #: alert); "block" makes the detection stage wait (and so the sources).
    overflow: Literal["block", "drop_newest"] = "drop_newest"


@dataclass(slots=True)
class Job:
    """One account's revocation, as persisted (nothing secret)."""

    id: str
    user: str
    finding: dict[str, Any]
    action: dict[str, Any]
    attempts: int = 0
    next_at: float = 0.0
    #: Wallet entry id → final outcome, for entries already dealt with.
    done: dict[str, str] = field(default_factory=dict)
    noted: bool = False

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Job:
        return cls(
            id=str(doc["id"]),
            user=str(doc["user"]),
            finding=dict(doc.get("finding", {})),
            action=dict(doc.get("action", {"type": ACTION, "user": doc["user"]})),
            attempts=int(doc.get("attempts", 0)),
            next_at=float(doc.get("next_at", 0.0)),
            done={str(k): str(v) for k, v in dict(doc.get("done", {})).items()},
            noted=bool(doc.get("noted", False)),
        )


def job_id(finding: Event, user: str) -> str:
    return blake2b(orjson.dumps([finding.get("event.id"), user]), digest_size=8).hexdigest()


class OAuthRevocationResponder(Responder):
    """Revokes the wallet's tokens of accounts that findings name, on its own thread."""

    action_types: ClassVar[frozenset[str]] = frozenset({ACTION})

    def __init__(
        self,
        settings: OAuthSettings,
        wallet: Wallet,
        queue_path: Path,
        alerts: AlertResponder | None = None,
        adapters: Mapping[str, Adapter] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.wallet = wallet
        self.queue_path = queue_path
        self.alerts = alerts
        self.adapters: dict[str, Adapter] = (
            dict(adapters)
            if adapters is not None
            else {name: build_adapter(name, p, settings.timeout) for name, p in settings.providers.items()}
        )
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._emit_to: Emit = lambda events: None
        self.queue_stats = QueueStats(
            "oauth", settings.queue_size, settings.overflow, lambda: len(self._jobs), unit="revocations"
        )
        #: The credentials check: its last problems (empty: fine, None: not run yet) and failures.
        self.check_problems: list[str] | None = None
        self.check_failures = 0
        if alerts is not None:
            alerts.await_outcomes(ACTION)
        self._load()

    # -- the Responder interface -----------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        self._emit_to = emit
        if self._jobs:
            log.info("resuming %d pending token revocations from %s", len(self._jobs), self.queue_path)
        self._thread = threading.Thread(target=self._run, name="responder-oauth", daemon=True)
        self._thread.start()

    def submit(self, finding: Event, action: dict[str, Any]) -> None:
        user = str(action.get("user") or finding.get("user.name") or "")
        kept: dict[str, Any] = {k: finding[k] for k in _KEPT_FIELDS if k in finding}
        job = Job(id=job_id(finding, user), user=user, finding=kept, action=dict(action), next_at=0.0)
        refused = first = False
        with self._cond:
            if job.id not in self._jobs:
                full = len(self._jobs) >= self.settings.queue_size
                if full and not self._stopping and self.settings.overflow == "block":
                    size = self.settings.queue_size
                    wait_for_room(self._cond, lambda: len(self._jobs) >= size and not self._stopping, self.queue_stats)
                elif full and not self._stopping:
                    refused = True
                    first = not self.queue_stats.overflowing
                    self.queue_stats.dropped(str(finding.get("rule.id") or "unknown"))
                if not refused:
                    self._jobs[job.id] = job
                    self._dirty = True
            self._cond.notify_all()
        if refused:
            reason = f"revocation queue full ({self.settings.queue_size} accounts waiting)"
            if first:
                log.error("%s: new token revocations fail until it drains", reason)
            self._emit([self._event(job, "failed", reason=reason)])
            if self.alerts is not None:
                self.alerts.raise_alert(
                    title=f"Token revocation not attempted for {user}",
                    text=f"Sentinel did not try to revoke the OAuth tokens of {user}: {reason}. "
                    "Revoke them at the provider by hand.",
                    severity="critical",
                    key=f"revocation-failed:{user}",
                    finding=kept,
                    rule_id="sentinel-revocation-failed",
                )

    def stop(self, timeout: float) -> None:
        """Finish due attempts within ``timeout``, then persist what is left."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + max(0.0, timeout - 0.5)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("token revocation still running at shutdown; pending jobs are kept for the next start")
        with self._cond:
            self._save()

    def jobs(self) -> list[JobSpec]:
        """The periodic credentials check (``[oauth] check_interval``)."""
        from sentinel.scheduler import JobSpec

        interval = self.settings.check_interval
        if interval <= 0:
            return []
        return [
            JobSpec(
                "wallet-check",
                self.check_credentials,
                interval,
                first_delay=min(60.0, interval),
                description="the wallet opens, providers' credentials and discovery documents work",
            )
        ]

    def queues(self) -> list[QueueStats]:
        return [self.queue_stats]

    def check_credentials(self) -> None:
        """The credentials check (see the module docstring); raises RuntimeError listing the problems."""
        problems = self._credential_problems()
        was = self.check_problems
        self.check_problems = problems
        if problems:
            self.check_failures += 1
        summary = "; ".join(problems)
        if problems and was != problems:
            self._emit([self._check_event(problems)])
            if self.alerts is not None:
                self.alerts.raise_alert(
                    title="Token revocation would fail: wallet or provider credentials",
                    text=f"Sentinel's credentials check failed: {summary}. Revocations will fail until this is fixed.",
                    severity="high",
                    key="credentials-check",
                    rule_id="sentinel-credentials-check",
                )
        elif not problems and was:
            log.info("credentials check passes again (wallet %s)", self.wallet.path)
            self._emit([self._check_event([])])
        if problems:
            raise RuntimeError(f"credentials check: {summary}")

    def _credential_problems(self) -> list[str]:
        problems: list[str] = []
        try:
            if self.wallet.reload_if_changed():
                log.info("wallet %s re-read (changed on disk)", self.wallet.path)
            self.wallet.check()
        except WalletError as exc:
            return [str(exc)]
        used: set[str] = set()
        for account in self.wallet.accounts():
            record = self.wallet.account(account)
            used.update(e.provider for e in (record.entries if record is not None else ()))
        unknown = sorted(used - set(self.adapters))
        if unknown:
            problems.append(f"the wallet names providers that are not configured: {', '.join(unknown)}")
        for name, adapter in sorted(self.adapters.items()):
            try:
                adapter.check(self.wallet.provider(name))
            except (RevocationError, WalletError) as exc:
                problems.append(str(exc))
        return [redact(p) for p in problems]

    def _check_event(self, problems: list[str]) -> Event:
        now = self.clock()
        failed = bool(problems)
        message = (
            f"credentials check failed: {'; '.join(problems)}"
            if failed
            else f"credentials check passes again: wallet {self.wallet.path.name} and {len(self.adapters)} providers"
        )
        return health_event(
            CHECK_ACTION,
            redact(message),
            failed=failed,
            at=now,
            category="configuration",
            id_key=orjson.dumps([CHECK_ACTION, now, problems]).decode(),
            fields={
                "sentinel.credentials.problems": problems,
                "sentinel.credentials.providers": sorted(self.adapters),
            },
        )

    def metrics(self) -> Iterator[Metric]:
        """Prometheus families of the credentials check (for ``MetricsSources.extra``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.check_problems is not None:
            yield GaugeMetricFamily(
                "sentinel_wallet_check_ok", "1 if the last credentials check passed", value=not self.check_problems
            )
        yield CounterMetricFamily(
            "sentinel_wallet_check_failures", "Credentials checks that failed", value=self.check_failures
        )

    def pending(self) -> list[Job]:
        """The jobs not finished yet (for status and tests)."""
        with self._cond:
            return [Job.from_json(asdict(j)) for j in self._jobs.values()]

    # -- the thread --------------------------------------------------------------------------------
    _dirty = False

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._dirty:
                    self._save()
                job = self._next_due()
                while job is None:
                    if self._stopping:
                        return
                    self._cond.wait(self._wait_time())
                    if self._dirty:
                        self._save()
                    job = self._next_due()
                if self._stopping and time.monotonic() >= self._deadline:
                    return
            try:
                self._attempt(job)
            except Exception as exc:  # a bug must not kill the thread: keep the job, log (→ Sentry)
                log.exception("token revocation for %s failed unexpectedly", job.user)
                self._reschedule(job, None)
                if job.attempts >= self.settings.max_attempts:
                    reason = f"internal error ({type(exc).__name__}) in {job.attempts} attempts"
                    self._finish(job, [self._event(job, "failed", reason=reason)], reason, exc=reason)
            with self._cond:
                self._save()

    def _emit(self, events: list[Event]) -> None:
        """Hand outcome events to the daemon; at shutdown its queue may be closed already."""
        if not events:
            return
        try:
            self._emit_to(events)
        except Exception as exc:
            log.warning("%d revocation events not stored (%s)", len(events), type(exc).__name__)

    def _next_due(self) -> Job | None:
        now = self.clock()
        due = [j for j in self._jobs.values() if j.next_at <= now]
        return min(due, key=lambda j: j.next_at) if due else None

    def _wait_time(self) -> float | None:
        if self._stopping:
            return None
        if not self._jobs:
            return None
        return max(0.01, min(j.next_at for j in self._jobs.values()) - self.clock())

    def _backoff(self, attempts: int) -> float:
        return float(min(self.settings.retry_max, self.settings.retry_initial * 2 ** max(0, attempts - 1)))

    def _reschedule(self, job: Job, retry_after: float | None) -> None:
        with self._cond:
            job.attempts += 1
            job.next_at = self.clock() + max(self._backoff(job.attempts), retry_after or 0.0)

    def _attempt(self, job: Job) -> None:
        try:
            if self.wallet.reload_if_changed():
                log.info("wallet %s re-read (changed on disk)", self.wallet.path)
        except WalletError as exc:
            log.error("%s; using the wallet as it was loaded", exc)
        try:
            record = self.wallet.account(job.user)
        except WalletError as exc:
            self._finish(job, [self._event(job, "failed", reason=str(exc))], f"revocation failed: {exc}", exc=str(exc))
            return
        entries = [e for e in (record.entries if record is not None else ()) if e.id not in job.done]
        if record is None or not record.entries:
            event = self._event(job, "no_tokens", reason="the wallet holds no tokens for this account")
            log.info("no OAuth tokens in the wallet for %s: nothing to revoke", job.user)
            self._finish(job, [event], f"no OAuth tokens of {job.user} in the wallet: nothing revoked")
            return
        events: list[Event] = []
        transient: list[tuple[Entry, RevocationError]] = []
        failures: list[str] = []
        for entry in entries:
            try:
                outcome = self._revoke(entry)
            except RevocationError as exc:
                if exc.transient and job.attempts + 1 < self.settings.max_attempts:
                    transient.append((entry, exc))
                    continue
                job.done[entry.id] = "failed"
                reason = str(exc) if not exc.transient else f"{exc} (gave up after {job.attempts + 1} attempts)"
                failures.append(reason)
                events.append(self._event(job, "failed", entry, reason=reason))
                continue
            job.done[entry.id] = outcome
            events.append(self._event(job, outcome, entry))
            log.info(
                "%s OAuth %s %s of %s at %s", outcome.replace("_", " "), entry.kind, entry.id, job.user, entry.provider
            )
        if transient:
            retry_after = max((err.retry_after or 0.0) for _, err in transient)
            self._reschedule(job, retry_after)
            delay = job.next_at - self.clock()
            for entry, err in transient:
                events.append(self._event(job, "retrying", entry, reason=str(err), retry_in=delay))
                log.warning(
                    "revoking %s of %s at %s failed (%s); retry %d of %d in %.0fs",
                    entry.id,
                    job.user,
                    entry.provider,
                    err,
                    job.attempts,
                    self.settings.max_attempts - 1,
                    delay,
                )
        self._emit(events)
        if failures:
            self._alert_failure(job, failures)
        summary = self._summary(job, record.entries, pending=len(transient))
        if not transient:
            self._finish(job, [], summary)
        elif not job.noted and self.alerts is not None:
            job.noted = True
            self.alerts.note(str(job.finding.get("event.id")), summary)

    def _revoke(self, entry: Entry) -> str:
        adapter = self.adapters.get(entry.provider)
        if adapter is None:
            raise RevocationError(
                f"provider {entry.provider!r} is not configured ([oauth.providers.{entry.provider}])", transient=False
            )
        try:
            credentials = self.wallet.provider(entry.provider)
        except WalletError as exc:
            raise RevocationError(str(exc), transient=False) from None
        return adapter.revoke(entry, credentials)

    def _summary(self, job: Job, entries: tuple[Entry, ...], pending: int) -> str:
        counts: dict[str, int] = {}
        for outcome in job.done.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        providers = sorted({e.provider for e in entries})
        parts = [f"{n} {what.replace('_', ' ')}" for what, n in sorted(counts.items())]
        if pending:
            parts.append(f"{pending} retrying")
        return f"OAuth tokens of {job.user} at {', '.join(providers)}: {', '.join(parts)}"

    def _finish(self, job: Job, events: list[Event], summary: str, exc: str | None = None) -> None:
        if events:
            self._emit(events)
        if exc is not None:
            self._alert_failure(job, [exc])
        if self.alerts is not None and not job.noted:
            self.alerts.note(str(job.finding.get("event.id")), summary)
        with self._cond:
            self._jobs.pop(job.id, None)
            self._cond.notify_all()  # room for submitters waiting with overflow = "block"
        overflow = self.queue_stats.settle(len(self._jobs), 0)
        if overflow is not None:
            self._emit([overflow])

    def _alert_failure(self, job: Job, failures: list[str]) -> None:
        text = "; ".join(failures)
        log.error(
            "token revocation FAILED for %s: %s; the tokens may still be valid, revoke them by hand",
            job.user,
            text,
            extra={"rule": job.finding.get("rule.id")},
        )
        if self.alerts is not None:
            self.alerts.raise_alert(
                title=f"Token revocation failed for {job.user}",
                text=(
                    f"Sentinel could not revoke the OAuth tokens of {job.user} after finding "
                    f"{job.finding.get('rule.id')} ({job.finding.get('event.id')}): {text}. "
                    "The tokens may still be valid: revoke them at the provider by hand."
                ),
                severity="critical",
                key=f"revocation-failed:{job.user}",
                finding=job.finding,
                rule_id="sentinel-revocation-failed",
            )

    def _event(
        self,
        job: Job,
        status: str,
        entry: Entry | None = None,
        *,
        reason: str | None = None,
        retry_in: float | None = None,
    ) -> Event:
        finding: Event = {"@timestamp": job.finding.get("@timestamp", ""), **job.finding}
        event = response_event(finding, job.action, _OUTCOME[status], dry_run=False)
        detail: dict[str, Any] = {"status": status, "attempt": job.attempts + (status != "retrying")}
        if entry is not None:
            detail.update({"provider": entry.provider, "entry": entry.id, "kind": entry.kind})
        if reason:
            detail["reason"] = redact(reason)
        if retry_in is not None:
            detail["retry_in_s"] = round(retry_in, 1)
        event["sentinel.status"] = status
        event["sentinel.revocation"] = detail
        where = f" {entry.kind} {entry.id} at {entry.provider}" if entry is not None else ""
        event["message"] = redact(
            f"revoke_tokens {job.user}{where}: {status.replace('_', ' ')}" + (f" ({reason})" if reason else "")
        )
        event["event.id"] = blake2b(
            orjson.dumps([job.id, status, entry.id if entry else None, detail["attempt"]]), digest_size=8
        ).hexdigest()
        return event

    # -- persistence -------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            docs = orjson.loads(self.queue_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            log.error("cannot read pending revocations from %s: %s", self.queue_path, exc)
            return
        for doc in docs if isinstance(docs, list) else ():
            try:
                job = Job.from_json(doc)
            except (KeyError, TypeError, ValueError):
                log.error("ignoring a malformed pending revocation in %s", self.queue_path)
                continue
            self._jobs[job.id] = job

    def _save(self) -> None:
        """Write the pending jobs atomically (called with the lock held)."""
        self._dirty = False
        tmp = self.queue_path.with_suffix(".tmp")
        try:
            if not self._jobs:
                with contextlib.suppress(FileNotFoundError):
                    self.queue_path.unlink()
                return
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps([asdict(j) for j in self._jobs.values()]))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.queue_path)
        except OSError as exc:
            log.error("cannot save pending revocations to %s: %s", self.queue_path, exc.strerror or exc)


def build_identity_responders(settings: Any) -> list[Responder]:
    """Sentry for the daemon's own errors, then the alert channels and token revocation.

    Called by :func:`sentinel.pipeline.build_responders` at start-up.  Sentry is set up even in
    dry-run (it reports Sentinel's own errors); the responders only when ``[responders]
    dry_run = false``.  Revocation opens the wallet, so this is where the daemon asks for the
    wallet password; a wrong one raises :class:`~sentinel.wallet.WalletError` (a ``ValueError``),
    which ``sentinel run`` reports as one start-up error.

    Sections are read with ``getattr`` and their defaults, so this also works with a
    ``Settings`` that has no ``[alerts]``/``[oauth]``/``[wallet]`` sections.
    """
    from sentinel.responders.alerts import AlertResponder, AlertSettings, setup_sentry
    from sentinel.wallet import WalletSettings, daemon_password, install_log_redaction, open_wallet

    alerts_settings: AlertSettings = getattr(settings, "alerts", None) or AlertSettings()
    oauth_settings: OAuthSettings = getattr(settings, "oauth", None) or OAuthSettings()
    wallet_settings: WalletSettings = getattr(settings, "wallet", None) or WalletSettings()
    install_log_redaction()  # registered secrets never reach stderr/journald, even by mistake
    setup_sentry(alerts_settings.sentry)
    if settings.responders.dry_run:
        return []
    responders: list[Responder] = []
    alerts: AlertResponder | None = None
    if alerts_settings.email is not None or alerts_settings.webhooks:
        alerts = AlertResponder(alerts_settings)
        responders.append(alerts)
    if oauth_settings.enabled:
        state_dir: Path = settings.daemon.state_dir
        path = wallet_settings.file(state_dir)
        if not path.is_file():  # say so before asking for a password
            raise WalletError(f"[oauth] is enabled but there is no wallet at {path} (create it: sentinel wallet init)")
        wallet = open_wallet(path, daemon_password(wallet_settings))
        log.info("wallet %s unlocked: %d accounts, %d providers", path, len(wallet.accounts()), len(wallet.providers()))
        responders.append(OAuthRevocationResponder(oauth_settings, wallet, state_dir / "oauth-pending.json", alerts))
    return responders
