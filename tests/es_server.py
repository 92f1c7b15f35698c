"""The real Elasticsearch 8.12.2 the storage tests use, started once per test session.

Installed by ``.ci/install-elasticsearch.sh`` (``make test`` runs it) under /opt/sentinel-tests;
run as the system user ``sentinel-es`` (Elasticsearch refuses root) with its configuration,
data and logs in a fresh temporary directory.  Security is on, as in production: HTTPS with a
certificate from a CA the test makes (so clients must verify against that CA), and the
``elastic`` superuser's password set through the keystore's ``bootstrap.password``.  Missing
installation: skipped, or failed under ``CI=true``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from elasticsearch import Elasticsearch

from tests.oidc.provider import free_port, prerequisite_missing

VERSION = "8.12.2"
ES_HOME = Path("/opt/sentinel-tests") / f"elasticsearch-{VERSION}"
USER = "sentinel-es"
PASSWORD = "elastic-test-Pa55word-0123456789"
START_TIMEOUT = 120.0


def _make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sentinel test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.crt", directory / "http.crt", directory / "http.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass
class ElasticsearchServer:
    """One running node: its URL, the CA to verify it with, and the superuser's credentials."""

    root: Path
    port: int
    ca: Path
    pidfile: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def admin(self) -> Elasticsearch:
        """A client authenticated as the ``elastic`` superuser."""
        return Elasticsearch(self.url, ca_certs=str(self.ca), basic_auth=("elastic", PASSWORD), request_timeout=60)

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ES_PATH_CONF": str(self.root / "config"),
            "ES_JAVA_OPTS": "-Xms512m -Xmx512m",
            "ES_TMPDIR": str(self.root / "tmp"),
        }
        done = subprocess.run(
            ["runuser", "-u", USER, "--", str(ES_HOME / "bin" / "elasticsearch"), "-d", "-p", str(self.pidfile)],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"Elasticsearch did not start ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        client = self.admin()
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client.cluster.health(wait_for_status="yellow", timeout="30s")
                # Short ILM polling, so a test can watch a policy act within seconds.
                client.cluster.put_settings(persistent={"indices.lifecycle.poll_interval": "1s"})
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.5)
        log = self.root / "logs" / "sentinel-test.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise RuntimeError(f"Elasticsearch did not become healthy: {last}\n{tail}")

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL after 60 s); its data stays for :meth:`start`."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def launch() -> ElasticsearchServer:
    """Configure a fresh node in a temporary directory and start it."""
    if not (ES_HOME / "bin" / "elasticsearch").exists():
        prerequisite_missing(f"Elasticsearch is not installed in {ES_HOME} (run .ci/install-elasticsearch.sh)")
    if os.geteuid() != 0:
        prerequisite_missing("starting Elasticsearch as its own user needs root")
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        prerequisite_missing(f"the system user {USER} is missing (run .ci/install-elasticsearch.sh)")
        raise
    root = Path(tempfile.mkdtemp(prefix="sentinel-es-"))
    config = root / "config"
    shutil.copytree(ES_HOME / "config", config)
    for sub in ("data", "logs", "tmp", "config/certs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ca, _cert, _key = _make_certs(config / "certs")
    port = free_port()
    (config / "elasticsearch.yml").write_text(
        f"""cluster.name: sentinel-test
node.name: sentinel-test
network.host: 127.0.0.1
http.port: {port}
transport.port: {free_port()}
discovery.type: single-node
path.data: {root / "data"}
path.logs: {root / "logs"}
xpack.ml.enabled: false
ingest.geoip.downloader.enabled: false
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
xpack.security.enabled: true
xpack.security.http.ssl.enabled: true
xpack.security.http.ssl.certificate: certs/http.crt
xpack.security.http.ssl.key: certs/http.key
xpack.security.http.ssl.certificate_authorities: certs/ca.crt
xpack.security.transport.ssl.enabled: false
"""
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ES_PATH_CONF": str(config)}
    keystore = str(ES_HOME / "bin" / "elasticsearch-keystore")
    subprocess.run([keystore, "create"], env=env, check=True, capture_output=True, timeout=120)
    subprocess.run(
        [keystore, "add", "-x", "bootstrap.password"],
        env=env,
        input=PASSWORD.encode(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    for path in [root, *root.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    server = ElasticsearchServer(root, port, ca, root / "es.pid")
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    return server
