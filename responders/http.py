"""A small HTTP client for responders (OAuth revocation, webhooks), on the standard library.

Why ``urllib`` rather than a third-party client: responders send a handful of small form or
JSON POSTs from their own threads, so pooling and async buy nothing, and what matters is
control over where credentials go.  This wrapper never follows redirects (a redirect must not
carry a client secret or a token to another URL), refuses plain ``http`` for credentialed
requests except to loopback, verifies TLS with the system CAs (or a given CA file), bounds
every response it reads, and turns every failure into :class:`HTTPFailure` with a message
that has passed through :func:`sentinel.wallet.redact`.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sentinel import __version__
from sentinel.wallet import redact

USER_AGENT: Final = f"sentinel/{__version__}"
MAX_BODY: Final = 1 << 20


class HTTPFailure(Exception):
    """The request did not get an HTTP answer (network, TLS, timeout) or was refused locally."""


class RefusedURL(HTTPFailure):
    """The URL itself is not acceptable (scheme, plain http with credentials): a configuration error."""


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer of any status."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def retry_after(self) -> float | None:
        """Seconds from a ``Retry-After: N`` header, if any."""
        value = self.headers.get("Retry-After")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None

    def snippet(self, limit: int = 300) -> str:
        """The start of the body as text, redacted, for messages."""
        return redact(self.body[:limit].decode("utf-8", errors="replace")).strip()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, require_tls: bool) -> None:
    """Refuse URLs that are not http(s), and plain http for credentials unless to loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedURL(f"not an http(s) URL: {redact(url)!r}")
    if require_tls and parts.scheme != "https" and not is_loopback(url):
        raise RefusedURL(f"refusing to send credentials over plain http to {parts.hostname} (use https)")


class HTTPClient:
    """POSTs and GETs with a timeout, TLS verification and no redirects."""

    def __init__(self, timeout: float = 10.0, ca_file: Path | None = None, require_tls: bool = True) -> None:
        self.timeout = timeout
        self.require_tls = require_tls
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        self._opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))

    def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> Response:
        """Send one request; any HTTP status is a :class:`Response`, anything else :class:`HTTPFailure`."""
        check_url(url, require_tls=self.require_tls)
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        req = urllib.request.Request(url, data=body, headers=all_headers, method=method)  # noqa: S310 - checked above
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.headers, resp.read(MAX_BODY))
        except urllib.error.HTTPError as exc:
            try:
                data = exc.read(MAX_BODY)
            except OSError:
                data = b""
            return Response(exc.code, exc.headers, data)
        except urllib.error.URLError as exc:
            raise HTTPFailure(redact(f"{urlsplit(url).netloc}: {exc.reason}")) from None
        except (OSError, ValueError) as exc:  # timeouts, resets, malformed answers
            raise HTTPFailure(redact(f"{urlsplit(url).netloc}: {exc or type(exc).__name__}")) from None

    def post_form(self, url: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Response:
        from urllib.parse import urlencode

        return self.request(
            "POST",
            url,
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            body=urlencode(fields).encode(),
        )

    def post_json(self, url: str, doc: Any, headers: dict[str, str] | None = None) -> Response:
        return self.request(
            "POST",
            url,
            headers={"Content-Type": "application/json", **(headers or {})},
            body=json.dumps(doc, ensure_ascii=False).encode(),
        )

    def get_json(self, url: str) -> Response:
        return self.request("GET", url)
