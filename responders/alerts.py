"""Alerting: tell the security team what happened, to whom, from where, and what Sentinel did.

Channels: email over SMTP (STARTTLS or implicit TLS, with authentication) and JSON webhooks
(Sentinel's own payload, or Slack-compatible ``{"text": …}``).  Sentry receives the daemon's
own errors and crashes (:func:`setup_sentry`), not findings.

The :class:`AlertResponder` handles ``{"type": "alert", "severity": S}`` actions and internal
alerts (a revocation that finally failed).  On its dispatcher thread:

- **deduplication**: one alert per rule and key (the finding's group: account, address) per
  ``dedup_window``; repeats become ``deduplicated`` events;
- **waiting for outcomes**: an alert whose finding also asked for a revocation waits up to
  ``response_wait`` for its outcome, so the message says what was actually done;
- **rate limit and digest**: at most ``rate_limit`` alerts per ``rate_window``; beyond that
  they are held and sent as one digest when the window ends;
- **severity routing**: each channel takes alerts at or above its ``min_severity``;
- **bounded inbox**: at most ``queue_size`` alerts wait for the dispatcher; beyond that the
  ``overflow`` policy drops the oldest (default) or the newest, each drop a ``dropped`` event;
- **bounded channels**: at most ``queue_size`` alerts wait for each channel; a channel that far
  behind (its server down, every delivery retried) loses its oldest waiting alert to the newest,
  each a ``dropped`` event naming the channel, and holds up neither the others nor detection.

Each channel delivers on its own thread with retries and backoff, and every delivery becomes
a response event (``sent`` / ``failed`` per channel).  Text from log lines (user names) is
stripped of control characters and shortened before it goes into a subject or a payload, and
everything sent passes through :func:`sentinel.wallet.redact`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import smtplib
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from hashlib import blake2b
from pathlib import Path
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sentinel.engine.durations import Duration
from sentinel.event import Event
from sentinel.queues import QueueStats, wait_for_room
from sentinel.responders.base import Emit, Responder
from sentinel.responders.dry_run import response_event
from sentinel.responders.http import HTTPClient, HTTPFailure
from sentinel.wallet import Secret, redact, redact_obj, register_secret

log = logging.getLogger(__name__)

Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_ORDER: Final = {"low": 0, "medium": 1, "high": 2, "critical": 3}
ACTION: Final = "alert"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmailSettings(_Strict):
    """``[alerts.email]``: send alerts by SMTP."""

    host: str
    #: 587 for STARTTLS (submission), 465 for implicit TLS, 25 for a local relay.
    port: int = Field(default=587, ge=1, le=65535)
    #: "starttls" (required, never downgraded), "tls" (implicit), or "none" (loopback relays only).
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    #: File holding the SMTP password; a relative name is looked up in $CREDENTIALS_DIRECTORY
    #: (systemd LoadCredential=).  Never the password itself.
    password_file: Path | None = None
    #: CA bundle to verify the server's certificate with (default: the system's).
    ca_file: Path | None = None
    sender: str
    to: list[str] = Field(min_length=1)
    min_severity: Severity = "medium"
    timeout: Duration = 10.0


class WebhookSettings(_Strict):
    """``[[alerts.webhooks]]``: POST each alert as JSON."""

    name: str = "webhook"
    #: Often a bearer capability (Slack's /services/T…/B…/secret): never shown, logged or reported.
    url: SecretStr
    #: "json": Sentinel's alert document; "slack": {"text": …} (Slack, Mattermost, Rocket.Chat…).
    format: Literal["json", "slack"] = "json"
    min_severity: Severity = "medium"
    timeout: Duration = 10.0
    ca_file: Path | None = None


class SentrySettings(_Strict):
    """``[alerts.sentry]``: report the daemon's own errors and crashes to Sentry (off without a DSN)."""

    dsn: SecretStr | None = None  # holds the project's key: never shown
    environment: str | None = None


