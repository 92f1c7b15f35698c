"""End to end through a real ``sentinel run``: a login from a new country in a tailed log →
the account's tokens are revoked at a real OpenID provider (introspection then says
``active: false``), the team gets an email (SMTP with STARTTLS and AUTH) and a Slack-style
webhook, a revocation that cannot succeed raises a failure alert and a Sentry event, every
outcome is in the store — and no secret appears in any output.

NEEDS the configuration wiring of ``[wallet]``, ``[oauth]`` and ``[alerts]`` in
``sentinel.config.Settings`` (fields ``wallet``, ``oauth``, ``alerts``): until then it is
skipped (and fails under CI=true, where nothing may be skipped).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.config import Settings
from sentinel.wallet import TEST_KDF, ProviderCredentials, Secret, Wallet
from tests.conftest import SentinelProcess, clean_env, wait_until
from tests.http_recorder import Recorder, recording, reply
from tests.oidc.provider import BASIC_CLIENT, OIDCProvider, prerequisite_missing, shared_provider
from tests.test_alerts import SMTP_PASSWORD, SMTP_USER, SMTPSink, smtp  # noqa: F401 - the smtp fixture
from tests.test_geoip import BERLIN, MADRID, write_geo_db
from tests.test_run_detection import append, config, stored

WALLET_PASSWORD = "e2e wallet password, never stored"
WRONG_SECRET = "a-stale-client-secret-0123456789"
ACCEPTED = "Nov 22 {h:02d}:00:00 web-01 sshd[{pid}]: Accepted publickey for {user} from {ip} port 5000 ssh2"


@pytest.fixture(scope="session")
def oidc() -> OIDCProvider:
    return shared_provider()


@pytest.fixture
def hooks() -> Iterator[tuple[Recorder, Recorder]]:
    """A chat webhook and a Sentry envelope endpoint."""
    with recording() as chat, recording() as sentry:
        chat.respond("POST", "/hook", reply(200))
        sentry.respond("POST", "/api/1/envelope/", reply(200, {}))
        yield chat, sentry


def needs_config_wiring() -> None:
    missing = [name for name in ("wallet", "oauth", "alerts") if name not in Settings.model_fields]
    if missing:
        prerequisite_missing(f"sentinel.config.Settings has no {', '.join(missing)} section yet (config wiring)")


def test_new_country_login_revokes_alerts_and_leaks_nothing(
    tmp_path: Path,
    sentinel_process: Callable[..., SentinelProcess],
    oidc: OIDCProvider,
    smtp: SMTPSink,  # noqa: F811 - the fixture imported above
    hooks: tuple[Recorder, Recorder],
) -> None:
    needs_config_wiring()
    chat, sentry = hooks
    alice_tokens = [oidc.mint(), oidc.mint()]
    dave_token = oidc.mint()

    # The wallet: alice's tokens at "corp"; dave's at "legacy", whose stored secret is stale.
    wallet_path = tmp_path / "wallet.json"
    wallet = Wallet.create(wallet_path, WALLET_PASSWORD, kdf=TEST_KDF)
    wallet.set_provider("corp", ProviderCredentials(BASIC_CLIENT[0], Secret(BASIC_CLIENT[1])))
    wallet.set_provider("legacy", ProviderCredentials(BASIC_CLIENT[0], Secret(WRONG_SECRET)))
    for token in alice_tokens:
        wallet.add_entry("alice", "corp", token=token, hint="access_token")
    wallet.add_entry("dave", "legacy", token=dave_token)
    wallet.save()
    # systemd credentials: the wallet password and the SMTP password (LoadCredential=).
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "wallet-password").write_text(WALLET_PASSWORD + "\n")
    (creds / "smtp-password").write_text(SMTP_PASSWORD + "\n")

    log = tmp_path / "auth.log"
    log.write_text("")
    extra = f"""
[geoip]
database = "{write_geo_db(tmp_path / "city.mmdb")}"

[responders]
dry_run = false

[wallet]
path = "{wallet_path}"

[oauth]
enabled = true
retry_initial = "1s"

