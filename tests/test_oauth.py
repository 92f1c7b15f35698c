"""OAuth revocation: the vendor adapters against a local server checking each documented request
shape, RFC 7009 against a real OpenID provider (npm oidc-provider, checked by RFC 7662
introspection), and the responder's outcomes, retries, persistence and failure alerts."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from sentinel.event import Event
from sentinel.responders.alerts import Alert, AlertResponder, AlertSettings, Channel, Severity
from sentinel.responders.http import HTTPClient
from sentinel.responders.oauth import Job, OAuthRevocationResponder, OAuthSettings
from sentinel.responders.oauth_vendors import (
    EntraAdapter,
    GoogleAdapter,
    OAuthProviderSettings,
    RevocationError,
    RFC7009Adapter,
    basic_auth,
    build_adapter,
)
from sentinel.wallet import TEST_KDF, Entry, ProviderCredentials, Secret, Wallet
from tests.conftest import wait_until
from tests.http_recorder import Recorder, recording, reply
from tests.oidc.provider import BASIC_CLIENT, OTHER_CLIENT, POST_CLIENT, OIDCProvider, shared_provider

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="session")
def oidc() -> OIDCProvider:
    return shared_provider()


@pytest.fixture
def server() -> Iterator[Recorder]:
    with recording() as rec:
        yield rec


def token_entry(token: str, provider: str = "p", hint: str | None = None) -> Entry:
    return Entry(id="e1", provider=provider, kind="token", token=Secret(token), hint=hint)


def creds(client: tuple[str, str]) -> ProviderCredentials:
    return ProviderCredentials(client[0], Secret(client[1]))


# -- request shapes ------------------------------------------------------------------------------


def test_client_secret_basic_form_encodes_before_base64() -> None:
    value = basic_auth("my client", "s3cr:t/+=&%")
    assert value == "Basic " + base64.b64encode(b"my+client:s3cr%3At%2F%2B%3D%26%25").decode()


def test_google_request_shape_and_outcomes(server: Recorder) -> None:
    settings = OAuthProviderSettings(type="google", revocation_endpoint=server.url + "/revoke")
    adapter = build_adapter("google", settings, timeout=5)
    assert isinstance(adapter, GoogleAdapter)
    server.respond(
        "POST",
        "/revoke",
        reply(200, {}),
        reply(400, {"error": "invalid_token", "error_description": "Token expired or revoked"}),
        reply(503, None, {"Retry-After": "3"}),
        reply(400, {"error": "invalid_request"}),
    )
    entry = token_entry("1//google-refresh-token")
    assert adapter.revoke(entry, None) == "revoked"
    (req,) = server.requests
    assert req.method == "POST" and req.path == "/revoke"
    assert req.headers["content-type"] == FORM
    assert "authorization" not in req.headers
    assert req.body == b"token=1%2F%2Fgoogle-refresh-token"
    assert adapter.revoke(entry, None) == "already_invalid"
    with pytest.raises(RevocationError) as transient:
        adapter.revoke(entry, None)
    assert transient.value.transient and transient.value.retry_after == 3.0
    with pytest.raises(RevocationError) as permanent:
        adapter.revoke(entry, None)
    assert not permanent.value.transient
    assert "google-refresh-token" not in str(permanent.value)


def test_google_default_endpoint() -> None:
    adapter = build_adapter("g", OAuthProviderSettings(type="google"), timeout=5)
    assert adapter.settings.revocation_endpoint is None
    from sentinel.responders.oauth_vendors import GOOGLE_REVOKE

    assert GOOGLE_REVOKE == "https://oauth2.googleapis.com/revoke"


def test_entra_request_shapes(server: Recorder) -> None:
    settings = OAuthProviderSettings(
        type="entra", tenant="contoso.onmicrosoft.com", authority=server.url, graph_url=server.url + "/v1.0"
    )
    adapter = build_adapter("entra", settings, timeout=5)
    assert isinstance(adapter, EntraAdapter)
    server.respond(
        "POST",
        "/contoso.onmicrosoft.com/oauth2/v2.0/token",
        reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "app-token-1"}),
        reply(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "app-token-2"}),
    )
    graph_path = "/v1.0/users/bob@contoso.example/revokeSignInSessions"
    ok = reply(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean", "value": True})
    server.respond("POST", graph_path, ok, ok, reply(401, {"error": {"code": "InvalidAuthenticationToken"}}), ok)
    entry = Entry(id="s1", provider="entra", kind="sessions", subject="bob@contoso.example")
    app = ProviderCredentials("11111111-2222-3333-4444-555555555555", Secret("entra app secret value"))

    assert adapter.revoke(entry, app) == "revoked"
    token_req, graph_req = server.requests
    assert token_req.method == "POST" and token_req.headers["content-type"] == FORM
    assert token_req.form() == {
        "client_id": ["11111111-2222-3333-4444-555555555555"],
        "scope": ["https://graph.microsoft.com/.default"],
        "client_secret": ["entra app secret value"],
        "grant_type": ["client_credentials"],
    }
    assert graph_req.method == "POST" and graph_req.path == graph_path
    assert graph_req.headers["authorization"] == "Bearer app-token-1"
    assert graph_req.headers["content-length"] == "0" and graph_req.body == b""
    assert "content-type" not in graph_req.headers, "the documented request has no body"

    assert adapter.revoke(entry, app) == "revoked"
    assert len(server.requests) == 3, "the app token is reused until it expires"
    assert adapter.revoke(entry, app) == "revoked"  # 401: a new app token, then the call again
    assert [r.path.rsplit("/", 1)[-1] for r in server.requests[3:]] == [
        "revokeSignInSessions",
        "token",
        "revokeSignInSessions",
    ]
    assert server.requests[-1].headers["authorization"] == "Bearer app-token-2"


def test_entra_errors(server: Recorder) -> None:
    settings = OAuthProviderSettings(type="entra", tenant="t1", authority=server.url, graph_url=server.url + "/v1.0")
    adapter = build_adapter("entra", settings, timeout=5)
    app = ProviderCredentials("app", Secret("entra app secret value"))
    sessions = Entry(id="s1", provider="entra", kind="sessions", subject="nobody")
    server.respond("POST", "/t1/oauth2/v2.0/token", reply(200, {"access_token": "tok", "expires_in": 3600}))
    server.respond(
        "POST",
        "/v1.0/users/nobody/revokeSignInSessions",
        reply(404, {"error": {"code": "Request_ResourceNotFound"}}),
        reply(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "12"}),
    )
    with pytest.raises(RevocationError, match="no user 'nobody'") as info:
        adapter.revoke(sessions, app)
    assert not info.value.transient
    with pytest.raises(RevocationError) as info:
        adapter.revoke(sessions, app)
    assert info.value.transient and info.value.retry_after == 12.0
    with pytest.raises(RevocationError, match="sessions") as info:
        adapter.revoke(token_entry("x" * 20), app)
    assert not info.value.transient
    bad = build_adapter("entra", OAuthProviderSettings(type="entra", tenant="t2", authority=server.url), timeout=5)
    server.respond(
        "POST", "/t2/oauth2/v2.0/token", reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215"})
    )
    with pytest.raises(RevocationError, match="invalid_client") as info:
        bad.revoke(sessions, app)
    assert not info.value.transient
    assert "entra app secret value" not in str(info.value)


def test_rfc7009_request_shapes_and_discovery(server: Recorder) -> None:
    server.respond(
        "GET",
        "/.well-known/openid-configuration",
        reply(200, {"issuer": server.url, "revocation_endpoint": server.url + "/oauth/revoke"}),
    )
    server.respond("POST", "/oauth/revoke", reply(200))
    client = ("client id", "s3cr:t/+=&%-long-enough")
    entry = token_entry("opaque-token-value", hint="refresh_token")

    basic = RFC7009Adapter("p", OAuthProviderSettings(issuer=server.url), HTTPClient(timeout=5))
    assert basic.revoke(entry, creds(client)) == "revoked"
    discovery, revoke = server.requests
    assert discovery.method == "GET" and discovery.path == "/.well-known/openid-configuration"
    assert revoke.method == "POST" and revoke.path == "/oauth/revoke"
    assert revoke.headers["content-type"] == FORM
    assert revoke.headers["authorization"] == basic_auth(*client)
    assert revoke.form() == {"token": ["opaque-token-value"], "token_type_hint": ["refresh_token"]}

    post = RFC7009Adapter(
        "p",
        OAuthProviderSettings(revocation_endpoint=server.url + "/oauth/revoke", auth_method="client_secret_post"),
        HTTPClient(timeout=5),
    )
    assert post.revoke(entry, creds(client)) == "revoked"
    req = server.requests[-1]
    assert "authorization" not in req.headers
    assert req.form() == {
        "token": ["opaque-token-value"],
        "token_type_hint": ["refresh_token"],
        "client_id": ["client id"],
        "client_secret": ["s3cr:t/+=&%-long-enough"],
    }
    assert len(server.requests) == 3, "a configured endpoint needs no discovery"

    public = RFC7009Adapter(
        "p",
        OAuthProviderSettings(revocation_endpoint=server.url + "/oauth/revoke", auth_method="none"),
        HTTPClient(timeout=5),
    )
    assert public.revoke(token_entry("t" * 10), ProviderCredentials("public-app")) == "revoked"
    assert server.requests[-1].form() == {"token": ["t" * 10], "client_id": ["public-app"]}


def test_rfc7009_errors(server: Recorder) -> None:
    settings = OAuthProviderSettings(revocation_endpoint=server.url + "/revoke")
    adapter = RFC7009Adapter("p", settings, HTTPClient(timeout=5))
    entry = token_entry("a-token-value-123")
    server.respond(
        "POST",
        "/revoke",
        reply(503, {"error": "temporarily_unavailable"}, {"Retry-After": "7"}),
        reply(401, {"error": "invalid_client"}),
        reply(400, {"error": "unsupported_token_type"}),
    )
    with pytest.raises(RevocationError) as info:
        adapter.revoke(entry, creds(("id", "secret-0123")))
    assert info.value.transient and info.value.retry_after == 7.0
    for expected in ("invalid_client", "unsupported_token_type"):
        with pytest.raises(RevocationError, match=expected) as info:
            adapter.revoke(entry, creds(("id", "secret-0123")))
        assert not info.value.transient
    with pytest.raises(RevocationError, match="no client id") as info:
        adapter.revoke(entry, None)
    assert not info.value.transient
    closed = RFC7009Adapter(
        "p", OAuthProviderSettings(revocation_endpoint="http://127.0.0.1:1/r"), HTTPClient(timeout=2)
    )
    with pytest.raises(RevocationError) as info:
        closed.revoke(entry, creds(("id", "secret-0123")))
    assert info.value.transient, "a connection failure is retried"


def test_plain_http_to_a_remote_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="plain http"):
        OAuthProviderSettings(revocation_endpoint="http://id.example.com/revoke")
    with pytest.raises(ValueError, match="issuer"):
        OAuthProviderSettings()
    with pytest.raises(ValueError, match="tenant"):
        OAuthProviderSettings(type="entra")


# -- a real OpenID provider ----------------------------------------------------------------------


def test_rfc7009_revokes_at_a_real_provider(oidc: OIDCProvider) -> None:
    methods: list[tuple[tuple[str, str], Literal["client_secret_basic", "client_secret_post"]]] = [
        (BASIC_CLIENT, "client_secret_basic"),
        (POST_CLIENT, "client_secret_post"),
    ]
    for client, method in methods:
        token = oidc.mint(client)
        assert oidc.active(token, client)
        adapter = RFC7009Adapter("corp", OAuthProviderSettings(issuer=oidc.issuer, auth_method=method), HTTPClient())
        assert adapter.revoke(token_entry(token, hint="access_token"), creds(client)) == "revoked"
        assert oidc.introspect(token, client) == {"active": False}


def test_already_invalid_via_introspection(oidc: OIDCProvider) -> None:
    token = oidc.mint()
    adapter = RFC7009Adapter("corp", OAuthProviderSettings(issuer=oidc.issuer, introspect=True), HTTPClient())
    assert adapter.revoke(token_entry(token), creds(BASIC_CLIENT)) == "revoked"
    assert adapter.revoke(token_entry(token), creds(BASIC_CLIENT)) == "already_invalid"


def test_real_provider_refusals_are_permanent(oidc: OIDCProvider) -> None:
    adapter = RFC7009Adapter("corp", OAuthProviderSettings(issuer=oidc.issuer), HTTPClient())
    token = oidc.mint(OTHER_CLIENT)
    with pytest.raises(RevocationError, match="not authorized") as info:
        adapter.revoke(token_entry(token), creds(BASIC_CLIENT))
    assert not info.value.transient
    assert oidc.active(token, OTHER_CLIENT), "another client's token is left alone"
    with pytest.raises(RevocationError, match="invalid_client") as info:
        adapter.revoke(token_entry(token), creds((BASIC_CLIENT[0], "wrong-secret-0123456789")))
    assert not info.value.transient


# -- the responder -------------------------------------------------------------------------------


class RecordingChannel(Channel):
    def __init__(self) -> None:
        self.name = "recording"
        self.min_severity: Severity = "low"
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)


def finding(user: str, eid: str = "f-1") -> Event:
    return {
        "@timestamp": "2026-11-22T10:45:00Z",
        "event.kind": "alert",
        "event.id": eid,
        "rule.id": "login-new-country",
        "rule.name": "Login from a new country",
        "user.name": user,
        "source.ip": "88.0.1.1",
        "source.geo.country_iso_code": "ES",
        "sentinel.severity": "high",
        "sentinel.actions": [{"type": "alert", "severity": "high"}, {"type": "revoke_tokens", "user": user}],
    }


class Harness:
    """A responder with a wallet, an alert responder with a recording channel, collected events."""

    def __init__(self, tmp_path: Path, providers: dict[str, OAuthProviderSettings], **options: Any) -> None:
        self.path = tmp_path / "wallet.json"
        self.wallet = Wallet.open(self.path, "harness password") if self.path.exists() else None
        if self.wallet is None:
            self.wallet = Wallet.create(self.path, "harness password", kdf=TEST_KDF)
        self.settings = OAuthSettings(enabled=True, providers=providers, **options)
        self.channel = RecordingChannel()
        self.alerts = AlertResponder(AlertSettings(response_wait=0.0), [self.channel])
        self.events: list[Event] = []
        self.queue = tmp_path / "oauth-pending.json"
        self.responder: OAuthRevocationResponder | None = None

    def start(self) -> OAuthRevocationResponder:
        assert self.wallet is not None
        self.responder = OAuthRevocationResponder(self.settings, self.wallet, self.queue, self.alerts)
        self.alerts.start(self.events.extend)
        self.responder.start(self.events.extend)
        return self.responder

    def stop(self) -> None:
        assert self.responder is not None
        self.responder.stop(2)
        self.alerts.stop(2)

    def statuses(self, user: str | None = None) -> list[str]:
        return [
            e["sentinel.status"]
            for e in list(self.events)
            if e["event.action"] == "revoke_tokens" and (user is None or e["user.name"] == user)
        ]


def test_responder_revokes_reports_and_alerts_on_failure(oidc: OIDCProvider, tmp_path: Path) -> None:
    providers = {
        "corp": OAuthProviderSettings(issuer=oidc.issuer),
        "broken": OAuthProviderSettings(issuer=oidc.issuer),
    }
    h = Harness(tmp_path, providers, retry_initial=0.05)
    assert h.wallet is not None
    tokens = [oidc.mint(), oidc.mint()]
    h.wallet.set_provider("corp", creds(BASIC_CLIENT))
    h.wallet.set_provider("broken", creds((BASIC_CLIENT[0], "not-the-right-secret-000")))
    for token in tokens:
        h.wallet.add_entry("alice", "corp", token=token, hint="access_token")
    victim = oidc.mint()
    h.wallet.add_entry("carol", "broken", token=victim)
    h.wallet.save()
    responder = h.start()
    for user in ("alice", "bob", "carol"):
        responder.submit(finding(user, f"f-{user}"), {"type": "revoke_tokens", "user": user})
    wait_until(lambda: len(h.statuses()) >= 4 and len(h.channel.sent) >= 1, timeout=10)
    h.stop()

    assert h.statuses("alice") == ["revoked", "revoked"]
    assert all(not oidc.active(t) for t in tokens), "RFC 7662 introspection: revoked"
    assert h.statuses("bob") == ["no_tokens"]
    assert h.statuses("carol") == ["failed"]
    assert oidc.active(victim)
    (alert,) = h.channel.sent
    assert alert.title == "[Sentinel CRITICAL] Token revocation failed for carol"
    assert "invalid_client" in alert.text and alert.severity == "critical"
    revoked = next(e for e in h.events if e.get("sentinel.status") == "revoked")
    assert revoked["event.outcome"] == "success" and revoked["sentinel.finding_id"] == "f-alice"
    assert revoked["sentinel.revocation"]["provider"] == "corp"
    assert revoked["rule.id"] == "login-new-country" and revoked["source.ip"] == "88.0.1.1"
    failed = next(e for e in h.events if e.get("sentinel.status") == "failed")
    assert failed["event.outcome"] == "failure"
    dump = json.dumps(h.events) + json.dumps([a.doc for a in h.channel.sent])
    for secret in (*tokens, victim, BASIC_CLIENT[1], "harness password"):
        assert secret not in dump
    assert len({e["event.id"] for e in h.events}) == len(h.events)
    assert not h.queue.exists(), "nothing pending"


def test_transient_failures_are_retried_with_backoff(server: Recorder, tmp_path: Path) -> None:
    server.respond("POST", "/revoke", reply(503), reply(503), reply(200))
    providers = {"corp": OAuthProviderSettings(revocation_endpoint=server.url + "/revoke")}
    h = Harness(tmp_path, providers, retry_initial=0.2, retry_max=1.0)
    assert h.wallet is not None
    h.wallet.set_provider("corp", creds(("id", "secret-value-0123")))
    h.wallet.add_entry("alice", "corp", token="token-to-retry-0123")
    h.wallet.save()
    h.start().submit(finding("alice"), {"type": "revoke_tokens", "user": "alice"})
    wait_until(lambda: "revoked" in h.statuses(), timeout=10)
    h.stop()
    assert h.statuses() == ["retrying", "retrying", "revoked"]
    assert len(server.requests) == 3
    retry = [e["sentinel.revocation"] for e in h.events if e.get("sentinel.status") == "retrying"]
    assert [r["attempt"] for r in retry] == [1, 2] and retry[0]["retry_in_s"] <= retry[1]["retry_in_s"]


def test_exhausted_retries_fail_and_alert(server: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server.respond("POST", "/revoke", reply(500))
    providers = {"corp": OAuthProviderSettings(revocation_endpoint=server.url + "/revoke")}
    h = Harness(tmp_path, providers, retry_initial=0.02, max_attempts=3)
    assert h.wallet is not None
    h.wallet.set_provider("corp", creds(("id", "secret-value-0123")))
    h.wallet.add_entry("alice", "corp", token="token-never-revoked-0123")
    h.wallet.save()
    h.start().submit(finding("alice"), {"type": "revoke_tokens", "user": "alice"})
    wait_until(lambda: "failed" in h.statuses() and bool(h.channel.sent), timeout=10)
    h.stop()
    assert h.statuses() == ["retrying", "retrying", "failed"]
    failed = next(e for e in h.events if e.get("sentinel.status") == "failed")
    assert "gave up after 3 attempts" in failed["sentinel.revocation"]["reason"]
    assert "token revocation FAILED for alice" in caplog.text
    assert h.channel.sent[0].severity == "critical"


def test_pending_revocations_survive_a_restart(server: Recorder, tmp_path: Path) -> None:
    server.respond("POST", "/revoke", reply(503, None, {"Retry-After": "1"}))
    providers = {"corp": OAuthProviderSettings(revocation_endpoint=server.url + "/revoke")}
    first = Harness(tmp_path, providers, retry_initial=0.5)
    assert first.wallet is not None
    first.wallet.set_provider("corp", creds(("id", "secret-value-0123")))
    first.wallet.add_entry("alice", "corp", token="token-pending-0123456")
    first.wallet.save()
    first.start().submit(finding("alice"), {"type": "revoke_tokens", "user": "alice"})
    wait_until(lambda: first.statuses() == ["retrying"], timeout=10)
    first.stop()
    saved = json.loads(first.queue.read_text())
    assert [j["user"] for j in saved] == ["alice"] and saved[0]["attempts"] == 1
    assert "token-pending" not in first.queue.read_text() and "secret-value" not in first.queue.read_text()

    server.respond("POST", "/revoke", reply(200))
    second = Harness(tmp_path, providers, retry_initial=0.5)
    responder = second.start()
    assert [j.user for j in responder.pending()] == ["alice"]
    wait_until(lambda: second.statuses() == ["revoked"], timeout=10)
    second.stop()
    assert not second.queue.exists()
    assert second.events[0]["sentinel.finding_id"] == "f-1"


def test_job_round_trips() -> None:
    job = Job("j", "alice", {"event.id": "f"}, {"type": "revoke_tokens", "user": "alice"}, 2, 5.0, {"e": "revoked"})
    from dataclasses import asdict

    assert Job.from_json(json.loads(json.dumps(asdict(job)))) == job


def test_alert_waits_for_the_revocation_outcome(oidc: OIDCProvider, tmp_path: Path) -> None:
    h = Harness(tmp_path, {"corp": OAuthProviderSettings(issuer=oidc.issuer)})
    h.alerts = AlertResponder(AlertSettings(response_wait=5.0), [h.channel])
    assert h.wallet is not None
    h.wallet.set_provider("corp", creds(BASIC_CLIENT))
    h.wallet.add_entry("alice", "corp", token=oidc.mint())
    h.wallet.save()
    responder = h.start()
    f = finding("alice")
    h.alerts.submit(f, {"type": "alert", "severity": "high"})
    responder.submit(f, {"type": "revoke_tokens", "user": "alice"})
    wait_until(lambda: bool(h.channel.sent), timeout=10)
    h.stop()
    text = h.channel.sent[0].text
    assert "OAuth tokens of alice at corp: 1 revoked" in text
    assert "outcome pending" not in text


class ExplodingAdapter(RFC7009Adapter):
    def revoke(self, entry: Entry, credentials: ProviderCredentials | None) -> Literal["revoked"]:
        raise RuntimeError("a bug")


def test_an_unexpected_error_is_retried_then_fails_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = OAuthProviderSettings(revocation_endpoint="http://127.0.0.1:1/r")
    h = Harness(tmp_path, {"corp": settings}, retry_initial=0.01, max_attempts=2)
    assert h.wallet is not None
    h.wallet.add_entry("alice", "corp", token="token-0123456789")
    h.wallet.save()
    responder = OAuthRevocationResponder(
        h.settings, h.wallet, h.queue, h.alerts, adapters={"corp": ExplodingAdapter("corp", settings, HTTPClient())}
    )
    h.responder = responder
    h.alerts.start(h.events.extend)
    responder.start(h.events.extend)
    responder.submit(finding("alice"), {"type": "revoke_tokens", "user": "alice"})
    wait_until(lambda: "failed" in h.statuses() and bool(h.channel.sent), timeout=10)
    h.stop()
    assert "internal error (RuntimeError) in 2 attempts" in h.channel.sent[0].text
    assert caplog.text.count("failed unexpectedly") == 2


# -- the credentials check and the bounded queue -----------------------------------------------------


def check_events(h: Harness) -> list[Event]:
    return [e for e in list(h.events) if e.get("event.action") == "credentials-check"]


def test_the_credentials_check_notices_what_would_make_a_revocation_fail(server: Recorder, tmp_path: Path) -> None:
    discovery = reply(200, {"issuer": server.url, "revocation_endpoint": server.url + "/oauth/revoke"})
    server.respond("GET", "/.well-known/openid-configuration", discovery)
    h = Harness(tmp_path, {"corp": OAuthProviderSettings(issuer=server.url)})
    assert h.wallet is not None
    h.wallet.set_provider("corp", creds(("client-id", "secret-value-0123")))
    h.wallet.add_entry("alice", "corp", token="token-0123456789")
    h.wallet.save()
    responder = h.start()
    try:
        (job,) = responder.jobs()
        assert job.id == "wallet-check" and job.interval == 3600
        job.func()
        job.func()
        assert responder.check_problems == []
        assert len(server.requests) == 2, "the discovery document is fetched afresh by every check"
        assert not check_events(h)

        # `sentinel wallet add` names a provider the configuration does not know.
        other = Wallet.open(h.path, "harness password")
        other.add_entry("bob", "ghost", token="token-9876543210")
        other.save()
        with pytest.raises(RuntimeError, match="providers that are not configured: ghost"):
            job.func()
        (failed,) = check_events(h)
        assert failed["event.outcome"] == "failure" and failed["event.dataset"] == "sentinel.health"
        assert "ghost" in failed["sentinel.credentials.problems"][0]
        wait_until(lambda: bool(h.channel.sent), timeout=5)
        assert h.channel.sent[0].severity == "high" and "ghost" in h.channel.sent[0].text
        values = {s.name: s.value for m in responder.metrics() for s in m.samples}
        assert values["sentinel_wallet_check_ok"] == 0 and values["sentinel_wallet_check_failures_total"] == 1

        other.remove_account("bob")
        other.save()
        job.func()
        assert [e["event.outcome"] for e in check_events(h)] == ["failure", "success"]

        # The issuer's discovery document goes away.
        server.respond("GET", "/.well-known/openid-configuration", reply(404))
        with pytest.raises(RuntimeError, match="OpenID discovery"):
            job.func()
        server.respond("GET", "/.well-known/openid-configuration", discovery)
        job.func()

        # The password is changed under the running daemon, then the file is deleted.
        other.rotate_password("a brand new password")
        with pytest.raises(RuntimeError, match="password was changed"):
            job.func()
        h.path.unlink()
        with pytest.raises(RuntimeError, match="no wallet here"):
            job.func()
        outcomes = [e["event.outcome"] for e in check_events(h)]
        assert outcomes == ["failure", "success", "failure", "success", "failure", "failure"]
        values = {s.name: s.value for m in responder.metrics() for s in m.samples}
        assert values["sentinel_wallet_check_failures_total"] == 4
        dump = json.dumps(h.events)
        assert "secret-value-0123" not in dump and "token-0123456789" not in dump
    finally:
        h.stop()
    off = OAuthRevocationResponder(OAuthSettings(enabled=True, check_interval=0), h.wallet, h.queue)
    assert off.jobs() == []


def test_a_hung_provider_fills_the_revocation_queue_and_new_ones_fail_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hung = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/revoke"
        h = Harness(tmp_path, {"corp": OAuthProviderSettings(revocation_endpoint=url)}, timeout=3.0, queue_size=10)
        assert h.wallet is not None
        h.wallet.set_provider("corp", creds(("id", "secret-value-0123")))
        for i in range(11):
            h.wallet.add_entry(f"u{i}", "corp", token=f"token-of-u{i}-0123")
        h.wallet.save()
        responder = h.start()
        for i in range(10):
            responder.submit(finding(f"u{i}", f"f-{i}"), {"type": "revoke_tokens", "user": f"u{i}"})
        assert len(responder.pending()) == 10
        responder.submit(finding("u10", "f-10"), {"type": "revoke_tokens", "user": "u10"})
        assert h.statuses("u10") == ["failed"]
        (failed,) = [e for e in h.events if e.get("user.name") == "u10"]
        assert "revocation queue full" in failed["sentinel.revocation"]["reason"]
        assert responder.queue_stats.dropped_total == {"login-new-country": 1}
        assert "new token revocations fail until it drains" in caplog.text
        wait_until(lambda: any("not attempted for u10" in a.title for a in h.channel.sent), timeout=5)
        assert [a.severity for a in h.channel.sent if "u10" in a.title] == ["critical"]
        assert len(responder.pending()) == 10, "the waiting revocations are kept"
        h.stop()
    finally:
        hung.close()