class AlertSettings(_Strict):
    """``[alerts]``: channels, deduplication, rate limit and digests."""

    email: EmailSettings | None = None
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    sentry: SentrySettings = SentrySettings()
    #: One alert per rule and key (account, address) within this window.
    dedup_window: Duration = 3600.0
    #: Alerts sent individually per rate_window; the rest are sent as one digest at its end.
    rate_limit: int = Field(default=10, ge=1)
    rate_window: Duration = 300.0
    #: How long an alert waits for the outcome of its finding's token revocation.
    response_wait: Duration = 10.0
    #: Delivery attempts per channel (with backoff) before a delivery is reported failed.
    attempts: int = Field(default=3, ge=1, le=20)
    #: Alerts waiting for the dispatcher, at most; and waiting for each channel (there, when full,
    #: the oldest is dropped).
    queue_size: int = Field(default=1000, ge=10)
    #: When they are that many: "drop_oldest" (the newest alert is the most telling), "drop_newest",
    #: each dropped alert recorded as a "dropped" event; or "block" (the detection stage waits).
    overflow: Literal["drop_oldest", "drop_newest", "block"] = "drop_oldest"


# -- the alert itself ----------------------------------------------------------------------------


def clean(value: Any, limit: int = 200) -> str:
    """Text from logs made safe for a subject line or chat message: no control characters, bounded."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class Alert:
    """One message for the channels."""

    title: str
    severity: Severity
    lines: list[str]
    doc: dict[str, Any]
    rule_id: str
    key: str
    finding: Event | None = None
    action: dict[str, Any] = field(default_factory=lambda: {"type": ACTION})
    digest: list[Alert] = field(default_factory=list)

    @property
    def text(self) -> str:
        return redact("\n".join(self.lines))

    @property
    def id(self) -> str:
        finding_id = self.finding.get("event.id") if self.finding else None
        return blake2b(orjson.dumps([self.rule_id, self.key, finding_id, self.title]), digest_size=8).hexdigest()


def dedup_key(finding: Mapping[str, Any]) -> str:
    """The finding's group (``sentinel.group.*``), else its account and address."""
    parts = sorted((k, str(v)) for k, v in finding.items() if k.startswith("sentinel.group."))
    if not parts:
        parts = [(k, str(finding[k])) for k in ("user.name", "source.ip") if k in finding]
    return ",".join(f"{k[15:] if k.startswith('sentinel.group.') else k}={v}" for k, v in parts)


def _place(f: Mapping[str, Any]) -> str:
    country = f.get("source.geo.country_name")
    code = f.get("source.geo.country_iso_code")
    where = ", ".join(clean(x, 80) for x in (f.get("source.geo.city_name"), country) if x)
    if code:
        where = f"{where} ({clean(code, 8)})" if where else clean(code, 8)
    asn = f.get("source.as.number")
    org = f.get("source.as.organization.name")
    if asn or org:
        where += ("; " if where else "") + " ".join(x for x in (f"AS{asn}" if asn else "", clean(org or "", 80)) if x)
    return where or "unknown (no GeoIP data for this address)"


def _did(finding: Mapping[str, Any], notes: list[str], revoking: bool) -> list[str]:
    """What Sentinel did about ``finding``: outcomes noted by responders, else what it asked for."""
    out = [clean(n, 500) for n in notes]
    for action in finding.get("sentinel.actions", ()):
        kind = action.get("type")
        if kind == "revoke_tokens" and not notes:
            user = clean(action.get("user"), 80)
            if revoking:
                out.append(f"revocation of the OAuth tokens of {user} requested (outcome pending)")
            else:
                out.append(f"OAuth tokens of {user} NOT revoked: token revocation is not enabled ([oauth])")
        elif kind == "ban":
            span = "permanently" if action.get("permanent") else f"for {action.get('duration')} s"
            out.append(f"ban of {clean(action.get('target'), 60)} {span} requested")
    for sup in finding.get("sentinel.suppressed", ()):
        out.append(
            f"no {sup.get('type')}{' of ' + clean(sup['target'], 60) if sup.get('target') else ''}: {sup.get('reason')}"
        )
    return out or ["alerted only (the rule asks for no other response)"]


