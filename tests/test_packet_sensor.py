"""The packet sensor end to end: real SYNs between two network namespaces, real rules, real bans.

The defender namespace runs :func:`sensor_main` (the sensor and the engine with the shipped rules,
findings printed as JSON lines) with one real listening port; the attacker namespace connects to
many closed ports (IPv4, IPv6), or blasts crafted SYNs faster than capture keeps up with, and the
port-scan rule must ban the attacker's address.  A normal client of the open port must trigger
nothing, and without CAP_NET_RAW the sensor must say so once and let the process run on.

Needs root (namespaces, packet sockets), scapy and libpcap: skipped without them, except under
``CI=true`` where a missing prerequisite fails.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sentinel.collectors.sources import packets
from sentinel.collectors.sources.packets import (
    DEFAULT_BPF_FILTER,
    PacketSensorSettings,
    _Clock,
    _has_cap_net_raw,
    compile_bpf,
    listening_sockets,
)
from sentinel.event import event_time
from tests.netns import NetnsPair, Side, require_netns

ROOT = Path(__file__).resolve().parents[1]
OPEN_PORT = 8080
SCAN_PORTS = [p for p in range(1, 201) if p != OPEN_PORT]


# -- the defender: runs in its namespace as ``python -c 'from tests.test_packet_sensor import …'`` --


def sensor_main() -> None:
    """Listen on OPEN_PORT, run the sensor and the engine until stdin closes; print JSON lines.

    Lines: ``{"ready": …, "disabled": reason|null}`` once capturing (or known disabled), then one
    ``{"finding": …}`` per finding, and at the end ``{"summary": …}`` with what the sensor saw.
    """
    from sentinel.collectors.sources.base import Batch
    from sentinel.collectors.sources.packets import PacketSensor
    from sentinel.engine.engine import Engine, EngineOptions
    from sentinel.engine.rule import load_rules

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack: IPv4 too
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", OPEN_PORT))
    server.listen(128)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    settings = PacketSensorSettings(enabled=True, **options)
    sensor = PacketSensor("packets", settings, hostname="defender")
    engine = Engine(load_rules(), EngineOptions())  # own addresses: the defender's, discovered
    batches: queue.Queue[Batch] = queue.Queue()
    stop = threading.Event()
    capture = threading.Thread(target=sensor.run, args=(batches.put, stop), daemon=True)
    capture.start()
    if not sensor.started.wait(10):
        raise SystemExit("sensor did not start")
    out({"ready": True, "disabled": sensor.status.last_error})

    def wait_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    ports: dict[str, set[int]] = {}
    actions: dict[str, int] = {}
    while True:
        try:
            batch = batches.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set() and not capture.is_alive():
                break
            continue
        for event in batch.events:
            ports.setdefault(event["source.ip"], set()).add(event["destination.port"])
            actions[event["event.action"]] = actions.get(event["event.action"], 0) + 1
            for finding in engine.process(event):
                out({"finding": finding})
    capture.join(5)
    out(
        {
            "summary": {
                "ports": {ip: sorted(p) for ip, p in ports.items()},
                "actions": actions,
                "sensor": sensor.packet_stats.as_dict(),
            }
        }
    )


# -- the test side -----------------------------------------------------------------------------------


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI prerequisite missing: {reason} (run .ci/install-deps.sh and pip install -e '.[test]')")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def net() -> Iterator[NetnsPair]:
    """One attacker/defender pair for the module (created in ~0.1 s, always removed)."""
    require_netns()
    try:
        import scapy.arch.common
        import scapy.libs.winpcapy  # noqa: F401
    except (ImportError, OSError) as exc:
        _missing(f"scapy with libpcap: {exc}")
    with NetnsPair() as pair:
        yield pair


class Defender:
    """The :func:`sensor_main` child in the defender namespace."""

    def __init__(
        self, net: NetnsPair, *, prefix: list[str] | None = None, options: dict[str, Any] | None = None
    ) -> None:
        code = "from tests.test_packet_sensor import sensor_main; sensor_main()"
        args = [*(prefix or []), sys.executable, "-c", code, json.dumps(options or {})]
        pipe = subprocess.PIPE
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = net.popen(net.defender, args, cwd=ROOT, stdin=pipe, stdout=pipe, stderr=pipe, text=True, env=env)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.next(15)
        assert "ready" in self.ready, self.ready

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"defender printed nothing within {timeout}s") from None
        if item is None:
            raise AssertionError(f"defender exited: {self.stderr()}")
        return item

    def finding(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next finding (the sensor batches every 100 ms: it comes quickly)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.next(max(0.01, deadline - time.monotonic()))
            if "finding" in item:
                finding: dict[str, Any] = item["finding"]
                return finding

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
        """Close stdin; (findings not yet read, the summary, stderr)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0, self.stderr()
        items = []
        while (item := self.lines.get(timeout=5)) is not None:
            items.append(item)
        findings = [i["finding"] for i in items if "finding" in i]
        summary = next(i["summary"] for i in items if "summary" in i)
        return findings, summary, self.stderr()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return str(self.proc.stderr.read())


