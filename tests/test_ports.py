"""The listening-port audit, with real sockets this test opens (psutil sees them as any other).

Other listeners on the machine (and other tests' sockets) come and go: every assertion is
about this test's own socket addresses, found by (transport, address, port).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from pydantic import ValidationError

from sentinel.collectors.sources.base import Batch
from sentinel.collectors.sources.ports import (
    CLOSED,
    OPENED,
    PortAuditor,
    PortAuditSettings,
    PortAuditSource,
    list_listeners,
    parse_allow_entry,
)
from sentinel.config import Settings
from sentinel.daemon import Daemon
from sentinel.engine.engine import Engine
from sentinel.engine.rule import load_rules
from sentinel.event import Event, event_time
from sentinel.store import SQLiteStore
from tests.conftest import require_root, wait_until

ME = psutil.Process()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback on this machine")


class Sockets:
    """Sockets a test opens (TCP ones listening), closed at the end of the test."""

    def __init__(self) -> None:
        self.open: list[socket.socket] = []

    def tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[socket.socket, int]:
        return self._bind(socket.SOCK_STREAM, host, port)

    def udp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[socket.socket, int]:
        return self._bind(socket.SOCK_DGRAM, host, port)

    def _bind(self, kind: int, host: str, port: int) -> tuple[socket.socket, int]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, kind)
        self.open.append(s)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        return s, int(s.getsockname()[1])

    def close_all(self) -> None:
        for s in self.open:
            s.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    held = Sockets()
    try:
        yield held
    finally:
        held.close_all()


def mine(events: list[Event], transport: str, ip: str, port: int) -> list[Event]:
    """The events about one socket address."""
    return [
        e
        for e in events
        if e["network.transport"] == transport and e["destination.ip"] == ip and e["destination.port"] == port
    ]


def one(events: list[Event], transport: str, ip: str, port: int) -> Event:
    found = mine(events, transport, ip, port)
    assert len(found) == 1, found
    return found[0]


# -- the allowlist ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "transport", "ip", "port", "allowed"),
    [
        ("tcp/22", "tcp", "0.0.0.0", 22, True),
        ("tcp/22", "tcp", "::", 22, True),
        ("tcp/22", "tcp", "192.0.2.5", 22, True),
        ("tcp/22", "udp", "0.0.0.0", 22, False),
        ("tcp/22", "tcp", "0.0.0.0", 2222, False),
        ("UDP/53", "udp", "127.0.0.53", 53, True),
        ("tcp/8000-8100", "tcp", "0.0.0.0", 8100, True),
        ("tcp/8000-8100", "tcp", "0.0.0.0", 8101, False),
        # Bound to one address: only that address; the wildcard exposes more, so it is not covered.
        ("tcp/8080@127.0.0.1", "tcp", "127.0.0.1", 8080, True),
        ("tcp/8080@127.0.0.1", "tcp", "0.0.0.0", 8080, False),
        ("tcp/8080@127.0.0.1", "tcp", "::1", 8080, False),
        ("tcp/8080@127.0.0.1", "tcp", "::ffff:127.0.0.1", 8080, True),
        ("tcp/*@127.0.0.1", "tcp", "127.0.0.1", 5432, True),
        ("tcp/*@127.0.0.0/8", "tcp", "127.0.0.53", 53, True),
        ("tcp/*@[::1]", "tcp", "::1", 631, True),
        ("tcp/*@::1", "tcp", "127.0.0.1", 631, False),
        # The wildcard address as an entry stands for the whole family.
        ("tcp/22@0.0.0.0", "tcp", "0.0.0.0", 22, True),
        ("tcp/22@0.0.0.0", "tcp", "192.0.2.5", 22, True),
        ("tcp/22@0.0.0.0", "tcp", "::", 22, False),
        ("tcp/22@::", "tcp", "::", 22, True),
        ("tcp/22@192.0.2.0/24", "tcp", "0.0.0.0", 22, False),
        ("udp/*@*", "udp", "::", 5353, True),
    ],
)
def test_allow_entries(entry: str, transport: str, ip: str, port: int, allowed: bool) -> None:
    assert parse_allow_entry(entry).allows(transport, ip, port) is allowed


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("22", "expected PROTOCOL/PORT[@ADDRESS]"),
        ("icmp/8", "protocol must be 'tcp' or 'udp'"),
        ("tcp/99999", "port 99999 is out of range"),
        ("tcp/0", "port 0 is out of range"),
        ("tcp/ssh", "port must be a number"),
        ("tcp/9000-8000", "range 9000-8000 is empty"),
        ("tcp/22@localhost", "'localhost' is not an IP address or network"),
        ("tcp/22@", "expected PROTOCOL/PORT[@ADDRESS]"),
    ],
)
def test_invalid_allow_entries(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_allow_entry(entry)


def test_settings() -> None:
    default = PortAuditSettings()
    assert default.enabled is True
    assert default.interval == 30.0
    assert default.allowed == ["tcp/22", "tcp/443"]
    assert PortAuditSettings.model_validate({"interval": "1m"}).interval == 60.0
    with pytest.raises(ValidationError, match="'tcp/70000': port 70000 is out of range") as info:
        PortAuditSettings(allowed=["tcp/22", "tcp/70000", "sctp/1"])
    assert "'sctp/1': protocol must be" in str(info.value)  # every bad entry is named at once
    with pytest.raises(ValidationError):
        PortAuditSettings(interval=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PortAuditSettings.model_validate({"allow": ["tcp/22"]})


# -- scans of real sockets -------------------------------------------------------------------


def test_scan_reports_opened_then_closed(sockets: Sockets) -> None:
    auditor = PortAuditor(PortAuditSettings(), hostname="test-host")
    tcp, tcp_port = sockets.tcp("127.0.0.1")
    _, udp_port = sockets.udp("127.0.0.1")
    first = auditor.scan()

    for transport, port in (("tcp", tcp_port), ("udp", udp_port)):
        e = one(first, transport, "127.0.0.1", port)
        assert e["event.kind"] == "event"
        assert e["event.category"] == ["network"]
        assert e["event.type"] == ["start"]
        assert e["event.action"] == OPENED
        assert e["event.dataset"] == "sentinel.ports"
        assert e["network.type"] == "ipv4"
        assert e["host.hostname"] == "test-host"
        assert e["process.pid"] == os.getpid()
        assert e["process.name"] == ME.name()
        assert e["process.executable"] == ME.exe()
        assert e["process.command_line"] == " ".join(ME.cmdline())[:4096]
        assert e["user.id"] == str(os.getuid())
        assert e["user.name"] == ME.username()
        assert e["sentinel.port.allowed"] is False
        assert "sentinel.port.allowed_by" not in e
        assert e["sentinel.port.scope"] == "loopback"
        assert f"{transport} port {port} on 127.0.0.1" in e["message"]
        assert "not in the allowlist" in e["message"]
        event_time(e["@timestamp"])  # a stamp the engine reads
        orjson.dumps(e)  # and the store can write

    # Nothing changed: nothing reported.
    second = auditor.scan()
    assert not mine(second, "tcp", "127.0.0.1", tcp_port)
    assert not mine(second, "udp", "127.0.0.1", udp_port)

    tcp.close()
    third = auditor.scan()
    closed = one(third, "tcp", "127.0.0.1", tcp_port)
    assert closed["event.action"] == CLOSED
    assert closed["event.type"] == ["end"]
    assert closed["process.pid"] == os.getpid()  # who held it, from the snapshot
    assert closed["event.start"] == one(first, "tcp", "127.0.0.1", tcp_port)["@timestamp"]
    assert closed["event.end"] == closed["@timestamp"]
    assert closed["event.id"] != one(first, "tcp", "127.0.0.1", tcp_port)["event.id"]
    assert "Listening port closed" in closed["message"]
    assert not mine(third, "udp", "127.0.0.1", udp_port)  # still open


@needs_ipv6
def test_same_port_on_both_families_is_reported_once_each(sockets: Sockets) -> None:
    for _ in range(20):  # find a port free on both loopbacks
        _, port = sockets.tcp("127.0.0.1")
        try:
            sockets.tcp("::1", port)
            break
        except OSError:
            continue
    else:
        pytest.skip("no port free on both 127.0.0.1 and ::1")
    events = PortAuditor().scan()
    v4 = one(events, "tcp", "127.0.0.1", port)
    v6 = one(events, "tcp", "::1", port)
    assert (v4["network.type"], v6["network.type"]) == ("ipv4", "ipv6")
    assert v6["process.pid"] == os.getpid()
    assert v6["sentinel.port.scope"] == "loopback"


def test_a_socket_shared_by_processes_is_one_listener(sockets: Sockets) -> None:
    s, port = sockets.tcp("127.0.0.1")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[s.fileno()])
    try:
        wait_until(
            lambda: child.pid in {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
        )
        e = one(PortAuditor().scan(), "tcp", "127.0.0.1", port)
        assert e["process.pid"] == os.getpid()  # the parent, not whichever holder psutil names
    finally:
        child.kill()
        child.wait()


def test_wildcard_bind_and_allowlisted_ports(sockets: Sockets) -> None:
    _, any_port = sockets.udp("0.0.0.0")
    _, local_port = sockets.tcp("127.0.0.1")
    settings = PortAuditSettings(allowed=["tcp/22", f"tcp/{local_port}@127.0.0.1", f"udp/{any_port}"])
    events = PortAuditor(settings).scan()
    wild = one(events, "udp", "0.0.0.0", any_port)
    assert wild["sentinel.port.scope"] == "any"
    assert wild["sentinel.port.allowed"] is True
    assert wild["sentinel.port.allowed_by"] == f"udp/{any_port}"
    local = one(events, "tcp", "127.0.0.1", local_port)
    assert local["sentinel.port.allowed"] is True
    assert f"allowed by 'tcp/{local_port}@127.0.0.1'" in local["message"]
    # The rules ignore allowed ports.
    engine = Engine(load_rules())
    assert [f for e in (wild, local) for f in engine.process(e)] == []


def test_the_rules_fire_on_real_events_and_resolve(sockets: Sockets) -> None:
    engine = Engine(load_rules())
    auditor = PortAuditor()
    s, port = sockets.tcp("127.0.0.1")
    opened = one(auditor.scan(), "tcp", "127.0.0.1", port)
    findings = engine.process(opened)
    assert len(findings) == 1
    f = findings[0]
    assert f["rule.id"] == "unexpected-port"
    assert f["event.kind"] == "alert"
    assert f["sentinel.severity"] == "high"
    assert f["threat.technique.id"] == ["T1571", "T1205.001"]
    assert "PCI-DSS-4.0 1.2.5" in f["sentinel.compliance"]
    assert f["sentinel.group.network.transport"] == "tcp"
    assert f["sentinel.group.destination.ip"] == "127.0.0.1"
    assert f["sentinel.group.destination.port"] == port
    assert f["sentinel.trigger_event_ids"] == [opened["event.id"]]
    assert f["sentinel.actions"] == [{"type": "alert", "severity": "high"}]
    assert f"tcp, 127.0.0.1, {port}" in f["message"]

    s.close()
    closed = one(auditor.scan(), "tcp", "127.0.0.1", port)
    (resolved,) = engine.process(closed)
    assert resolved["rule.id"] == "unexpected-port-resolved"
    assert resolved["sentinel.severity"] == "low"
    assert resolved["sentinel.actions"] == [{"type": "alert", "severity": "low"}]
    assert "resolved" in resolved["message"]
    assert resolved["sentinel.group.destination.port"] == port


def test_process_details_that_cannot_be_read_are_omitted(sockets: Sockets, monkeypatch: pytest.MonkeyPatch) -> None:
    _, port = sockets.tcp("127.0.0.1")

    class Hidden(psutil.Process):
        def exe(self) -> str:
            raise psutil.AccessDenied(self.pid)

        def cmdline(self) -> list[str]:
            raise psutil.AccessDenied(self.pid)

        def username(self) -> str:
            raise KeyError("no passwd entry")

    monkeypatch.setattr(psutil, "Process", Hidden)
    e = one(PortAuditor().scan(), "tcp", "127.0.0.1", port)
    assert e["process.pid"] == os.getpid()
    assert e["process.name"] == ME.name()
    assert e["user.id"] == str(os.getuid())
    for name in ("process.executable", "process.command_line", "user.name"):
        assert name not in e

    def gone(pid: int) -> psutil.Process:
        raise psutil.NoSuchProcess(pid)

    monkeypatch.setattr(psutil, "Process", gone)
    _, port2 = sockets.tcp("127.0.0.1")
    e = one(PortAuditor().scan(), "tcp", "127.0.0.1", port2)
    assert e["process.pid"] == os.getpid()
    assert not any(k.startswith(("process.name", "process.exe", "user.")) for k in e)
    assert f"tcp port {port2} on 127.0.0.1 (ipv4), ? (pid {os.getpid()})" in e["message"]


@pytest.mark.root
def test_audit_without_privileges_sees_ports_but_not_their_owner(sockets: Sockets) -> None:
    """Run as nobody, the audit still lists root's socket, only without pid or process."""
    require_root("to drop to another user")
    _, port = sockets.tcp("127.0.0.1")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, audit, report through the pipe
        code = 1
        try:
            os.close(read_end)
            sockets.close_all()  # the fork inherited them: only the parent (root) holds the socket now
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            found = [vars_of(listener) for listener in list_listeners([]) if listener.port == port]
            os.write(write_end, json.dumps(found).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (seen,) = json.loads(data)
    assert (seen["transport"], seen["ip"], seen["port"]) == ("tcp", "127.0.0.1", port)
    assert seen["pid"] is None
    assert seen["process_name"] is None and seen["executable"] is None


def vars_of(listener: Any) -> dict[str, Any]:
    return {name: getattr(listener, name) for name in listener.__slots__}


def test_hostile_process_names_stay_data(sockets: Sockets) -> None:
    """A process may name itself anything (prctl PR_SET_NAME): a newline, invalid UTF-8."""
    code = (
        "import ctypes, socket, sys, time\n"
        "ctypes.CDLL(None).prctl(15, b'ev\\xff\\nil', 0, 0, 0)\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        e = one(PortAuditor().scan(), "tcp", "127.0.0.1", port)
        assert e["process.pid"] == child.pid
        assert e["process.name"] == "ev\\xff\nil"  # undecodable byte escaped; valid UTF-8
        orjson.dumps(e)
        assert "\n" not in e["message"]
        assert "ev\\xff\\x0ail" in e["message"]
        out = run_ports_command(["tcp/*", "udp/*"], as_json=False)
        assert out.returncode == 0
        (row,) = [line for line in out.stdout.splitlines() if line.startswith(f"{port} ")]
        assert "ev\\xff\\x0ail" in row
    finally:
        child.kill()
        child.wait()


# -- the source ------------------------------------------------------------------------------


def test_source_emits_within_its_interval(sockets: Sockets) -> None:
    source = PortAuditSource("ports", PortAuditSettings(interval=0.2), hostname="test-host")
    batches: list[Batch] = []
    lock = threading.Lock()

    def emit(batch: Batch) -> None:
        with lock:
            batches.append(batch)

    def events() -> list[Event]:
        with lock:
            return [e for b in batches for e in b.events]

    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(emit, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: source.auditor.scans >= 1, timeout=5)
        _, port = sockets.tcp("127.0.0.1")
        opened_at = time.monotonic()
        wait_until(lambda: bool(mine(events(), "tcp", "127.0.0.1", port)), timeout=5)
        assert time.monotonic() - opened_at < 0.2 + 1.0  # one interval, plus a generous margin
        e = one(events(), "tcp", "127.0.0.1", port)
        assert e["event.action"] == OPENED
        assert e["host.hostname"] == "test-host"
        assert all(b.source == "ports" and b.checkpoint == {} and b.events for b in batches)
        assert source.status.stats.events == len(events())
        assert source.status.last_error is None
    finally:
        stop.set()
        thread.join(2)
    assert not thread.is_alive()


def test_the_daemon_runs_the_audit_as_a_scheduled_job(sockets: Sockets, tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "daemon": {"state_dir": tmp_path, "hostname": "test-host"},
            "ports": {"interval": 0.2},
            "metrics": {"enabled": False},
        }
    )
    store = SQLiteStore(tmp_path / "events.db")
    daemon = Daemon(settings, store)
    daemon.build_sources()
    (source,) = daemon.sources
    assert isinstance(source, PortAuditSource)
    daemon.start()
    try:
        assert not any(t.name == "source-ports" for t in threading.enumerate()), "no thread of its own"
        _, port = sockets.tcp("127.0.0.1")
        wait_until(lambda: bool(mine(list(store.iter_events()), "tcp", "127.0.0.1", port)), timeout=5)
        (job,) = [j for j in daemon.scheduler.status() if j["id"] == "source:ports"]
        assert job["interval"] == 0.2 and job["last_outcome"] in ("ok", "running") and job["runs"] >= 1
        e = one(list(store.iter_events()), "tcp", "127.0.0.1", port)
        assert e["event.action"] == OPENED and e["host.hostname"] == "test-host"
        assert source.status.stats.events >= 1 and source.status.last_error is None
    finally:
        daemon.stop()


# -- sentinel ports --------------------------------------------------------------------------


def run_ports_command(allowed: list[str] | None, as_json: bool) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys\nfrom sentinel.ports_cli import ports_command\nsys.exit(ports_command({allowed!r}, {as_json!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_ports_command_json_flags_unexpected_ports(sockets: Sockets) -> None:
    _, tcp_port = sockets.tcp("127.0.0.1")
    _, udp_port = sockets.udp("127.0.0.1")
    out = run_ports_command(["tcp/22", f"udp/{udp_port}"], as_json=True)
    assert out.returncode == 1, out.stderr  # our TCP port is not allowed
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    tcp = one(docs, "tcp", "127.0.0.1", tcp_port)
    assert tcp["event.kind"] == "state"
    assert tcp["process.pid"] == os.getpid()
    assert tcp["process.name"] == ME.name()
    assert tcp["process.executable"] == ME.exe()
    assert tcp["sentinel.port.allowed"] is False
    udp = one(docs, "udp", "127.0.0.1", udp_port)
    assert udp["sentinel.port.allowed"] is True
    assert udp["sentinel.port.allowed_by"] == f"udp/{udp_port}"


def test_ports_command_table_and_exit_status(sockets: Sockets) -> None:
    _, port = sockets.tcp("127.0.0.1")
    out = run_ports_command(["tcp/*", "udp/*"], as_json=False)  # everything allowed
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PORT", "PROTO", "ADDRESS", "PID", "PROCESS", "USER", "EXECUTABLE", "ALLOWED"]
    (row,) = [line for line in lines if line.startswith(f"{port} ")]
    assert row.split()[:4] == [str(port), "tcp", "127.0.0.1", str(os.getpid())]
    assert ME.exe() in row
    assert row.endswith("yes (tcp/*)")
    assert lines[-1].endswith(", 0 not allowed")

    out = run_ports_command([f"udp/{port}"], as_json=False)
    assert out.returncode == 1
    (row,) = [line for line in out.stdout.splitlines() if line.startswith(f"{port} ")]
    assert row.endswith("NO")


def test_ports_command_rejects_a_bad_allowlist() -> None:
    out = run_ports_command(["tcp/http"], as_json=False)
    assert out.returncode == 2
    assert "invalid allowlist entry 'tcp/http': port must be a number" in out.stderr
    assert out.stdout == ""