def finding_alert(finding: Event, action: Mapping[str, Any], notes: list[str], revoking: bool = True) -> Alert:
    """The alert for a finding: what happened, to whom, from where, and what was done.

    ``notes`` are outcomes responders reported; ``revoking`` says whether token revocation is live.
    """
    severity: Severity = action.get("severity") or finding.get("sentinel.severity") or "medium"
    rule_name = clean(finding.get("rule.name") or finding.get("rule.id"), 120)
    user, ip = finding.get("user.name"), finding.get("source.ip")
    who = clean(user, 80) if user else clean(ip, 60) if ip else "this host"
    place = _place(finding)
    title = f"[Sentinel {severity.upper()}] {rule_name}: {who}"
    if finding.get("source.geo.country_name") or finding.get("source.geo.country_iso_code"):
        title += (
            f" from {clean(finding.get('source.geo.country_name') or finding.get('source.geo.country_iso_code'), 60)}"
        )
    did = _did(finding, notes, revoking)
    lines = [
        f"What happened: {clean(finding.get('message', rule_name), 500)}",
        f"Account: {clean(user, 120) if user else '-'}",
        f"Address: {clean(ip, 60) if ip else '-'}",
        f"From: {place}",
    ]
    previous = finding.get("sentinel.previous_values")
    if previous:
        lines.append(f"Previously seen: {clean(', '.join(map(str, previous)), 200)}")
    speed = finding.get("sentinel.travel.speed_kmh")
    if speed:
        lines.append(
            f"Travel: {finding.get('sentinel.travel.distance_km')} km from "
            f"{clean(finding.get('sentinel.travel.previous_country', '?'), 8)} at {speed} km/h"
        )
    lines.append(f"When: {finding.get('@timestamp')} on {clean(finding.get('host.hostname', '-'), 120)}")
    lines.append("What Sentinel did:")
    lines.extend(f"  - {d}" for d in did)
    techniques = ", ".join(finding.get("threat.technique.id", ()))
    lines.append(f"Rule: {finding.get('rule.id')} ({severity}{'; ATT&CK ' + techniques if techniques else ''})")
    lines.append(f"Finding: {finding.get('event.id')}")
    doc = {
        "title": title,
        "severity": severity,
        "rule": {"id": finding.get("rule.id"), "name": finding.get("rule.name")},
        "message": finding.get("message"),
        "user": {"name": user} if user else None,
        "source": {
            "ip": ip,
            "geo": {
                k[11:]: finding[k]
                for k in ("source.geo.country_iso_code", "source.geo.country_name", "source.geo.city_name")
                if k in finding
            },
            "as": {k[10:]: finding[k] for k in ("source.as.number", "source.as.organization.name") if k in finding},
        },
        "previous_values": previous,
        "host": finding.get("host.hostname"),
        "timestamp": finding.get("@timestamp"),
        "actions": finding.get("sentinel.actions", []),
        "done": did,
        "finding_id": finding.get("event.id"),
        "techniques": finding.get("threat.technique.id", []),
    }
    return Alert(
        title=title,
        severity=severity,
        lines=lines,
        doc=doc,
        rule_id=str(finding.get("rule.id")),
        key=dedup_key(finding),
        finding=finding,
        action=dict(action),
    )


def digest_alert(alerts: list[Alert], window: float) -> Alert:
    """One alert standing for ``alerts`` held back during a flood."""
    severity = max((a.severity for a in alerts), key=SEVERITY_ORDER.__getitem__)
    by_rule = collections.Counter(a.rule_id for a in alerts)
    title = f"[Sentinel {severity.upper()}] digest: {len(alerts)} more alerts in the last {window:g} s"
    lines = [
        f"Alerts flooded: {len(alerts)} were held back and are summarised here.",
        "By rule: " + ", ".join(f"{rule} ×{n}" for rule, n in by_rule.most_common()),
        "",
    ]
    lines.extend(f"- [{a.severity}] {a.title}" for a in alerts[:50])
    if len(alerts) > 50:
        lines.append(f"… and {len(alerts) - 50} more (all are in the event store)")
    doc = {"title": title, "severity": severity, "digest": [a.doc for a in alerts[:50]], "count": len(alerts)}
    return Alert(title, severity, lines, doc, "sentinel-digest", f"digest-{time.time():.0f}", digest=alerts)


# -- channels ------------------------------------------------------------------------------------


class ChannelError(Exception):
    """A delivery that did not happen (message redacted)."""


class Channel(ABC):
    """Somewhere alerts go."""

    name: str
    min_severity: Severity

    def accepts(self, severity: Severity) -> bool:
        return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[self.min_severity]

    @abstractmethod
    def send(self, alert: Alert) -> None:
        """Deliver ``alert`` or raise :class:`ChannelError`."""


def _credential_file(path: Path) -> Path:
    if path.is_absolute():
        return path
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if not base:
        raise ValueError(f"password_file {path} is relative but $CREDENTIALS_DIRECTORY is not set")
    return Path(base) / path


