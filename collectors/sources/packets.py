"""The packet sensor: TCP SYNs to closed ports, as events, for the port-scan rule.

Optional and off by default.  It needs CAP_NET_RAW, scapy and libpcap: scapy asks libpcap to
compile the BPF filter (``inbound`` SYNs without ACK, IPv4 and IPv6), which the kernel runs on a
Linux packet socket, so only the packets the sensor wants ever reach Python.  The socket is a
"cooked" one (``AF_PACKET``/``SOCK_DGRAM``: the link header is stripped) on one interface or on all
of them, so one filter fits Ethernet, loopback, tunnels and PPP alike.  Each packet is decoded
with ``struct`` rather than scapy's dissectors (which cap capture at 5–9k packets/s here): about
ten times faster, and capture still loses packets under load, which the port-scan rule tolerates.

A SYN becomes an event (``event.action = "syn_to_closed_port"``) only if it is addressed to this
host and no socket listens on its destination port.  The listening set and the host's addresses
are re-read every ``listening_refresh`` seconds (``/proc/net/tcp{,6}``: cheaper than psutil, which
maps every socket to its process; psutil gives the interface addresses).  Events are handed on in
batches (every 100 ms or 500 events), at most ``max_events_per_second``: a SYN flood then costs a
bounded number of events, and the excess is counted, not silently lost.  Kernel drops (the
socket's buffer overflowed) are counted too (``PACKET_STATISTICS``) and logged once a minute.

Limitations, by design:

* The source address is the packet's own and can be spoofed: a SYN scan forged from a victim's
  address would ban the victim.  The allowlist protects critical addresses (loopback, this host,
  configured networks are never banned), and the rule wants many distinct ports within its
  window, which a handful of stray or forged SYNs does not give.
* The packet socket sees packets before netfilter: an address already banned keeps producing
  events (the rule's cooldown keeps it from firing again at once).
* A port that listens only briefly between two refreshes (passive FTP data ports, services
  published by DNAT without a listening proxy) looks closed: exclude such ports in
  ``bpf_filter`` (``… and not dst portrange 50000-51000``).
* UDP is not decoded: replies to this host's own queries (DNS, NTP) that arrive after their
  socket closed would look like probes of closed ports, and banning the resolver is worse than
  missing a UDP scan.  IPv6 packets with extension headers before TCP are not matched.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from sentinel.collectors.sources.base import Batch, Checkpoint, Source
from sentinel.engine.durations import Duration
from sentinel.event import Event

log = logging.getLogger(__name__)

#: Inbound TCP SYNs without ACK, IPv4 and IPv6 (no extension headers), for libpcap on raw IP.
#: ``tcp[…]`` is IPv4-only in libpcap; for IPv6 the flags are at a fixed offset (40 + 13).
DEFAULT_BPF_FILTER: Final = (
    "inbound and ((ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn)"
    " or (ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02))"
)

CAP_NET_RAW: Final = 13
ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_STATISTICS: Final = 6
SO_ATTACH_FILTER: Final = 26
SO_RCVBUFFORCE: Final = 33
SO_TIMESTAMPNS: Final = 35
PACKET_HOST: Final = 0
DLT_RAW: Final = 12  # libpcap's "raw IP" link type: the filter starts at the IP header
SNAPLEN: Final = 128  # IPv6 (40) + TCP with options (60), rounded up: headers are all we read
RCVBUF: Final = 8 * 1024 * 1024
BATCH_EVENTS: Final = 500
BATCH_SECONDS: Final = 0.1
LISTEN: Final = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


class PacketSensorSettings(BaseModel):
    """``[packet_sensor]``: the optional SYN sensor (needs CAP_NET_RAW, scapy and libpcap)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    #: One interface, or ``None`` for all of them (loopback traffic is then ignored).
    interface: str | None = None
    #: libpcap syntax, compiled for raw IP packets (no link header).
    bpf_filter: str = DEFAULT_BPF_FILTER
    #: Only SYNs to ports nothing listens on (``False``: every SYN, ``syn_to_open_port`` too).
    closed_ports_only: bool = True
    #: How often the listening ports and this host's addresses are re-read, in seconds.
    listening_refresh: Duration = Field(default=5.0, gt=0)
    #: Cap on events handed on per second (a flood of forged SYNs must not flood the store).
    max_events_per_second: int = Field(default=2000, ge=1)


