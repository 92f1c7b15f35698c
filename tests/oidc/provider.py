"""The real OpenID provider for the revocation tests: npm ``oidc-provider``, started once per session.

``package.json`` pins the version and ``package-lock.json`` every dependency; they and
``server.mjs`` are copied into a cache directory outside the work tree
(``$SENTINEL_TEST_CACHE``, else ``~/.cache/sentinel-tests``) keyed by their hash, and installed
there with ``npm ci`` on first use, under a file lock (two test runs may share the cache).
Without node/npm, or when the install fails, the tests are skipped — except under ``CI=true``,
where a missing prerequisite fails them.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import hashlib
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest

HERE = Path(__file__).resolve().parent
FILES = ("package.json", "package-lock.json", "server.mjs")

#: Confidential clients of the test provider (secrets with characters that need form-encoding).
BASIC_CLIENT = ("sentinel-basic", "b4sic:secret/with+special&chars=%and-more-entropy-0123456789")
POST_CLIENT = ("sentinel-post", "p0st:secret/with+special&chars=%and-more-entropy-9876543210")
OTHER_CLIENT = ("other-app", "other-app-secret-that-is-long-enough-0123456789")


def prerequisite_missing(reason: str) -> None:
    """Fail under CI (the suite must run there in full), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"test prerequisite missing in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cache_root() -> Path:
    base = os.environ.get("SENTINEL_TEST_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sentinel-tests"


def install(npm: str) -> Path:
    """The directory holding server.mjs and its installed node_modules (installed if needed)."""
    digest = hashlib.sha256(b"".join((HERE / f).read_bytes() for f in FILES)).hexdigest()[:16]
    root = cache_root()
    target = root / f"oidc-provider-{digest}"
    marker = target / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".oidc-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        tmp = root / f".oidc-provider-{digest}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in FILES:
            shutil.copy2(HERE / name, tmp / name)
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            prerequisite_missing(f"npm ci of oidc-provider failed: {proc.stderr.strip()[-500:]}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


@dataclass
class OIDCProvider:
    """A running oidc-provider: mint tokens with client credentials, introspect them."""

    issuer: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def _post(self, path: str, fields: dict[str, str], client: tuple[str, str]) -> dict[str, Any]:
        auth = base64.b64encode(f"{quote_plus(client[0])}:{quote_plus(client[1])}".encode()).decode()
        req = urllib.request.Request(
            self.issuer + path,
            data=urlencode(fields).encode(),
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc

    def mint(self, client: tuple[str, str] = BASIC_CLIENT) -> str:
        """A fresh access token for ``client`` (client_credentials grant)."""
        token: str = self._post("/token", {"grant_type": "client_credentials"}, client)["access_token"]
        return token

    def introspect(self, token: str, client: tuple[str, str] = BASIC_CLIENT) -> dict[str, Any]:
        """RFC 7662 introspection of ``token``."""
        return self._post("/token/introspection", {"token": token}, client)

    def active(self, token: str, client: tuple[str, str] = BASIC_CLIENT) -> bool:
        return bool(self.introspect(token, client).get("active"))


_provider: OIDCProvider | None = None


def _stop(provider: OIDCProvider) -> None:
    if provider.proc.poll() is None:
        if provider.proc.stdin is not None:
            provider.proc.stdin.close()  # the server exits when its stdin closes
        try:
            provider.proc.wait(5)
        except subprocess.TimeoutExpired:
            provider.proc.kill()
            provider.proc.wait(5)
    provider.log_path.unlink(missing_ok=True)


def shared_provider() -> OIDCProvider:
    """The session's provider, started on first use on 127.0.0.1 and a free port."""
    global _provider
    if _provider is not None and _provider.proc.poll() is None:
        return _provider
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        prerequisite_missing("node and npm are needed for the oidc-provider tests (Debian: nodejs npm)")
        raise AssertionError  # unreachable: prerequisite_missing raises
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)", version)
    if not match or int(match.group(1)) < 20:
        prerequisite_missing(f"oidc-provider 9 needs Node.js 20 or later (found {version or 'none'})")
    directory = install(npm)
    port = free_port()
    clients = [
        {"client_id": cid, "client_secret": secret, "token_endpoint_auth_method": method}
        for (cid, secret), method in (
            (BASIC_CLIENT, "client_secret_basic"),
            (POST_CLIENT, "client_secret_post"),
            (OTHER_CLIENT, "client_secret_basic"),
        )
    ]
    fd, name = tempfile.mkstemp(prefix="sentinel-oidc-provider-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as err:
        proc = subprocess.Popen(
            [node, "server.mjs", str(port), json.dumps(clients)],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    line = b""
    while b"listening on" not in line:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"oidc-provider did not start: {log_path.read_text(errors='replace')[-2000:]}")
        if sel.select(0.2):
            line += proc.stdout.readline()
    sel.close()
    _provider = OIDCProvider(f"http://127.0.0.1:{port}", proc, log_path)
    atexit.register(_stop, _provider)
    return _provider


if __name__ == "__main__":  # `python -m tests.oidc.provider`: install ahead of the tests (CI warm-up)
    import sys

    npm_path = shutil.which("npm")
    if npm_path is None:
        sys.exit("npm not found")
    print(install(npm_path))