class EmailChannel(Channel):
    """SMTP with STARTTLS (or implicit TLS) and authentication."""

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self.name = "email"
        self.min_severity = settings.min_severity
        self._password: Secret | None = None
        if settings.password_file is not None:
            try:
                text = _credential_file(settings.password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"cannot read the SMTP password file: {exc.strerror or exc}") from None
            self._password = Secret(text)
        if settings.security == "none" and settings.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("[alerts.email] security = 'none' is allowed for a loopback relay only")
        if settings.username and self._password is None:
            raise ValueError("[alerts.email] username is set but password_file is not")

    def _context(self) -> ssl.SSLContext:
        ca = self.settings.ca_file
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = clean(alert.title, 250)
        msg["From"] = self.settings.sender
        msg["To"] = ", ".join(self.settings.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="sentinel")
        msg["X-Sentinel-Severity"] = alert.severity
        msg["X-Sentinel-Rule"] = clean(alert.rule_id, 100)
        msg.set_content(alert.text + "\n\n-- \nSentinel security monitoring\n")
        return msg

    def send(self, alert: Alert) -> None:
        s = self.settings
        try:
            if s.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._context())
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            with smtp:
                smtp.ehlo()
                if s.security == "starttls":
                    smtp.starttls(context=self._context())  # raises if the server does not offer it
                    smtp.ehlo()
                if s.username and self._password is not None:
                    smtp.login(s.username, self._password.reveal())
                smtp.send_message(self.message(alert))
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            raise ChannelError(redact(f"{s.host}:{s.port}: {exc or type(exc).__name__}")) from None


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class WebhookChannel(Channel):
    """POST an alert as JSON; any 2xx is a delivery."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.name = f"webhook:{settings.name}"
        self.min_severity = settings.min_severity
        self.http = HTTPClient(timeout=settings.timeout, ca_file=settings.ca_file, require_tls=False)
        # A webhook URL is often a bearer capability (Slack's /services/T…/B…/secret): keep it out
        # of logs, events and Sentry breadcrumbs.
        self._url = settings.url.get_secret_value()
        register_secret(self._url)
        path = urlsplit(self._url).path
        if len(path) > 12:
            register_secret(path)

    def payload(self, alert: Alert) -> dict[str, Any]:
        if self.settings.format == "slack":
            return {"text": _slack_escape(f"*{alert.title}*\n{alert.text}")}
        doc: dict[str, Any] = redact_obj({**alert.doc, "text": alert.text})
        return doc

    def send(self, alert: Alert) -> None:
        try:
            resp = self.http.post_json(self._url, self.payload(alert))
        except HTTPFailure as exc:
            raise ChannelError(f"{self.settings.name}: {exc}") from None
        if not 200 <= resp.status < 300:
            raise ChannelError(f"{self.settings.name}: HTTP {resp.status} {resp.snippet(120)}")


def build_channels(settings: AlertSettings) -> list[Channel]:
    channels: list[Channel] = []
    if settings.email is not None:
        channels.append(EmailChannel(settings.email))
    channels.extend(WebhookChannel(w) for w in settings.webhooks)
    return channels


# -- the responder -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """An alert on its way: a finding's (composed when ready) or an internal one."""

    key: tuple[str, str]
    ready_at: float
    finding: Event | None = None
    action: dict[str, Any] = field(default_factory=dict)
    alert: Alert | None = None

    def compose(self, notes: list[str], revoking: bool) -> Alert:
        if self.alert is not None:
            return self.alert
        assert self.finding is not None
        return finding_alert(self.finding, self.action, notes, revoking)

    @property
    def finding_id(self) -> str | None:
        value = self.finding.get("event.id") if self.finding is not None else None
        return value if isinstance(value, str) else None


