"""How each kind of identity provider revokes: RFC 7009, Google, Microsoft Entra ID.

An adapter turns one wallet :class:`~sentinel.wallet.Entry` into one outcome — ``"revoked"``
or ``"already_invalid"`` — or raises :class:`RevocationError`, transient (retry later) or
permanent (retrying cannot help: wrong credentials, unknown user, unsupported token).

- ``rfc7009``: POST ``token`` (+ ``token_type_hint``) to the revocation endpoint, with
  ``client_secret_basic`` (HTTP Basic of the form-encoded id and secret, RFC 6749 §2.3.1) or
  ``client_secret_post`` (both in the body).  The endpoint is configured, or read from the
  provider's OpenID metadata (``<issuer>/.well-known/openid-configuration``).  RFC 7009 answers
  200 for unknown tokens too, so with ``introspect = true`` the token is first checked with
  RFC 7662 introspection and an inactive one is reported as already invalid.
- ``google``: POST ``token`` as a form parameter to ``https://oauth2.googleapis.com/revoke``;
  400 ``invalid_token`` means already invalid.
- ``entra``: an app token from ``https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token``
  (client credentials, scope ``https://graph.microsoft.com/.default``), then
  ``POST https://graph.microsoft.com/v1.0/users/{id}/revokeSignInSessions`` without a body,
  which invalidates every refresh token and session of the user (wallet entries of kind
  ``sessions``, whose ``subject`` is the user's object id or userPrincipalName).

Every URL is configurable so tests can point them at a local server.
"""

from __future__ import annotations

import base64
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, ConfigDict, model_validator

from sentinel.responders.http import HTTPClient, HTTPFailure, RefusedURL, Response, check_url
from sentinel.wallet import Entry, ProviderCredentials, redact

Outcome = Literal["revoked", "already_invalid"]

GOOGLE_REVOKE = "https://oauth2.googleapis.com/revoke"
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
GRAPH = "https://graph.microsoft.com/v1.0"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
DISCOVERY_TTL = 3600.0


class OAuthProviderSettings(BaseModel):
    """``[oauth.providers.NAME]``: where and how to revoke at one identity provider.

    Credentials (client id and secret) are not here: they are in the wallet under NAME.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["rfc7009", "google", "entra"] = "rfc7009"
    #: rfc7009: discover endpoints from ``<issuer>/.well-known/openid-configuration``.
    issuer: str | None = None
    #: rfc7009 / google: the revocation endpoint (overrides discovery; google's default otherwise).
    revocation_endpoint: str | None = None
    #: rfc7009: the RFC 7662 introspection endpoint (overrides discovery).
    introspection_endpoint: str | None = None
    #: rfc7009: introspect first, to tell an already invalid token from a revoked one.
    introspect: bool = False
    #: rfc7009: how Sentinel authenticates as the OAuth client.
    auth_method: Literal["client_secret_basic", "client_secret_post", "none"] = "client_secret_basic"
    #: entra: the tenant id or domain.
    tenant: str | None = None
    #: entra: the Microsoft identity platform; app tokens come from {authority}/{tenant}/oauth2/v2.0/token.
    authority: str = ENTRA_AUTHORITY
    #: entra: the Microsoft Graph base URL.
    graph_url: str = GRAPH
    #: A CA bundle to verify this provider's TLS certificate with (default: the system's).
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> OAuthProviderSettings:
        if self.type == "rfc7009" and not (self.issuer or self.revocation_endpoint):
            raise ValueError("an rfc7009 provider needs issuer (for discovery) or revocation_endpoint")
        if self.type == "entra" and not self.tenant:
            raise ValueError("an entra provider needs tenant")
        for url in (self.issuer, self.revocation_endpoint, self.introspection_endpoint, self.authority, self.graph_url):
            if url:
                try:
                    check_url(url, require_tls=True)
                except RefusedURL as exc:
                    raise ValueError(str(exc)) from None
        return self


class RevocationError(Exception):
    """A revocation that did not happen; ``transient`` ones are retried."""

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(redact(message))
        self.transient = transient
        self.retry_after = retry_after


def _classify(resp: Response, what: str) -> RevocationError:
    """An error for a non-success answer: 408/429/5xx are transient, other statuses are not."""
    doc = resp.json()
    code = doc.get("error") if isinstance(doc, dict) else None
    desc = doc.get("error_description") if isinstance(doc, dict) else None
    detail = f"{code}: {desc}" if code and desc else (code or resp.snippet(200) or "no details")
    transient = resp.status in (408, 425, 429) or resp.status >= 500
    return RevocationError(
        f"{what}: HTTP {resp.status} ({redact(str(detail))[:300]})", transient=transient, retry_after=resp.retry_after()
    )


def basic_auth(client_id: str, client_secret: str) -> str:
    """``Authorization`` value for client_secret_basic (RFC 6749 §2.3.1: form-encode, then Base64)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Adapter(ABC):
    """Revokes wallet entries at one provider."""

    def __init__(self, name: str, settings: OAuthProviderSettings, http: HTTPClient) -> None:
        self.name = name
        self.settings = settings
        self.http = http

    @abstractmethod
    def revoke(self, entry: Entry, credentials: ProviderCredentials | None) -> Outcome:
        """Revoke ``entry``; raise :class:`RevocationError` if that did not happen."""

    def check(self, credentials: ProviderCredentials | None) -> None:  # noqa: B027 - optional hook
        """Make sure a revocation could be attempted now, without revoking anything.

        The daemon's periodic wallet check calls it; raises :class:`RevocationError` naming what
        would make a revocation fail (missing credentials, an unreachable discovery document, a
        client secret the provider refuses).  The default checks nothing.
        """

    def _call(self, method: str, url: str, **kwargs: Any) -> Response:
        try:
            if method == "form":
                return self.http.post_form(url, **kwargs)
            return self.http.request(method, url, **kwargs)
        except HTTPFailure as exc:
            raise RevocationError(f"{self.name}: {exc}", transient=not isinstance(exc, RefusedURL)) from None

    def _token(self, entry: Entry) -> str:
        if entry.kind != "token" or entry.token is None:
            raise RevocationError(
                f"{self.name} ({self.settings.type}) revokes tokens, not a user's sessions: "
                "fix the wallet entry or the provider type",
                transient=False,
            )
        return entry.token.reveal()