def connect_many(net: NetnsPair, host: str, ports: list[int], repeat: int = 1) -> None:
    """Real TCP connects from the attacker namespace (closed ports answer RST at once)."""
    code = (
        "import socket, sys\n"
        "host, ports, repeat = sys.argv[1], [int(p) for p in sys.argv[2].split(',')], int(sys.argv[3])\n"
        "family = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
        "for _ in range(repeat):\n"
        "    for port in ports:\n"
        "        s = socket.socket(family, socket.SOCK_STREAM)\n"
        "        s.settimeout(1)\n"
        "        s.connect_ex((host, port))\n"
        "        s.close()\n"
    )
    net.run(net.attacker, [sys.executable, "-c", code, host, ",".join(map(str, ports)), str(repeat)])


def blast_syns(net: NetnsPair, src: str, dst: str, count: int) -> float:
    """``count`` crafted SYNs to ports 1… at full speed from a raw socket; the seconds it took."""
    code = r"""
import socket, struct, sys, time
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
def checksum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
packets = []
for i in range(count):
    port = 1 + i % 65000
    if port == 8080:
        port = 65001
    hdr = struct.pack("!HHIIBBHHH", 40000 + i % 20000, port, i, 0, 5 << 4, 0x02, 1024, 0, 0)
    packets.append(hdr[:16] + struct.pack("!H", checksum(pseudo + hdr)) + hdr[18:])
start = time.perf_counter()
send = s.sendto
for p in packets:
    send(p, (dst, 0))
print(time.perf_counter() - start)
"""
    proc = net.run(net.attacker, [sys.executable, "-c", code, src, dst, str(count)])
    return float(proc.stdout)


def network(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(address, strict=False)


def assert_ban(finding: dict[str, Any], attacker: str) -> None:
    assert finding["rule.id"] == "port-scan"
    assert finding["threat.technique.id"] == ["T1046"]
    bans = [a for a in finding["sentinel.actions"] if a["type"] == "ban"]
    assert len(bans) == 1, finding
    assert ipaddress.ip_address(attacker) in network(bans[0]["target"]), bans
    assert not finding.get("sentinel.suppressed"), finding


# -- without root: the parts that need no packets -----------------------------------------------------------


def test_settings_are_strict_and_off_by_default() -> None:
    settings = PacketSensorSettings()
    assert not settings.enabled and settings.interface is None and settings.closed_ports_only
    assert PacketSensorSettings.model_validate({"listening_refresh": "10s"}).listening_refresh == 10.0
    with pytest.raises(ValidationError, match="extra"):
        PacketSensorSettings(enabeld=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        PacketSensorSettings(listening_refresh=0)


def test_listening_sockets_from_proc(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"  # *:22
        + "   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"  # 127.0.0.1:631
        + "   2: 0264A8C0:0016 0164A8C0:D431 01 00000000:00000000 00:00000000 00000000     0\n"  # established
    )
    (tmp_path / "tcp6").write_text(
        header
        + "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n"  # [::]:8080
        + "   1: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 0\n"  # 2001:db8::1
        + "   2: 0000000000000000FFFF00000201A8C0:0019 00000000000000000000000000000000:0000 0A 0\n"  # ::ffff:v4
    )
    wildcard, bound = listening_sockets(tmp_path)
    assert wildcard == {22, 8080}
    assert bound == {
        (socket.inet_aton("127.0.0.1"), 631),
        (socket.inet_pton(socket.AF_INET6, "2001:db8::1"), 443),
        (socket.inet_pton(socket.AF_INET6, "::ffff:192.168.1.2"), 25),
        (socket.inet_aton("192.168.1.2"), 25),
    }
    assert listening_sockets(tmp_path / "missing") == (frozenset(), frozenset())


def test_cap_net_raw_is_read_from_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000002000\n")
    assert _has_cap_net_raw(status)
    status.write_text("Name:\tx\nCapEff:\t000001ffffffdfff\n")  # everything but bit 13
    assert not _has_cap_net_raw(status)
    assert not _has_cap_net_raw(tmp_path / "missing")


def test_timestamps_are_ecs_utc_and_exact() -> None:
    clock = _Clock()
    t = 1_772_359_200.123456  # 2026-03-01T10:00:00.123456Z
    assert clock.iso(t) == "2026-03-01T10:00:00.123456Z"
    assert abs(event_time(clock.iso(t + 61.5)) - (t + 61.5)) < 1e-5


def test_sandbox_refusing_packet_sockets_disables_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """RestrictAddressFamilies without AF_PACKET: one message, idle until stopped, no retry loop."""

    def refuse(self: packets.PacketSensor) -> socket.socket:
        raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))

    monkeypatch.setattr(packets, "capability_problem", lambda: None)
    monkeypatch.setattr(packets, "compile_bpf", lambda expression: b"")
    monkeypatch.setattr(packets.PacketSensor, "_open", refuse)
    sensor = packets.PacketSensor("packets", PacketSensorSettings(enabled=True))
    stop = threading.Event()
    runner = threading.Thread(target=sensor.run, args=(lambda batch: None, stop))
    with caplog.at_level(logging.INFO, logger=packets.__name__):
        runner.start()
        assert sensor.started.wait(5)
        assert runner.is_alive(), "it idles rather than returning (the daemon would restart it)"
        stop.set()
        runner.join(5)
    assert not runner.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "RestrictAddressFamilies" in messages[0], messages
    assert sensor.status.last_error == messages[0]