@dataclass(slots=True)
class PacketStats:
    """Counters of the sensor (metrics; the test and the benchmark read them)."""

    packets: int = 0  # packets read from the socket (after the BPF filter)
    events: int = 0  # events handed on
    open_port: int = 0  # SYNs to a listening port (not events unless closed_ports_only is off)
    not_local: int = 0  # not addressed to this host (forwarded, other host, loopback)
    repeats: int = 0  # the same source and port again within the same second
    over_rate: int = 0  # beyond max_events_per_second
    kernel_drops: int = 0  # lost by the kernel: the socket buffer was full
    undecodable: int = 0  # not a TCP SYN we can read (e.g. IPv6 extension headers)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# -- what the sensor needs -----------------------------------------------------------------------


def _has_cap_net_raw(status: Path = Path("/proc/self/status")) -> bool:
    """True if CAP_NET_RAW is in this process's effective set."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def capability_problem() -> str | None:
    """Why the sensor cannot run here, for the operator (``None`` if it can)."""
    problems = []
    if not hasattr(socket, "AF_PACKET"):
        problems.append("it needs Linux packet sockets")
    if not _has_cap_net_raw():
        problems.append(
            "it needs CAP_NET_RAW (run as root, or add CAP_NET_RAW to the unit's "
            "AmbientCapabilities and CapabilityBoundingSet)"
        )
    try:
        import scapy.arch.common
    except ImportError as exc:
        problems.append(f"it needs scapy: pip install 'sentinel-monitor[packets]' ({exc})")
    except OSError as exc:  # scapy found, its libpcap binding did not load
        problems.append(f"it needs libpcap: apt-get install libpcap0.8 ({exc})")
    else:
        try:
            import scapy.libs.winpcapy  # noqa: F401
        except (OSError, ImportError) as exc:
            problems.append(f"it needs libpcap: apt-get install libpcap0.8 ({exc})")
    if not problems:
        return None
    return "packet sensor disabled: " + "; ".join(problems) + " — the daemon runs on without it"


def compile_bpf(expression: str) -> bytes:
    """The kernel's ``struct sock_filter`` array for ``expression`` (libpcap, via scapy).

    Accepted packets are trimmed to :data:`SNAPLEN` bytes: the headers are all the sensor reads,
    and the socket buffer then holds more packets.  Raises ``ValueError`` for a bad expression.
    """
    from scapy.arch.common import compile_filter, free_filter
    from scapy.error import Scapy_Exception

    try:
        program = compile_filter(expression, linktype=DLT_RAW)
    except Scapy_Exception as exc:
        raise ValueError(f"bpf_filter: {exc}") from None
    try:
        out = bytearray()
        for i in range(program.bf_len):
            ins = program.bf_insns[i]
            k = ins.k & 0xFFFFFFFF  # scapy declares it signed
            if ins.code == 0x06 and k:  # BPF_RET|BPF_K accepting: keep the headers only
                k = min(k, SNAPLEN)
            out += struct.pack("HBBI", ins.code, ins.jt, ins.jf, k)
        return bytes(out)
    finally:
        free_filter(program)


def _attach(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# -- what is listening, and where ------------------------------------------------------------------


def _proc_address(hex_addr: str) -> bytes:
    """An address from /proc/net/tcp{,6} (32-bit words in host byte order) as network bytes."""
    raw = bytes.fromhex(hex_addr)
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def listening_sockets(proc_net: Path = Path("/proc/net")) -> tuple[frozenset[int], frozenset[tuple[bytes, int]]]:
    """(ports listening on every address, (address, port) pairs listening on one address).

    Read from this network namespace's ``/proc/net/tcp`` and ``tcp6``.
    """
    wildcard: set[int] = set()
    bound: set[tuple[bytes, int]] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != LISTEN:
                continue
            addr_hex, _, port_hex = fields[1].partition(":")
            port = int(port_hex, 16)
            addr = _proc_address(addr_hex)
            if not addr.strip(b"\0"):
                wildcard.add(port)  # 0.0.0.0 or :: (a dual-stack socket takes IPv4 too)
            else:
                bound.add((addr, port))
                if len(addr) == 16 and addr[:12] == b"\0" * 10 + b"\xff\xff":
                    bound.add((addr[12:], port))  # ::ffff:a.b.c.d
    return frozenset(wildcard), frozenset(bound)


def local_addresses() -> frozenset[bytes]:
    """This host's addresses (every interface, this namespace) as network-order bytes."""
    import psutil

    out: set[bytes] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(socket.inet_pton(a.family, a.address.split("%")[0]))
                except OSError:
                    continue
    return frozenset(out)