class RFC7009Adapter(Adapter):
    """Generic OAuth 2.0 token revocation (RFC 7009), endpoints configured or discovered."""

    def __init__(self, name: str, settings: OAuthProviderSettings, http: HTTPClient) -> None:
        super().__init__(name, settings, http)
        self._metadata: dict[str, Any] | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def _discover(self, refresh: bool = False) -> dict[str, Any]:
        """The OpenID metadata, cached for DISCOVERY_TTL (``refresh``: fetched now; a failure keeps the old)."""
        with self._lock:
            fresh = time.monotonic() - self._fetched < DISCOVERY_TTL
            if self._metadata is not None and fresh and not refresh:
                return self._metadata
            assert self.settings.issuer is not None
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            resp = self._call("GET", url)
            doc = resp.json()
            if resp.status != 200 or not isinstance(doc, dict):
                err = _classify(resp, f"{self.name}: OpenID discovery at {url}")
                raise RevocationError(str(err), transient=True, retry_after=err.retry_after)
            self._metadata, self._fetched = doc, time.monotonic()
            return doc

    def check(self, credentials: ProviderCredentials | None) -> None:
        """Client credentials present; discovery document fetched afresh when an endpoint comes from it."""
        self._auth({}, credentials)
        introspect = self.settings.introspect and not self.settings.introspection_endpoint
        if self.settings.issuer and (not self.settings.revocation_endpoint or introspect):
            doc = self._discover(refresh=True)
            if not self.settings.revocation_endpoint and not isinstance(doc.get("revocation_endpoint"), str):
                raise RevocationError(
                    f"{self.name}: the provider's metadata has no revocation_endpoint", transient=False
                )

    def _endpoint(self, configured: str | None, key: str) -> str | None:
        if configured:
            return configured
        if not self.settings.issuer:
            return None
        value = self._discover().get(key)
        return value if isinstance(value, str) else None

    def _auth(self, fields: dict[str, str], credentials: ProviderCredentials | None) -> dict[str, str]:
        """Add client authentication to ``fields``; returns the extra headers."""
        method = self.settings.auth_method
        client_id = credentials.client_id if credentials is not None else None
        secret = credentials.client_secret if credentials is not None else None
        if not client_id:
            raise RevocationError(
                f"{self.name}: no client id in the wallet (sentinel wallet add provider {self.name} --client-id ...)",
                transient=False,
            )
        if method == "none":
            fields["client_id"] = client_id
            return {}
        if secret is None:
            raise RevocationError(f"{self.name}: no client secret in the wallet for {method}", transient=False)
        if method == "client_secret_post":
            fields["client_id"] = client_id
            fields["client_secret"] = secret.reveal()
            return {}
        return {"Authorization": basic_auth(client_id, secret.reveal())}

    def _request(self, url: str, entry: Entry, credentials: ProviderCredentials | None) -> Response:
        fields = {"token": self._token(entry)}
        if entry.hint:
            fields["token_type_hint"] = entry.hint
        headers = self._auth(fields, credentials)
        return self._call("form", url, fields=fields, headers=headers)

    def revoke(self, entry: Entry, credentials: ProviderCredentials | None) -> Outcome:
        self._token(entry)
        if self.settings.introspect:
            endpoint = self._endpoint(self.settings.introspection_endpoint, "introspection_endpoint")
            if endpoint:
                resp = self._request(endpoint, entry, credentials)
                doc = resp.json()
                if resp.status == 200 and isinstance(doc, dict) and doc.get("active") is False:
                    return "already_invalid"
        endpoint = self._endpoint(self.settings.revocation_endpoint, "revocation_endpoint")
        if not endpoint:
            raise RevocationError(
                f"{self.name}: the provider's metadata has no revocation_endpoint (set one in the configuration)",
                transient=False,
            )
        resp = self._request(endpoint, entry, credentials)
        if resp.status == 200:
            return "revoked"
        raise _classify(resp, f"{self.name}: revocation")