def test_bad_filter_is_refused_with_libpcap_message() -> None:
    try:
        import scapy.arch.common  # noqa: F401
    except (ImportError, OSError) as exc:
        _missing(f"scapy with libpcap: {exc}")
    assert len(compile_bpf(DEFAULT_BPF_FILTER)) % 8 == 0
    with pytest.raises(ValueError, match="bpf_filter"):
        compile_bpf("tcp and not and")


# -- with root: real packets between namespaces ---------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(("family", "interface"), [("ipv4", None), ("ipv6", None), ("ipv4", "veth-def")])
def test_scan_of_closed_ports_bans_the_scanner(net: NetnsPair, family: str, interface: str | None) -> None:
    defender = Defender(net, options={"interface": interface})
    assert defender.ready["disabled"] is None, defender.ready
    attacker: Side = net.attacker
    src, dst = (attacker.ipv4, net.defender.ipv4) if family == "ipv4" else (attacker.ipv6, net.defender.ipv6)
    connect_many(net, dst, [*SCAN_PORTS, OPEN_PORT])
    assert_ban(defender.finding(), src)
    findings, summary, stderr = defender.finish()
    assert findings == [], "the cooldown keeps one scan to one finding"
    seen = summary["ports"][src]
    assert OPEN_PORT not in seen, "a listening port is not a closed port"
    assert len(seen) >= 15, summary
    assert summary["sensor"]["open_port"] >= 1, summary
    assert "Traceback" not in stderr


@pytest.mark.root
def test_fast_scan_fires_on_what_capture_keeps(net: NetnsPair) -> None:
    """Crafted SYNs at full speed, of which the sensor keeps only 2 %: the scan is still caught.

    Capture loses packets under load; here the loss is made certain and heavy (a filter passing
    only ports divisible by 50), on top of whatever the blast itself costs.
    """
    keep_2_percent = f"({DEFAULT_BPF_FILTER}) and ip and tcp[2:2] % 50 == 0"
    defender = Defender(net, options={"bpf_filter": keep_2_percent})
    count = 20_000
    seconds = blast_syns(net, net.attacker.ipv4, net.defender.ipv4, count)
    finding = defender.finding(10)
    assert_ban(finding, net.attacker.ipv4)
    _, summary, _ = defender.finish()
    stats = summary["sensor"]
    print(f"\nsent {count} SYNs in {seconds:.2f}s ({count / seconds:,.0f}/s); sensor: {stats}")
    assert all(p % 50 == 0 for p in summary["ports"][net.attacker.ipv4])
    assert stats["packets"] <= count // 50 + 1


@pytest.mark.root
def test_normal_client_triggers_nothing(net: NetnsPair) -> None:
    """Many connections to the open port, and one closed port retried: no finding."""
    defender = Defender(net)
    connect_many(net, net.defender.ipv4, [OPEN_PORT], repeat=20)
    connect_many(net, net.defender.ipv6, [OPEN_PORT], repeat=20)
    connect_many(net, net.defender.ipv4, [9999], repeat=30)
    time.sleep(0.3)  # two batch intervals: every event has reached the engine
    findings, summary, _ = defender.finish()
    assert findings == []
    assert summary["ports"] == {net.attacker.ipv4: [9999]}, "the sensor saw the closed port, not the open one"
    assert summary["sensor"]["open_port"] >= 40


@pytest.mark.root
def test_without_cap_net_raw_one_message_and_runs_on(net: NetnsPair) -> None:
    drop = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-net_raw", "--"]
    defender = Defender(net, prefix=drop)
    reason = defender.ready["disabled"]
    assert reason is not None and "CAP_NET_RAW" in reason, defender.ready
    connect_many(net, net.defender.ipv4, SCAN_PORTS[:30])
    findings, summary, stderr = defender.finish()  # exit status 0: the process ran on
    assert findings == [] and summary["ports"] == {}
    assert "Traceback" not in stderr
    messages = [line for line in stderr.splitlines() if "packet sensor" in line]
    assert len(messages) == 1, stderr
    assert "CAP_NET_RAW" in messages[0]


@pytest.mark.root
def test_namespaces_are_removed() -> None:
    """The helper leaves nothing behind: a pair closed (even after an error) is gone."""
    require_netns()
    with pytest.raises(RuntimeError, match="boom"), NetnsPair() as pair:
        assert pair.exists()
        raise RuntimeError("boom")
    assert not pair.exists()