class _Sender:
    """One channel's delivery thread, with retries."""

    def __init__(self, channel: Channel, owner: AlertResponder) -> None:
        self.channel = channel
        self.owner = owner
        self.queue: queue.Queue[Alert | None] = queue.Queue(maxsize=owner.settings.queue_size)
        self.thread = threading.Thread(target=self._run, name=f"alerts-{channel.name}", daemon=True)

    def offer(self, alert: Alert) -> Alert | None:
        """Queue ``alert`` for delivery; when the channel is ``queue_size`` alerts behind, its oldest
        waiting alert makes room and is returned (only the dispatcher thread offers)."""
        try:
            self.queue.put_nowait(alert)
            return None
        except queue.Full:
            pass
        try:
            dropped = self.queue.get_nowait()
        except queue.Empty:  # the sender took one meanwhile
            dropped = None
        self.queue.put_nowait(alert)
        return dropped

    def _run(self) -> None:
        while True:
            alert = self.queue.get()
            if alert is None:
                return
            delay = self.owner.retry_delay
            for attempt in range(1, self.owner.settings.attempts + 1):
                try:
                    self.channel.send(alert)
                except ChannelError as exc:
                    last = str(exc)
                    if attempt < self.owner.settings.attempts and not self.owner.abandon.wait(delay):
                        delay = min(delay * 2, 30.0)
                        continue
                    log.error("alert %r could not be sent by %s: %s", alert.title, self.channel.name, last)
                    self.owner.emit_alert(alert, "failed", self.channel.name, reason=last)
                    break
                except Exception:
                    log.exception("alert channel %s crashed", self.channel.name)
                    self.owner.emit_alert(alert, "failed", self.channel.name, reason="internal error")
                    break
                else:
                    log.info("alert sent by %s: %s", self.channel.name, alert.title)
                    self.owner.emit_alert(alert, "sent", self.channel.name)
                    break


