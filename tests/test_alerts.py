"""Alerting with real servers: SMTP (aiosmtpd, STARTTLS and AUTH required), webhooks and
Sentry's envelope endpoint (local HTTP); deduplication, digests, severity routing, retries."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from sentinel.event import Event
from sentinel.responders.alerts import (
    Alert,
    AlertResponder,
    AlertSettings,
    Channel,
    ChannelError,
    EmailChannel,
    EmailSettings,
    SentrySettings,
    Severity,
    WebhookChannel,
    WebhookSettings,
    finding_alert,
    setup_sentry,
)
from tests.conftest import wait_until
from tests.http_recorder import Recorder, recording, reply
from tests.oidc.provider import free_port

SMTP_USER = "sentinel@example.org"
SMTP_PASSWORD = "smtp-password-0123456789"


# -- an SMTP server with STARTTLS and AUTH -------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Received:
    envelope: Envelope
    tls: bool
    authenticated: bool

    @property
    def message(self) -> Message:
        content = self.envelope.content
        assert isinstance(content, bytes)
        return message_from_bytes(content)


@dataclass
class SMTPSink:
    """aiosmtpd requiring STARTTLS then AUTH; every accepted message is kept."""

    host: str
    port: int
    ca_file: Path
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[bytes, bool]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.arrived:
            self.messages.append(Received(envelope, session.ssl is not None, bool(session.authenticated)))
            self.arrived.notify_all()
        return "250 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        self.logins.append((data.login if isinstance(data, LoginPassword) else b"", ok))
        return AuthResult(success=ok, handled=False)

    def wait(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, timeout), "no mail arrived"
            return list(self.messages)

    def settings(self, **overrides: Any) -> EmailSettings:
        base: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": "starttls",
            "username": SMTP_USER,
            "password_file": self.ca_file.parent / "smtp-password",
            "ca_file": self.ca_file,
            "sender": "sentinel@web-01.example.org",
            "to": ["soc@example.org"],
            "min_severity": "low",
            "timeout": 5,
        }
        base.update(overrides)
        return EmailSettings(**base)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SMTPSink]:
    """An SMTP server on 127.0.0.1 that insists on STARTTLS and authentication."""
    cert, key = self_signed(tmp_path)
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD + "\n")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = SMTPSink("127.0.0.1", free_port(), cert)
    controller = Controller(
        sink,
        hostname=sink.host,
        port=sink.port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=sink.authenticate,
    )
    controller.start()
    yield sink
    controller.stop()


# -- findings ------------------------------------------------------------------------------------


def new_country_finding(user: str = "alice", eid: str = "f-1", ip: str = "88.0.1.1") -> Event:
    return {
        "@timestamp": "2026-11-22T10:45:00Z",
        "event.kind": "alert",
        "event.id": eid,
        "rule.id": "login-new-country",
        "rule.name": "Login from a new country",
        "message": f"Login from a new country: new source.geo.country_iso_code 'ES' for {user}",
        "host.hostname": "web-01",
        "user.name": user,
        "source.ip": ip,
        "source.geo.country_iso_code": "ES",
        "source.geo.country_name": "Spain",
        "source.geo.city_name": "Madrid",
        "source.as.number": 3352,
        "source.as.organization.name": "Telefonica de Espana",
        "sentinel.severity": "high",
        "sentinel.previous_values": ["DE"],
        "sentinel.group.user.name": user,
        "threat.technique.id": ["T1078"],
        "sentinel.actions": [{"type": "alert", "severity": "high"}, {"type": "revoke_tokens", "user": user}],
    }


ALERT = {"type": "alert", "severity": "high"}


class RecordingChannel(Channel):
    def __init__(self, name: str = "recording", min_severity: Severity = "low", fail: int = 0) -> None:
        self.name = name
        self.min_severity = min_severity
        self.sent: list[Alert] = []
        self.fail = fail

    def send(self, alert: Alert) -> None:
        if self.fail:
            self.fail -= 1
            raise ChannelError("temporarily down")
        self.sent.append(alert)


def responder(channels: list[Channel], **settings: Any) -> tuple[AlertResponder, list[Event]]:
    events: list[Event] = []
    r = AlertResponder(AlertSettings(**{"response_wait": 0.0, **settings}), channels)
    r.retry_delay = 0.05
    r.start(events.extend)
    return r, events


# -- content -------------------------------------------------------------------------------------


def test_an_alert_says_what_who_where_and_what_was_done() -> None:
    finding = new_country_finding()
    alert = finding_alert(finding, ALERT, ["OAuth tokens of alice at corp: 2 revoked"])
    assert alert.title == "[Sentinel HIGH] Login from a new country: alice from Spain"
    text = alert.text
    for expected in (
        "What happened: Login from a new country",
        "Account: alice",
        "Address: 88.0.1.1",
        "From: Madrid, Spain (ES); AS3352 Telefonica de Espana",
        "Previously seen: DE",
        "When: 2026-11-22T10:45:00Z on web-01",
        "  - OAuth tokens of alice at corp: 2 revoked",
        "Rule: login-new-country (high; ATT&CK T1078)",
    ):
        assert expected in text
    pending = finding_alert(finding, ALERT, []).text
    assert "revocation of the OAuth tokens of alice requested (outcome pending)" in pending
    off = finding_alert(finding, ALERT, [], revoking=False).text
    assert "OAuth tokens of alice NOT revoked: token revocation is not enabled" in off
    ban = finding_alert(
        {**finding, "sentinel.actions": [{"type": "ban", "target": "88.0.1.1", "duration": 600}]}, ALERT, []
    )
    assert "ban of 88.0.1.1 for 600 s requested" in ban.text


def test_log_text_cannot_inject_headers_or_lines() -> None:
    finding = new_country_finding(user="eve\r\nBcc: everyone@example.org")
    alert = finding_alert(finding, ALERT, [])
    assert "\r" not in alert.title and "\n" not in alert.title
    message = EmailChannel(
        EmailSettings(host="127.0.0.1", security="none", sender="s@example.org", to=["t@example.org"])
    ).message(alert)
    assert message["Bcc"] is None
    assert "Account: eve  Bcc: everyone@example.org" in alert.text


# -- email ---------------------------------------------------------------------------------------


def test_email_over_starttls_with_authentication(smtp: SMTPSink) -> None:
    r, events = responder([EmailChannel(smtp.settings())])
    r.submit(new_country_finding(), ALERT)
    (received,) = smtp.wait(1)
    r.stop(5)
    assert received.tls and received.authenticated
    assert smtp.logins == [(SMTP_USER.encode(), True)]
    msg = received.message
    assert msg["Subject"] == "[Sentinel HIGH] Login from a new country: alice from Spain"
    assert msg["From"] == "sentinel@web-01.example.org" and msg["To"] == "soc@example.org"
    assert received.envelope.rcpt_tos == ["soc@example.org"]
    body = msg.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"Account: alice" in body and b"Madrid, Spain (ES); AS3352" in body
    assert SMTP_PASSWORD.encode() not in (received.envelope.original_content or b"")
    (event,) = [e for e in events if e["sentinel.status"] == "sent"]
    assert event["sentinel.alert"]["channel"] == "email"
    assert event["event.action"] == "alert" and event["sentinel.finding_id"] == "f-1"


def test_email_refuses_a_server_without_starttls(tmp_path: Path) -> None:
    class Sink:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "250 OK"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        channel = EmailChannel(
            EmailSettings(host="127.0.0.1", port=port, sender="s@example.org", to=["t@example.org"], timeout=5)
        )
        with pytest.raises(ChannelError, match="STARTTLS"):
            channel.send(finding_alert(new_country_finding(), ALERT, []))
    finally:
        controller.stop()


def test_wrong_smtp_password_fails_after_retries(smtp: SMTPSink, tmp_path: Path) -> None:
    (tmp_path / "bad-password").write_text("not-the-password")
    r, events = responder([EmailChannel(smtp.settings(password_file=tmp_path / "bad-password"))], attempts=2)
    r.submit(new_country_finding(), ALERT)
    wait_until(lambda: any(e["sentinel.status"] == "failed" for e in events), timeout=10)
    r.stop(2)
    assert len(smtp.logins) >= 2 and not any(ok for _, ok in smtp.logins) and not smtp.messages
    failed = next(e for e in events if e["sentinel.status"] == "failed")
    assert "not-the-password" not in json.dumps(failed)


def test_relative_password_file_is_a_systemd_credential(
    smtp: SMTPSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    channel = EmailChannel(smtp.settings(password_file=Path("smtp-password")))
    channel.send(finding_alert(new_country_finding(), ALERT, []))
    assert smtp.wait(1)[0].authenticated


# -- webhooks ------------------------------------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[Recorder]:
    with recording() as rec:
        rec.respond("POST", "/hook", reply(200))
        yield rec


def test_webhook_json_and_slack_payloads(hook: Recorder) -> None:
    channels: list[Channel] = [
        WebhookChannel(WebhookSettings(name="siem", url=SecretStr(hook.url + "/hook"))),
        WebhookChannel(WebhookSettings(name="slack", url=SecretStr(hook.url + "/hook?slack"), format="slack")),
    ]
    r, events = responder(channels)
    r.submit(new_country_finding(user="<!channel> alice"), ALERT)
    requests = hook.wait(2)
    r.stop(2)
    by_kind = {req.path: req for req in requests}
    doc = by_kind["/hook"].json()
    assert by_kind["/hook"].headers["content-type"] == "application/json"
    assert doc["severity"] == "high" and doc["rule"]["id"] == "login-new-country"
    assert doc["user"] == {"name": "<!channel> alice"}
    assert doc["source"]["ip"] == "88.0.1.1" and doc["source"]["geo"]["country_iso_code"] == "ES"
    assert doc["source"]["as"] == {"number": 3352, "organization.name": "Telefonica de Espana"}
    assert doc["finding_id"] == "f-1" and "Account: <!channel> alice" in doc["text"]
    slack = by_kind["/hook?slack"].json()
    assert set(slack) == {"text"}
    assert slack["text"].startswith("*[Sentinel HIGH] Login from a new country: &lt;!channel&gt; alice from Spain*\n")
    assert "<!channel>" not in slack["text"], "log text cannot ping a Slack channel"
    assert sorted(e["sentinel.alert"]["channel"] for e in events if e["sentinel.status"] == "sent") == [
        "webhook:siem",
        "webhook:slack",
    ]


def test_webhook_delivery_is_retried(hook: Recorder) -> None:
    hook.respond("POST", "/hook", reply(502), reply(200))
    r, events = responder([WebhookChannel(WebhookSettings(url=SecretStr(hook.url + "/hook")))])
    r.submit(new_country_finding(), ALERT)
    wait_until(lambda: any(e["sentinel.status"] == "sent" for e in events), timeout=10)
    r.stop(2)
    assert len(hook.requests) == 2


# -- deduplication, digests, routing --------------------------------------------------------------


def test_one_alert_per_rule_and_key_per_window() -> None:
    channel = RecordingChannel()
    r, events = responder([channel], dedup_window=3600)
    r.submit(new_country_finding(eid="f-1"), ALERT)
    r.submit(new_country_finding(eid="f-2", ip="88.0.9.9"), ALERT)
    r.submit(new_country_finding(user="bob", eid="f-3"), ALERT)
    wait_until(lambda: len(events) >= 3, timeout=5)
    r.stop(2)
    assert [a.finding["event.id"] for a in channel.sent if a.finding] == ["f-1", "f-3"]
    assert sorted(e["sentinel.status"] for e in events) == ["deduplicated", "sent", "sent"]


def test_a_flood_becomes_a_digest() -> None:
    channel = RecordingChannel()
    r, events = responder([channel], rate_limit=2, rate_window=0.6)
    for i in range(6):
        r.submit(new_country_finding(user=f"user{i}", eid=f"f-{i}"), ALERT)
    wait_until(lambda: len(channel.sent) >= 3, timeout=5)
    r.stop(2)
    first, second, digest = channel.sent
    assert first.finding and first.finding["user.name"] == "user0"
    assert second.finding and second.finding["user.name"] == "user1"
    assert digest.title == "[Sentinel HIGH] digest: 4 more alerts in the last 0.6 s"
    assert len(digest.digest) == 4 and "login-new-country ×4" in digest.text
    assert [e["sentinel.status"] for e in events].count("digested") == 4


def delivered(channel: RecordingChannel, count: int) -> bool:
    return len(channel.sent) == count


class StuckChannel(RecordingChannel):
    """A channel whose first delivery hangs until released (its server stopped answering)."""

    def __init__(self) -> None:
        super().__init__("stuck")
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, alert: Alert) -> None:
        self.entered.set()
        self.release.wait(10)
        super().send(alert)


def test_a_channel_that_falls_behind_drops_its_oldest_waiting_alerts_and_holds_up_no_other() -> None:
    stuck, other = StuckChannel(), RecordingChannel("other")
    r, events = responder([stuck, other], queue_size=10, rate_limit=100)
    r.submit(new_country_finding(user="user0", eid="f-0"), ALERT)
    assert stuck.entered.wait(5)  # user0's delivery hangs
    for i in range(1, 15):
        r.submit(new_country_finding(user=f"user{i}", eid=f"f-{i}"), ALERT)
        wait_until(functools.partial(delivered, other, i + 1), timeout=5)  # the other channel is not held up
    dropped = [e for e in events if e["sentinel.status"] == "dropped"]
    assert [e["sentinel.alert"]["channel"] for e in dropped] == ["stuck"] * 4
    assert [e["sentinel.alert"]["reason"] for e in dropped] == ["channel queue full (10)"] * 4
    stuck.release.set()
    wait_until(lambda: len(stuck.sent) == 11, timeout=5)
    r.stop(2)
    assert [a.finding["user.name"] for a in stuck.sent if a.finding] == ["user0", *(f"user{i}" for i in range(5, 15))]


def test_severity_routing_per_channel() -> None:
    pager, chat = RecordingChannel("pager", "critical"), RecordingChannel("chat", "medium")
    r, events = responder([pager, chat])
    r.submit(new_country_finding(eid="f-1"), {"type": "alert", "severity": "high"})
    r.submit(new_country_finding(user="bob", eid="f-2"), {"type": "alert", "severity": "critical"})
    r.submit(new_country_finding(user="carol", eid="f-3"), {"type": "alert", "severity": "low"})
    wait_until(lambda: len(events) >= 4, timeout=5)
    r.stop(2)
    assert [a.severity for a in pager.sent] == ["critical"]
    assert sorted(a.severity for a in chat.sent) == ["critical", "high"]
    assert [e["sentinel.status"] for e in events].count("unrouted") == 1


def test_stop_sends_the_pending_digest() -> None:
    channel = RecordingChannel()
    r, _ = responder([channel], rate_limit=1, rate_window=3600)
    r.submit(new_country_finding(user="a", eid="f-a"), ALERT)
    r.submit(new_country_finding(user="b", eid="f-b"), ALERT)
    wait_until(lambda: len(channel.sent) == 1, timeout=5)
    r.stop(3)
    assert len(channel.sent) == 2 and channel.sent[1].digest


# -- Sentry --------------------------------------------------------------------------------------

SENTRY_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import sentry_sdk
    from sentinel.logging import setup_logging
    from sentinel.responders.alerts import SentrySettings, setup_sentry
    from sentinel.wallet import Secret, install_log_redaction

    setup_logging("info")
    install_log_redaction()
    assert setup_sentry(SentrySettings(dsn=sys.argv[1], environment="test"))
    secret = Secret(sys.argv[2])
    log = logging.getLogger("sentinel.responders.oauth")
    log.info("about to use %s", secret.reveal())
    log.error("revocation failed: the provider echoed %s", secret.reveal())
    try:
        token = secret.reveal()
        raise RuntimeError("crash while sending " + token)
    except RuntimeError:
        log.exception("unexpected failure")
    sentry_sdk.flush(5)
    """
)


def test_sentry_gets_errors_with_secrets_scrubbed(tmp_path: Path) -> None:
    secret = "ya29.a-token-that-must-never-leave-0123"
    with recording() as sentry:
        sentry.respond("POST", "/api/1/envelope/", reply(200, {}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        proc = subprocess.run(
            [sys.executable, "-c", SENTRY_SCRIPT, f"http://publickey@{sentry.url[7:]}/1", secret],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        envelopes = sentry.wait(2)
    bodies = [r.body.decode() for r in envelopes]
    assert all(r.headers.get("content-encoding") in ("gzip", "br", None) for r in envelopes)
    assert all(secret not in b for b in bodies)
    assert secret not in proc.stderr and "the provider echoed [redacted]" in proc.stderr
    events = [json.loads(line) for body in bodies for line in body.splitlines()[2:] if line.startswith("{")]
    messages = json.dumps(events)
    assert "revocation failed: the provider echoed [redacted]" in messages
    assert "crash while sending [redacted]" in messages
    assert '"environment": "test"' in messages or '"environment":"test"' in messages


def test_sentry_off_without_dsn() -> None:
    assert setup_sentry(SentrySettings()) is False