[oauth.providers.corp]
issuer = "{oidc.issuer}"

[oauth.providers.legacy]
issuer = "{oidc.issuer}"
auth_method = "client_secret_post"

[alerts]
response_wait = "5s"

[alerts.email]
host = "{smtp.host}"
port = {smtp.port}
security = "starttls"
username = "{SMTP_USER}"
password_file = "smtp-password"
ca_file = "{smtp.ca_file}"
sender = "sentinel@web-01.example.org"
to = ["soc@example.org"]
min_severity = "high"

[[alerts.webhooks]]
name = "chat"
url = "{chat.url}/hook"
format = "slack"
min_severity = "low"

[alerts.sentry]
dsn = "http://publickey@{sentry.url[7:]}/1"
"""
    # Live mode must not touch this host's firewall or take a fixed metrics port.
    for section in ("firewall", "metrics"):
        if section in Settings.model_fields:
            extra += f"\n[{section}]\nenabled = false\n"
    proc = sentinel_process(config(tmp_path, log, extra), clean_env(CREDENTIALS_DIRECTORY=str(creds)))
    proc.wait_log("running with", timeout=20)
    assert "wallet" in proc.log() and "unlocked" in proc.log()

    # Both accounts are known in Germany; then, hours later (no impossible travel), both log in from Spain.
    append(
        log,
        ACCEPTED.format(h=2, pid=7001, user="alice", ip=BERLIN),
        ACCEPTED.format(h=3, pid=7002, user="dave", ip=BERLIN),
    )
    wait_until(lambda: len([e for e in stored(tmp_path, "event") if e.get("user.name")]) >= 2, timeout=15)
    append(
        log,
        ACCEPTED.format(h=20, pid=7003, user="alice", ip=MADRID),
        ACCEPTED.format(h=21, pid=7004, user="dave", ip=MADRID),
    )

    def revocations() -> list[dict[str, Any]]:
        return [e for e in stored(tmp_path, "sentinel.response") if e["event.action"] == "revoke_tokens"]

    wait_until(lambda: len(revocations()) >= 3, timeout=20)
    mails = smtp.wait(3, timeout=20)  # alice's alert, dave's alert, dave's revocation failure
    sentry.wait(1, timeout=20)  # the failure is an error log: Sentry gets it
    wait_until(lambda: len(chat.requests) >= 3, timeout=10)
    assert proc.stop(timeout=20) == 0

    # The provider says alice's tokens are dead; dave's (stale credentials) is not.
    assert [oidc.introspect(t) for t in alice_tokens] == [{"active": False}, {"active": False}]
    assert oidc.active(dave_token)

    # Revocation outcomes in the store.
    by_user: dict[str, list[str]] = {}
    for event in revocations():
        by_user.setdefault(event["user.name"], []).append(event["sentinel.status"])
    assert by_user == {"alice": ["revoked", "revoked"], "dave": ["failed"]}
    findings = {f["user.name"]: f for f in stored(tmp_path, "alert") if f["rule.id"] == "login-new-country"}
    assert set(findings) == {"alice", "dave"}
    alice_revoked = next(e for e in revocations() if e["user.name"] == "alice")
    assert alice_revoked["sentinel.finding_id"] == findings["alice"]["event.id"]
    assert alice_revoked["sentinel.dry_run"] is False and alice_revoked["event.outcome"] == "success"

    # Alert events: one per channel delivery, linked to their findings.
    alerts = [e for e in stored(tmp_path, "sentinel.response") if e["event.action"] == "alert"]
    sent = {
        (e["rule.id"], e.get("user.name"), e["sentinel.alert"]["channel"])
        for e in alerts
        if e["sentinel.status"] == "sent"
    }
    assert ("login-new-country", "alice", "email") in sent
    assert ("login-new-country", "alice", "webhook:chat") in sent
    assert ("sentinel-revocation-failed", "dave", "email") in sent

    # The email about alice says what happened, to whom, from where and what was done.
    messages = {m.message["Subject"]: m for m in mails}
    alice_mail = messages["[Sentinel HIGH] Login from a new country: alice from Spain"]
    assert alice_mail.tls and alice_mail.authenticated
    body = alice_mail.message.get_payload(decode=True)
    assert isinstance(body, bytes)
    text = body.decode()
    assert "Account: alice" in text and f"Address: {MADRID}" in text and "From: Madrid, Spain (ES)" in text
    assert "Previously seen: DE" in text
    assert "OAuth tokens of alice at corp: 2 revoked" in text
    assert "[Sentinel CRITICAL] Token revocation failed for dave" in messages

    # Nothing secret in any output.
    secrets = [WALLET_PASSWORD, *alice_tokens, dave_token, BASIC_CLIENT[1], WRONG_SECRET, SMTP_PASSWORD]
    outputs: dict[str, bytes] = {"stderr": proc.stderr_path.read_bytes()}
    for path in (tmp_path / "state").iterdir():
        outputs[f"state/{path.name}"] = path.read_bytes()
    with sqlite3.connect(tmp_path / "state" / "events.db") as db:
        outputs["store"] = "\n".join(row[0] for row in db.execute("SELECT doc FROM events")).encode()
    for i, mail in enumerate(mails):
        content = mail.envelope.original_content
        assert isinstance(content, bytes)
        outputs[f"mail {i}"] = content
    for i, req in enumerate(chat.requests):
        outputs[f"webhook {i}"] = req.body
    for i, req in enumerate(sentry.requests):
        outputs[f"sentry envelope {i}"] = req.body
    assert len(outputs["store"]) > 1000 and sentry.requests
    leaks = [(where, s[:8]) for where, data in outputs.items() for s in secrets if s.encode() in data]
    assert not leaks, f"secrets found in outputs: {leaks}"


def _wallet_config(tmp_path: Path, oidc_issuer: str) -> Path:
    wallet = Wallet.create(tmp_path / "wallet.json", WALLET_PASSWORD, kdf=TEST_KDF)
    wallet.set_provider("corp", ProviderCredentials(BASIC_CLIENT[0], Secret(BASIC_CLIENT[1])))
    wallet.add_entry("alice", "corp", token="a-token-that-stays-secret-0123")
    wallet.save()
    log = tmp_path / "auth.log"
    log.write_text("")
    extra = (
        f'[responders]\ndry_run = false\n[wallet]\npath = "{wallet.path}"\n'
        f'[oauth]\nenabled = true\n[oauth.providers.corp]\nissuer = "{oidc_issuer}"\n'
    )
    for section in ("firewall", "metrics"):
        if section in Settings.model_fields:
            extra += f"[{section}]\nenabled = false\n"
    return config(tmp_path, log, extra)


def test_wrong_wallet_password_is_one_clear_start_up_error(tmp_path: Path, oidc: OIDCProvider) -> None:
    needs_config_wiring()
    cfg = _wallet_config(tmp_path, oidc.issuer)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "wallet-password").write_text("not the wallet password\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", "run", "-c", str(cfg)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(CREDENTIALS_DIRECTORY=str(creds)),
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("wrong wallet password (nothing was decrypted)") == 1
    assert "Traceback" not in proc.stderr and "not the wallet password" not in proc.stderr


def test_password_from_an_inherited_file_descriptor(tmp_path: Path, oidc: OIDCProvider) -> None:
    needs_config_wiring()
    cfg = _wallet_config(tmp_path, oidc.issuer)
    read, write = os.pipe()
    os.write(write, WALLET_PASSWORD.encode() + b"\n")
    os.close(write)
    err = tmp_path / "stderr"
    with err.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentinel", "run", "-c", str(cfg)],
            stdin=subprocess.DEVNULL,
            stderr=fh,
            env=clean_env(SENTINEL_WALLET_PASSWORD_FD=str(read)),
            pass_fds=(read,),
        )
    os.close(read)
    try:
        wait_until(lambda: "running with" in err.read_text(), timeout=20)
        assert "wallet" in err.read_text() and "unlocked: 1 accounts" in err.read_text()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert WALLET_PASSWORD not in err.read_text()