class AlertResponder(Responder):
    """Deduplicates, rate-limits, routes and delivers alerts on its own threads."""

    action_types: ClassVar[frozenset[str]] = frozenset({ACTION})

    def __init__(
        self,
        settings: AlertSettings,
        channels: list[Channel] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.channels = channels if channels is not None else build_channels(settings)
        self.clock = clock
        self.abandon = threading.Event()  # set when stopping time is up: no more retries
        #: First wait before retrying a failed delivery (doubles up to 30 s).
        self.retry_delay = 1.0
        self._cond = threading.Condition()
        self._inbox: collections.deque[_Pending] = collections.deque()
        self._waiting: list[_Pending] = []
        self._notes: dict[str, list[str]] = {}
        self._awaited: set[str] = set()
        self._last: dict[tuple[str, str], float] = {}
        self._sent: collections.deque[float] = collections.deque()
        self._digest: list[Alert] = []
        self._digest_due: float | None = None
        self._stopping = False
        self._emit: Emit = lambda events: None
        self._senders = [_Sender(c, self) for c in self.channels]
        self._thread: threading.Thread | None = None
        self.queue_stats = QueueStats(
            "alerts", settings.queue_size, settings.overflow, lambda: len(self._inbox), unit="alerts"
        )

    # -- what other responders use --
    def await_outcomes(self, action_type: str) -> None:
        """Alerts for findings with ``action_type`` wait (up to response_wait) for a :meth:`note`."""
        self._awaited.add(action_type)

    def note(self, finding_id: str, text: str) -> None:
        """Record what a responder did about finding ``finding_id`` (shown in its alert)."""
        with self._cond:
            self._notes.setdefault(finding_id, []).append(text)
            if len(self._notes) > 10000:
                del self._notes[next(iter(self._notes))]
            self._cond.notify_all()

    def raise_alert(
        self,
        *,
        title: str,
        text: str,
        severity: Severity,
        key: str,
        finding: Mapping[str, Any] | None = None,
        rule_id: str = "sentinel-internal",
    ) -> None:
        """An alert about Sentinel's own work (a revocation that failed)."""
        base = dict(finding or {})
        lines = [clean(text, 2000)]
        if base:
            lines += [f"Account: {clean(base.get('user.name', '-'), 120)}", f"Address: {base.get('source.ip', '-')}"]
            lines.append(f"From: {_place(base)}")
        doc = {
            "title": title,
            "severity": severity,
            "text": text,
            "rule": {"id": rule_id},
            "finding_id": base.get("event.id"),
        }
        alert = Alert(
            f"[Sentinel {severity.upper()}] {clean(title, 200)}", severity, lines, doc, rule_id, key, base or None
        )
        self._enqueue(_Pending((rule_id, key), self.clock(), alert=alert))

    # -- the Responder interface --
    def start(self, emit: Emit) -> None:
        self._emit = emit
        for sender in self._senders:
            sender.thread.start()
        self._thread = threading.Thread(target=self._run, name="alerts-dispatch", daemon=True)
        self._thread.start()

    def submit(self, finding: Event, action: dict[str, Any]) -> None:
        wait = any(a.get("type") in self._awaited for a in finding.get("sentinel.actions", ()))
        ready = self.clock() + (self.settings.response_wait if wait else 0.0)
        pending = _Pending((str(finding.get("rule.id")), dedup_key(finding)), ready, finding, dict(action))
        self._enqueue(pending)

    def _enqueue(self, pending: _Pending) -> None:
        """Into the bounded inbox, as ``overflow`` says when it is full."""
        dropped: _Pending | None = None
        incoming: _Pending | None = pending
        policy = self.settings.overflow
        with self._cond:
            if len(self._inbox) >= self.settings.queue_size and not self._stopping:
                if policy == "block":
                    size = self.settings.queue_size
                    wait_for_room(self._cond, lambda: len(self._inbox) >= size and not self._stopping, self.queue_stats)
                elif policy == "drop_oldest":
                    dropped = self._inbox.popleft()
                else:
                    dropped, incoming = pending, None
            if incoming is not None:
                self._inbox.append(incoming)
            if dropped is not None:
                self.queue_stats.dropped(dropped.key[0])
            self._cond.notify_all()
        if dropped is not None:
            alert = dropped.compose([], "revoke_tokens" in self._awaited)
            log.debug("alert dropped (queue full): %s", alert.title)
            self.emit_alert(alert, "dropped", reason=f"alert queue full ({self.settings.queue_size}, {policy})")

    def stop(self, timeout: float) -> None:
        """Send what is waiting (digest included) within ``timeout``; later retries are abandoned."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for sender in self._senders:
            # A channel that far behind misses the end marker: its thread is a daemon thread, and
            # the deadline below bounds the wait for it.
            with contextlib.suppress(queue.Full):
                sender.queue.put_nowait(None)
        for sender in self._senders:
            if sender.thread.is_alive():
                sender.thread.join(max(0.0, deadline - time.monotonic() - 0.2))
        self.abandon.set()
        for sender in self._senders:
            if sender.thread.is_alive():
                sender.thread.join(0.5)

    def queues(self) -> list[QueueStats]:
        return [self.queue_stats]

    # -- events --
    def emit_alert(self, alert: Alert, status: str, channel: str | None = None, reason: str | None = None) -> None:
        """A response event for ``alert`` (``sent``/``failed`` per channel, ``deduplicated``, ``digested``,
        ``dropped`` by a full inbox…)."""
        outcome = {"sent": "success", "failed": "failure", "dropped": "failure"}.get(status, "unknown")
        if alert.finding is not None and "@timestamp" in alert.finding:
            event = response_event(alert.finding, alert.action, outcome, dry_run=False)
        else:
            event = {
                "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event.kind": "event",
                "event.category": ["intrusion_detection"],
                "event.type": ["info"],
                "event.action": ACTION,
                "event.outcome": outcome,
                "event.dataset": "sentinel.response",
                "rule.id": alert.rule_id,
                "sentinel.response": alert.action,
                "sentinel.dry_run": False,
            }
        event["rule.id"] = alert.rule_id
        event["sentinel.status"] = status
        detail: dict[str, Any] = {"title": clean(alert.title, 300), "severity": alert.severity, "key": alert.key}
        if channel:
            detail["channel"] = channel
        if reason:
            detail["reason"] = redact(reason)
        if alert.digest:
            detail["digest_of"] = [a.id for a in alert.digest]
        event["sentinel.alert"] = detail
        event["message"] = redact(f"alert {status}{' via ' + channel if channel else ''}: {clean(alert.title, 300)}")
        event["event.id"] = blake2b(orjson.dumps([alert.id, status, channel]), digest_size=8).hexdigest()
        try:
            self._emit([event])
        except Exception as exc:  # at shutdown the daemon's queue may be closed already
            log.warning("alert event not stored (%s): %s", type(exc).__name__, event["message"])

    # -- the dispatcher thread --
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_work():
                    if self._stopping:
                        return
                    self._cond.wait(self._wait_time())
                items = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
                self._cond.notify_all()  # room again for submitters waiting with overflow = "block"
            overflow = self.queue_stats.settle(0, 0)
            if overflow is not None:
                try:
                    self._emit([overflow])
                except Exception as exc:  # at shutdown the daemon's queue may be closed already
                    log.warning("queue-overflow event not stored (%s)", type(exc).__name__)
            try:
                self._dispatch(items, stopping)
            except Exception:
                log.exception("alert dispatcher failed")

    def _has_work(self) -> bool:
        now = self.clock()
        if self._inbox:
            return True
        if any(self._ready(p, now) for p in self._waiting):
            return True
        due = self._digest_due is not None and now >= self._digest_due
        return bool(self._digest) and (self._stopping or due)

    def _ready(self, pending: _Pending, now: float) -> bool:
        if self._stopping or now >= pending.ready_at or pending.finding_id is None:
            return True
        return pending.finding_id in self._notes

    def _wait_time(self) -> float | None:
        times = [p.ready_at for p in self._waiting]
        if self._digest_due is not None and self._digest:
            times.append(self._digest_due)
        return max(0.01, min(times) - self.clock()) if times else None

    def _dispatch(self, items: list[_Pending], stopping: bool) -> None:
        now = self.clock()
        for item in items:
            last = self._last.get(item.key)
            if last is not None and now - last < self.settings.dedup_window:
                dup = item.compose([], "revoke_tokens" in self._awaited)
                log.info("alert deduplicated (same rule and key within %gs): %s", self.settings.dedup_window, dup.title)
                self.emit_alert(dup, "deduplicated")
                continue
            self._last[item.key] = now
            if len(self._last) > 100_000:
                del self._last[next(iter(self._last))]
            self._waiting.append(item)
        with self._cond:
            ready = [p for p in self._waiting if self._ready(p, now)]
            self._waiting = [p for p in self._waiting if not self._ready(p, now)]
            notes = [self._notes.pop(p.finding_id, []) if p.finding_id else [] for p in ready]
        for item, noted in zip(ready, notes, strict=True):
            self._route(item.compose(noted, "revoke_tokens" in self._awaited), now)
        if self._digest and (stopping or (self._digest_due is not None and now >= self._digest_due)):
            digest = digest_alert(self._digest, self.settings.rate_window)
            self._digest, self._digest_due = [], None
            self._sent.append(now)
            self._deliver(digest)

    def _route(self, alert: Alert, now: float) -> None:
        window = self.settings.rate_window
        while self._sent and now - self._sent[0] >= window:
            self._sent.popleft()
        if len(self._sent) < self.settings.rate_limit:
            self._sent.append(now)
            self._deliver(alert)
            return
        if not self._digest:
            self._digest_due = self._sent[0] + window
            log.warning("alerts are flooding: holding them for a digest in %.0fs", self._digest_due - now)
        self._digest.append(alert)
        self.emit_alert(alert, "digested")

    def _deliver(self, alert: Alert) -> None:
        routed = False
        for sender in self._senders:
            if sender.channel.accepts(alert.severity):
                routed = True
                dropped = sender.offer(alert)
                if dropped is not None:
                    behind = self.settings.queue_size
                    log.warning("alert channel %s is %d alerts behind: dropped the oldest", sender.channel.name, behind)
                    self.emit_alert(dropped, "dropped", sender.channel.name, reason=f"channel queue full ({behind})")
        if not routed:
            self.emit_alert(alert, "unrouted", reason="no channel takes this severity")


# -- Sentry --------------------------------------------------------------------------------------

#: Keys whose values Sentry's scrubber removes, beyond its defaults.
_SENTRY_DENYLIST: Final = [
    "client_secret",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "wallet_password",
    "assertion",
]


def scrub_event(event: Any, hint: Any = None) -> Any:
    """Sentry ``before_send``: every registered secret redacted, wherever it appears."""
    return redact_obj(event)


def setup_sentry(settings: SentrySettings) -> bool:
    """Report the daemon's errors (``log.error`` and worse) and crashes to Sentry; False when off."""
    dsn = settings.dsn.get_secret_value() if settings.dsn is not None else ""
    if not dsn:
        return False
    register_secret(dsn)
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    from sentinel import __version__

    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
        release=f"sentinel@{__version__}",
        send_default_pii=False,
        include_local_variables=False,  # frames' locals could hold a token being sent
        max_breadcrumbs=30,
        before_send=scrub_event,
        before_breadcrumb=scrub_event,
        event_scrubber=EventScrubber(denylist=[*DEFAULT_DENYLIST, *_SENTRY_DENYLIST], recursive=True),
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
    )
    log.info("reporting errors to Sentry")
    return True