# -- the sensor ---------------------------------------------------------------------------------------


class _Clock:
    """ISO 8601 UTC timestamps with microseconds, formatting each second only once."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def iso(self, t: float) -> str:
        second = int(t)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((t - second) * 1e6):06d}Z"


class PacketSensor(Source):
    """SYNs to closed ports on this host, from a packet socket, as batches of events."""

    def __init__(
        self,
        name: str,
        settings: PacketSensorSettings,
        checkpoint: Checkpoint | None = None,
        *,
        hostname: str | None = None,
    ) -> None:
        super().__init__(name, checkpoint)
        self.settings = settings
        self.hostname = hostname or socket.gethostname()
        self.packet_stats = PacketStats()
        #: Set once the socket listens (or the sensor knows it cannot): tests wait on it.
        self.started = threading.Event()
        self._program: bytes | None = None
        if capability_problem() is None:
            self._program = compile_bpf(settings.bpf_filter)  # a bad filter fails the build, once

    # -- socket ----------------------------------------------------------------------------------
    def _open(self) -> socket.socket:
        program = self._program if self._program is not None else compile_bpf(self.settings.bpf_filter)
        iface = self.settings.interface
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0 if iface else socket.htons(ETH_P_ALL))
        try:
            _attach(sock, program)
            if iface:
                sock.bind((iface, ETH_P_ALL))  # receives only from here on, filtered
            else:
                sock.setblocking(False)  # receiving since creation: drop what came before the filter
                while True:
                    try:
                        sock.recv(1)
                    except BlockingIOError:
                        break
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:  # needs CAP_NET_ADMIN: take what net.core.rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.settimeout(BATCH_SECONDS)
            sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reset the counters
        except BaseException:
            sock.close()
            raise
        return sock

    # -- run -----------------------------------------------------------------------------------------
    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Capture until ``stop`` is set.  Without what it needs, log once and stay idle until then."""
        problem = capability_problem()
        if problem is not None:
            self._disabled(problem, stop)
            return
        try:
            sock = self._open()
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT):  # a sandbox said no: for good
                self._disabled(
                    f"packet sensor disabled: cannot open a packet socket ({exc.strerror}); under systemd, "
                    "allow AF_PACKET in RestrictAddressFamilies and CAP_NET_RAW in the capabilities "
                    "— the daemon runs on without it",
                    stop,
                )
                return
            raise OSError(f"packet sensor cannot open its socket: {exc}") from None  # retried (e.g. no such device)
        where = self.settings.interface or "all interfaces"
        log.info("packet sensor listening on %s", where, extra={"source": self.name})
        self.status.last_error = None
        self.started.set()
        try:
            self._capture(sock, emit, stop)
        finally:
            sock.close()

    def _disabled(self, problem: str, stop: threading.Event) -> None:
        """Say why once, then idle until ``stop``: returning would make the daemon restart (and re-log) it."""
        if self.status.last_error != problem:
            log.error("%s", problem, extra={"source": self.name})
        self.status.last_error = problem
        self.started.set()
        stop.wait()

    def _emit(self, emit: Callable[[Batch], None], events: list[Event]) -> None:
        """Hand on one batch (no checkpoint: packets cannot be read again)."""
        self.packet_stats.events += len(events)
        self.status.stats.events += len(events)
        self.status.last_read = time.time()
        emit(Batch(self.name, events, {}))

    def _capture(self, sock: socket.socket, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """The hot loop: read, decode, decide, batch.  Everything per packet is inlined here."""
        settings = self.settings
        stats = self.packet_stats
        closed_only = settings.closed_ports_only
        any_iface = settings.interface is None
        cap = settings.max_events_per_second
        hostname = self.hostname
        clock = _Clock()
        unpack_ports = struct.Struct("!HH").unpack_from
        unpack_ts = struct.Struct("qq").unpack_from
        ntop = socket.inet_ntop
        af4, af6 = socket.AF_INET, socket.AF_INET6
        recvmsg = sock.recvmsg
        anc_size = socket.CMSG_SPACE(16)
        lo_type = 772  # ARPHRD_LOOPBACK

        wildcard, bound = listening_sockets()
        local = local_addresses()
        refresh_at = time.monotonic() + settings.listening_refresh
        events: list[Event] = []
        flush_at = 0.0
        second = -1
        per_second = 0
        seen: set[tuple[bytes, int]] = set()
        last_drop_log = 0.0
        dropped_logged = 0

        while not stop.is_set():
            try:
                data, anc, _flags, addr = recvmsg(SNAPLEN, anc_size)
            except TimeoutError:
                data = b""
            now = time.monotonic()
            if data:
                stats.packets += 1
                if addr[2] != PACKET_HOST or (any_iface and addr[3] == lo_type):
                    stats.not_local += 1
                    data = b""
            if data:
                version = data[0] >> 4
                if version == 4 and len(data) >= 20 and data[9] == 6 and not (data[6] & 0x1F or data[7]):
                    l4 = (data[0] & 15) * 4
                    src, dst, af, kind = data[12:16], data[16:20], af4, "ipv4"
                elif version == 6 and len(data) >= 40 and data[6] == 6:
                    l4 = 40
                    src, dst, af, kind = data[8:24], data[24:40], af6, "ipv6"
                else:
                    l4 = 0
                if l4 == 0 or len(data) < l4 + 14 or data[l4 + 13] & 0x12 != 0x02:
                    stats.undecodable += 1
                elif dst not in local:
                    stats.not_local += 1
                else:
                    sport, dport = unpack_ports(data, l4)
                    is_open = dport in wildcard or (dst, dport) in bound
                    if is_open:
                        stats.open_port += 1
                    if not (is_open and closed_only):
                        t = time.time()
                        for level, ctype, cdata in anc:
                            if level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS:
                                sec, nsec = unpack_ts(cdata)
                                t = sec + nsec / 1e9
                        if int(t) != second:
                            second = int(t)
                            per_second = 0
                            seen.clear()
                        key = (src, dport)
                        if key in seen:
                            stats.repeats += 1
                        elif per_second >= cap:
                            stats.over_rate += 1
                        else:
                            seen.add(key)
                            per_second += 1
                            s, d = ntop(af, src), ntop(af, dst)
                            state = "open" if is_open else "closed"
                            events.append(
                                {
                                    "@timestamp": clock.iso(t),
                                    "event.kind": "event",
                                    "event.category": ["network"],
                                    "event.type": ["connection", "start" if is_open else "denied"],
                                    "event.action": f"syn_to_{state}_port",
                                    "event.dataset": "sentinel.packets",
                                    "source.ip": s,
                                    "source.port": sport,
                                    "destination.ip": d,
                                    "destination.port": dport,
                                    "network.transport": "tcp",
                                    "network.type": kind,
                                    "observer.ingress.interface.name": addr[0],
                                    "host.hostname": hostname,
                                    "message": f"TCP SYN from {s} port {sport} to {state} port {dport} on {d}",
                                }
                            )
                            if len(events) == 1:
                                flush_at = now + BATCH_SECONDS
            if events and (len(events) >= BATCH_EVENTS or now >= flush_at):
                self._emit(emit, events)
                events = []
            if now >= refresh_at:
                wildcard, bound = listening_sockets()
                local = local_addresses()
                refresh_at = now + settings.listening_refresh
                stats.kernel_drops += struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
                self.status.stats.lines = stats.packets
                lost = stats.kernel_drops + stats.over_rate
                if lost > dropped_logged and now - last_drop_log >= 60:
                    log.warning(
                        "packet sensor: %d packets lost by the kernel, %d SYNs over the rate cap (so far)",
                        stats.kernel_drops,
                        stats.over_rate,
                        extra={"source": self.name},
                    )
                    last_drop_log, dropped_logged = now, lost
        if events:
            self._emit(emit, events)
        stats.kernel_drops += struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        self.status.stats.lines = stats.packets


def _main(argv: list[str] | None = None) -> int:  # pragma: no cover - a diagnostic tool
    """``python -m sentinel.collectors.sources.packets [IFACE]``: print events as JSON lines."""
    import contextlib
    import sys

    import orjson

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = sys.argv[1:] if argv is None else argv
    settings = PacketSensorSettings(enabled=True, interface=args[0] if args else None)
    sensor = PacketSensor("packets", settings)
    stop = threading.Event()

    def emit(batch: Batch) -> None:
        for event in batch.events:
            sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        sensor.run(emit, stop)
    print(orjson.dumps(sensor.packet_stats.as_dict()).decode(), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