class GoogleAdapter(Adapter):
    """Google's token revocation endpoint: the token as a form parameter, no client authentication."""

    def revoke(self, entry: Entry, credentials: ProviderCredentials | None) -> Outcome:
        url = self.settings.revocation_endpoint or GOOGLE_REVOKE
        resp = self._call("form", url, fields={"token": self._token(entry)})
        if resp.status == 200:
            return "revoked"
        doc = resp.json()
        if resp.status == 400 and isinstance(doc, dict) and doc.get("error") == "invalid_token":
            return "already_invalid"
        raise _classify(resp, f"{self.name}: Google revocation")


class EntraAdapter(Adapter):
    """Microsoft Entra ID: revoke all sign-in sessions of a user through Microsoft Graph."""

    def __init__(self, name: str, settings: OAuthProviderSettings, http: HTTPClient) -> None:
        super().__init__(name, settings, http)
        self._app_token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def _token_url(self) -> str:
        tenant = quote(self.settings.tenant or "", safe="")
        return f"{self.settings.authority.rstrip('/')}/{tenant}/oauth2/v2.0/token"

    def _get_app_token(self, credentials: ProviderCredentials | None) -> str:
        with self._lock:
            if self._app_token is not None and time.monotonic() < self._expires:
                return self._app_token
            if credentials is None or not credentials.client_id or credentials.client_secret is None:
                raise RevocationError(
                    f"{self.name}: the wallet holds no client id and secret for this Entra ID application",
                    transient=False,
                )
            resp = self._call(
                "form",
                self._token_url(),
                fields={
                    "client_id": credentials.client_id,
                    "scope": GRAPH_SCOPE,
                    "client_secret": credentials.client_secret.reveal(),
                    "grant_type": "client_credentials",
                },
            )
            doc = resp.json()
            if resp.status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
                raise _classify(resp, f"{self.name}: app token")
            token: str = doc["access_token"]
            from sentinel.wallet import register_secret

            register_secret(token, transient=True)
            lifetime = float(doc.get("expires_in", 3599) or 3599)
            self._app_token, self._expires = token, time.monotonic() + max(0.0, lifetime - 60)
            return token

    def check(self, credentials: ProviderCredentials | None) -> None:
        """The application can get a Graph token (a new one once the cached one expires)."""
        self._get_app_token(credentials)

    def _forget_app_token(self) -> None:
        with self._lock:
            self._app_token = None

    def revoke(self, entry: Entry, credentials: ProviderCredentials | None) -> Outcome:
        if entry.kind != "sessions" or not entry.subject:
            raise RevocationError(
                f"{self.name}: Entra ID revokes a user's sessions: add the account with "
                "`sentinel wallet add sessions ACCOUNT --provider NAME --subject USER_ID`",
                transient=False,
            )
        url = f"{self.settings.graph_url.rstrip('/')}/users/{quote(entry.subject, safe='@')}/revokeSignInSessions"
        for attempt in (1, 2):
            token = self._get_app_token(credentials)
            # No body and no Content-Type, as documented (http.client sends Content-Length: 0).
            resp = self._call("POST", url, headers={"Authorization": f"Bearer {token}"})
            if resp.status == 401 and attempt == 1:
                self._forget_app_token()  # expired or revoked app token: get a new one once
                continue
            break
        if resp.status in (200, 204):
            doc = resp.json()
            if isinstance(doc, dict) and doc.get("value") is False:
                raise RevocationError(f"{self.name}: Graph answered value=false", transient=True)
            return "revoked"
        if resp.status == 404:
            raise RevocationError(f"{self.name}: no user {entry.subject!r} in the tenant", transient=False)
        raise _classify(resp, f"{self.name}: revokeSignInSessions")


ADAPTERS: dict[str, type[Adapter]] = {"rfc7009": RFC7009Adapter, "google": GoogleAdapter, "entra": EntraAdapter}


def build_adapter(name: str, settings: OAuthProviderSettings, timeout: float) -> Adapter:
    """The adapter for ``settings.type``."""
    return ADAPTERS[settings.type](name, settings, HTTPClient(timeout=timeout, ca_file=settings.ca_file))
