"""Listening-port audit: which sockets accept traffic on this host, and were they expected?

A server promises a small network surface (SSH on 22, HTTPS on 443).  Every ``interval``
seconds (a job of the daemon's scheduler) :class:`PortAuditor` lists the listening sockets
with psutil — TCP sockets in state LISTEN and UDP sockets bound but not connected (they
receive whatever is sent to them) — checks each against the allowlist and diffs the result
against its previous snapshot:

- a socket address that appears gives an event ``listening_port_opened`` (``event.type``
  ``["start"]``), one that disappears gives ``listening_port_closed`` (``["end"]``);
- the first scan reports every socket open at that moment as opened, so an unexpected port
  already open when Sentinel starts is reported too.  Allowed ports are reported as well
  (``sentinel.port.allowed = true``): the store then holds an inventory of the approved
  surface (PCI-DSS 1.2.5 asks for one) and the rules simply ignore them.

A listening socket is identified by (transport, address, port): the same port on IPv4 and
IPv6 is two sockets, reported once per family; several ``SO_REUSEPORT`` sockets on one
address are one.  psutil names one process per socket, whichever it met last; a socket shared
by a pre-forking server's parent and workers is attributed to the topmost process holding it
(the parent), pid 1 excepted (systemd socket activation: the service is more telling).
Restarting a service keeps its address, so it is not reported.

Field names follow Elastic Auditbeat's ``system/socket`` dataset, which puts a listening
socket's local end in ``destination.ip`` / ``destination.port`` (the side connections go to),
with ``network.transport`` and ``network.type``; the owning process and user go in
``process.*`` and ``user.*`` when the kernel lets us see them (as non-root, other users'
processes show no pid or executable: those fields are then omitted).  Beyond ECS:

``sentinel.port.allowed``
    The socket matches an allowlist entry (``sentinel.port.allowed_by`` names it).
``sentinel.port.scope``
    ``"any"`` (bound to the wildcard 0.0.0.0 or ::, reachable on every interface),
    ``"loopback"`` (only from this host) or ``"address"`` (one specific address).
``sentinel.process.executable_deleted``
    The process runs from a deleted file, a classic sign of an implant (Linux only).

Limits: psutil sees the sockets of Sentinel's own network namespace (a container's private
ports are invisible, ports it publishes through the host are not); a listener that opens and
closes between two scans is missed — this is an audit, not a syscall trace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from hashlib import blake2b
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sentinel.collectors.parsers.timestamps import now_utc
from sentinel.collectors.sources.base import Batch, Checkpoint, PolledSource
from sentinel.engine.durations import Duration
from sentinel.event import Event

Transport = Literal["tcp", "udp"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DATASET: Final = "sentinel.ports"
OPENED: Final = "listening_port_opened"
CLOSED: Final = "listening_port_closed"
#: The surface the servers promise: SSH and HTTPS, nothing else.
DEFAULT_ALLOWED: Final = ("tcp/22", "tcp/443")
#: Longest command line kept in an event (argument lists can be huge).
MAX_COMMAND_LINE: Final = 4096

_ENTRY = re.compile(r"(?P<transport>[a-z0-9]+)/(?P<ports>[^@]+)(?:@(?P<address>.+))?")
_TRANSPORTS: Final[dict[str, Transport]] = {"tcp": "tcp", "udp": "udp"}
SocketKey = tuple[Transport, str, int]


class PortAuditError(RuntimeError):
    """The listening sockets cannot be listed (no permission, unsupported platform)."""


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One parsed allowlist entry: a transport, a port range and, optionally, where it is bound.

    ``network`` is ``None`` for "any address".  A socket bound to one specific address is
    allowed if that address lies in ``network``; a socket bound to the wildcard (0.0.0.0 or
    ::) is reachable everywhere, so only an entry covering the whole family (written
    ``@0.0.0.0``, ``@::`` or as ``/0``) or no address at all allows it.
    """

    text: str
    transport: Transport
    low: int
    high: int
    network: Network | None

    def allows(self, transport: str, ip: str, port: int) -> bool:
        """True if a socket of ``transport`` bound to ``ip``:``port`` is covered by this entry."""
        if transport != self.transport or not self.low <= port <= self.high:
            return False
        if self.network is None:
            return True
        addr = _address(ip)
        if addr is None or addr.version != self.network.version:
            return False
        if addr.is_unspecified:
            return self.network.prefixlen == 0
        return addr in self.network


def parse_allow_entry(text: str) -> AllowEntry:
    """Parse ``tcp/22``, ``udp/53``, ``tcp/8000-8100``, ``tcp/8080@127.0.0.1``, ``tcp/*@::1``…

    Raises :class:`ValueError` with a message naming the entry and what is wrong with it.
    """
    entry = text.strip().lower()
    m = _ENTRY.fullmatch(entry)
    if m is None:
        raise ValueError(
            f"{text!r}: expected PROTOCOL/PORT[@ADDRESS], e.g. 'tcp/22', 'udp/53', 'tcp/8000-8100', "
            "'tcp/8080@127.0.0.1' or 'tcp/*@::1'"
        )
    transport = _TRANSPORTS.get(m["transport"])
    if transport is None:
        raise ValueError(f"{text!r}: protocol must be 'tcp' or 'udp', not {m['transport']!r}")
    low, high = _port_range(text, m["ports"])
    network: Network | None = None
    if m["address"] is not None:
        where = m["address"].removeprefix("[").removesuffix("]")
        if where != "*":
            try:
                network = ipaddress.ip_network(where, strict=False)
            except ValueError:
                raise ValueError(
                    f"{text!r}: {m['address']!r} is not an IP address or network "
                    "(host names are not resolved; use '*' for any address)"
                ) from None
            if network.prefixlen == network.max_prefixlen and network.network_address.is_unspecified:
                network = ipaddress.ip_network("0.0.0.0/0" if network.version == 4 else "::/0")
    return AllowEntry(entry, transport, low, high, network)


def _port_range(text: str, ports: str) -> tuple[int, int]:
    if ports == "*":
        return 1, 65535
    low_text, sep, high_text = ports.partition("-")
    if not low_text.isdigit() or (sep and not high_text.isdigit()):
        raise ValueError(f"{text!r}: port must be a number (1-65535), a range such as 8000-8100, or '*'")
    low = int(low_text)
    high = int(high_text) if sep else low
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range (1-65535)")
    if low > high:
        raise ValueError(f"{text!r}: the port range {low}-{high} is empty (write the lower port first)")
    return low, high


class PortAuditSettings(BaseModel):
    """The ``[ports]`` section: the listening-port audit.

    ``allowed`` lists what may listen, nothing else may.  Loopback is deliberately *not*
    allowed by default: a loopback listener is reachable by every local user and process and,
    through server-side request forgery, by any web application on the host; it is where
    ``ssh -R`` remote forwards and many implants put their control port.  On a server whose
    promised surface is SSH and HTTPS, any new listener is a change worth an alert.  Allow
    the known local services explicitly (e.g. ``udp/323@127.0.0.1`` for chronyd,
    ``tcp/25@127.0.0.1`` for the MTA, ``udp/53@127.0.0.53`` for systemd-resolved), or —
    knowingly — everything on loopback with ``tcp/*@127.0.0.0/8`` and ``tcp/*@::1``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: Seconds (or "30s", "1m") between two audits.
    interval: Annotated[Duration, Field(ge=0.1, le=86400)] = 30.0
    #: What may listen: PROTOCOL/PORT[@ADDRESS] entries (see :func:`parse_allow_entry`).
    allowed: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED))

    @field_validator("allowed")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        errors = []
        for entry in value:
            try:
                parse_allow_entry(entry)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ValueError("; ".join(errors))
        return value

    def allow_entries(self) -> tuple[AllowEntry, ...]:
        """The parsed allowlist."""
        return tuple(parse_allow_entry(e) for e in self.allowed)


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket address, with the process holding it when known."""

    transport: Transport
    ip: str
    port: int
    pid: int | None = None
    process_name: str | None = None
    executable: str | None = None
    executable_deleted: bool = False
    command_line: str | None = None
    user_name: str | None = None
    user_id: str | None = None
    allowed_by: str | None = None

    @property
    def key(self) -> SocketKey:
        return (self.transport, self.ip, self.port)

    @property
    def allowed(self) -> bool:
        return self.allowed_by is not None

    @property
    def family(self) -> Literal["ipv4", "ipv6"]:
        return "ipv6" if ":" in self.ip else "ipv4"

    @property
    def scope(self) -> Literal["any", "loopback", "address"]:
        addr = _address(self.ip)
        if addr is None:
            return "address"
        if addr.is_unspecified:
            return "any"
        return "loopback" if addr.is_loopback else "address"

    def fields(self) -> Event:
        """The ECS fields describing this socket (no ``@timestamp`` or ``event.*``)."""
        e: Event = {
            "network.transport": self.transport,
            "network.type": self.family,
            "destination.ip": self.ip,
            "destination.port": self.port,
        }
        if self.pid is not None:
            e["process.pid"] = self.pid
        if self.process_name is not None:
            e["process.name"] = self.process_name
        if self.executable is not None:
            e["process.executable"] = self.executable
        if self.command_line is not None:
            e["process.command_line"] = self.command_line
        if self.user_name is not None:
            e["user.name"] = self.user_name
        if self.user_id is not None:
            e["user.id"] = self.user_id
        e["sentinel.port.allowed"] = self.allowed
        if self.allowed_by is not None:
            e["sentinel.port.allowed_by"] = self.allowed_by
        e["sentinel.port.scope"] = self.scope
        if self.executable_deleted:
            e["sentinel.process.executable_deleted"] = True
        return e

    def describe(self) -> str:
        """``tcp port 8080 on 127.0.0.1 (ipv4), python3 (pid 42, /usr/bin/python3.11, user root)``."""
        where = f"{self.transport} port {self.port} on {self.ip} ({self.family})"
        if self.pid is None:
            return f"{where}, process unknown"
        details = [f"pid {self.pid}"]
        if self.executable is not None:
            details.append(printable(self.executable) + (" (deleted)" if self.executable_deleted else ""))
        if self.user_name is not None:
            details.append(f"user {printable(self.user_name)}")
        return f"{where}, {printable(self.process_name or '?')} ({', '.join(details)})"


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped.

    Process names and paths are chosen by whoever starts the process (a name may hold a
    newline or a terminal escape sequence): escaped, they cannot forge a line of a table or
    of a message.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8: psutil keeps undecodable bytes as lone surrogates, which JSON
    encoders refuse; they become ``\\xNN`` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "replace").decode("utf-8")


def _address(ip: str) -> Address | None:
    """The address (an IPv4-mapped IPv6 address as its IPv4 one), or ``None`` if unparsable."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _allowed_by(entries: Iterable[AllowEntry], transport: str, ip: str, port: int) -> str | None:
    for entry in entries:
        if entry.allows(transport, ip, port):
            return entry.text
    return None


def _psutil() -> Any:
    """psutil, imported on first use (configuration loading must not pay for it)."""
    import psutil

    return psutil


def _sockets() -> dict[SocketKey, set[int]]:
    """Listening socket addresses → the pids holding them (empty when unknown)."""
    psutil = _psutil()
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied as exc:
        raise PortAuditError(f"listing sockets needs more privileges here ({exc})") from None
    except OSError as exc:
        raise PortAuditError(f"listing sockets failed: {exc}") from None
    found: dict[SocketKey, set[int]] = {}
    for c in conns:
        if not c.laddr:
            continue
        transport: Transport
        if c.type == socket.SOCK_STREAM:
            if c.status != psutil.CONN_LISTEN:
                continue
            transport = "tcp"
        elif c.type == socket.SOCK_DGRAM:
            if c.raddr:  # a connected UDP socket is a client, not a listener
                continue
            transport = "udp"
        else:
            continue
        pids = found.setdefault((transport, c.laddr.ip, c.laddr.port), set())
        if c.pid is not None:
            pids.add(c.pid)
    return found


def _owner(key: SocketKey, pids: set[int]) -> int | None:
    """The process to name for a socket held by ``pids``: the topmost ancestor holding it too."""
    if not pids:
        return None
    pid = min(pids)
    psutil = _psutil()
    transport, ip, port = key
    for _ in range(8):
        try:
            parent = psutil.Process(pid).parent()
            if parent is None or parent.pid <= 1:
                return pid
            listing = getattr(parent, "net_connections", None) or parent.connections  # psutil < 6
            conns = listing(kind=transport)
        except (psutil.Error, OSError):
            return pid
        if not any(c.laddr and c.laddr.ip == ip and c.laddr.port == port and not c.raddr for c in conns):
            return pid
        pid = parent.pid
    return pid


def _process(listener: Listener) -> Listener:
    """``listener`` with its process's name, executable, command line and user, as far as
    permissions allow (a field that cannot be read stays ``None``; a process that exited
    meanwhile keeps only its pid)."""
    if listener.pid is None:
        return listener
    psutil = _psutil()
    errors = (psutil.Error, OSError)
    try:
        proc = psutil.Process(listener.pid)
    except errors:
        return listener
    info: dict[str, Any] = {}
    with contextlib.suppress(*errors):
        info["process_name"] = _utf8(proc.name())
    with contextlib.suppress(*errors):
        exe = proc.exe()
        if exe:
            info["executable"] = _utf8(exe)
            info["executable_deleted"] = _deleted(listener.pid, exe)
    with contextlib.suppress(*errors):
        args = proc.cmdline()
        if args:
            info["command_line"] = _utf8(" ".join(args))[:MAX_COMMAND_LINE]
    with contextlib.suppress(AttributeError, *errors):  # uids() exists on POSIX only
        info["user_id"] = str(proc.uids().real)
    with contextlib.suppress(KeyError, *errors):  # a uid with no passwd entry
        info["user_name"] = _utf8(proc.username())
    return replace(listener, **info)


def _deleted(pid: int, exe: str) -> bool:
    """True if the process runs from a file since deleted (psutil hides the kernel's marker)."""
    try:
        link = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return link.endswith(" (deleted)") and not os.path.exists(exe)


def list_listeners(allowed: Iterable[AllowEntry]) -> list[Listener]:
    """Every listening socket now, with its process and allowlist verdict, sorted by port."""
    entries = tuple(allowed)
    out = [
        _process(
            Listener(
                transport=transport,
                ip=ip,
                port=port,
                pid=_owner((transport, ip, port), pids),
                allowed_by=_allowed_by(entries, transport, ip, port),
            )
        )
        for (transport, ip, port), pids in _sockets().items()
    ]
    return sorted(out, key=_order)


def _order(listener: Listener) -> tuple[int, str, str]:
    return (listener.port, listener.transport, listener.ip)


def _event_id(action: str, listener: Listener, timestamp: str) -> str:
    key = f"{action}|{listener.transport}|{listener.ip}|{listener.port}|{listener.pid}|{timestamp}"
    return blake2b(key.encode(), digest_size=8).hexdigest()


class PortAuditor:
    """Audits the listening sockets and reports what changed since the previous audit.

    :meth:`scan` is synchronous and thread-safe, so a source thread, a scheduler job or a
    test can call it alike.
    """

    def __init__(self, settings: PortAuditSettings | None = None, hostname: str | None = None) -> None:
        self.settings = settings or PortAuditSettings()
        self.entries = self.settings.allow_entries()
        self.hostname = hostname or socket.gethostname()
        self.scans = 0
        #: Sockets seen by the last scan (0 before the first).
        self.sockets = 0
        #: socket → (listener, first seen, the pids psutil reported for it)
        self._snapshot: dict[SocketKey, tuple[Listener, str, frozenset[int]]] = {}
        self._lock = threading.Lock()

    def scan(self) -> list[Event]:
        """Audit now; events for the sockets opened and closed since the last scan.

        Raises :class:`PortAuditError` when the sockets cannot be listed; the snapshot is then
        kept, so the next successful scan reports what changed meanwhile.
        """
        with self._lock:
            current = _sockets()
            stamp = now_utc()
            events: list[Event] = []
            previous = self._snapshot
            snapshot: dict[SocketKey, tuple[Listener, str, frozenset[int]]] = {}
            for key, pids in current.items():
                raw = frozenset(pids)
                seen = previous.get(key)
                if seen is not None and seen[2] == raw:
                    snapshot[key] = seen
                    continue
                listener = _process(Listener(*key, pid=_owner(key, pids), allowed_by=_allowed_by(self.entries, *key)))
                if seen is not None:  # the same address, new holders (a restarted service): no event
                    snapshot[key] = (listener, seen[1], raw)
                    continue
                snapshot[key] = (listener, stamp, raw)
                events.append(self._event(OPENED, listener, stamp))
            for key, (listener, first_seen, _) in previous.items():
                if key not in current:
                    events.append(self._event(CLOSED, listener, stamp, first_seen))
            self._snapshot = snapshot
            self.sockets = len(snapshot)
            self.scans += 1
            return events

    def listeners(self) -> list[Listener]:
        """The sockets of the last scan (empty before the first)."""
        with self._lock:
            return sorted((seen[0] for seen in self._snapshot.values()), key=_order)

    def _event(self, action: str, listener: Listener, stamp: str, first_seen: str | None = None) -> Event:
        opened = action == OPENED
        verdict = f"allowed by {listener.allowed_by!r}" if listener.allowed else "not in the allowlist"
        e: Event = {
            "@timestamp": stamp,
            "event.kind": "event",
            "event.category": ["network"],
            "event.type": ["start"] if opened else ["end"],
            "event.action": action,
            "event.dataset": DATASET,
            "event.id": _event_id(action, listener, stamp),
            "host.hostname": self.hostname,
        }
        if first_seen is not None:
            e["event.start"] = first_seen
            e["event.end"] = stamp
        e.update(listener.fields())
        e["message"] = f"Listening port {'opened' if opened else 'closed'}: {listener.describe()}; {verdict}"
        return e


class PortAuditSource(PolledSource):
    """A :class:`PortAuditor` as a source, polled every ``interval`` by the daemon's scheduler.

    Batches carry an empty checkpoint: there is nothing to resume, each start audits afresh
    (and so reports again what is open then).  A failed audit raises, so the scheduler logs it
    (once per distinct error) and counts it, and the next run tries again; the auditor and its
    snapshot persist across failures.  Outside the daemon, :meth:`run` polls in a thread of its own.
    """

    def __init__(
        self,
        name: str,
        settings: PortAuditSettings,
        checkpoint: Checkpoint | None = None,
        *,
        hostname: str | None = None,
        auditor: PortAuditor | None = None,
    ) -> None:
        super().__init__(name, checkpoint)
        self.settings = settings
        self.interval = settings.interval
        self.auditor = auditor or PortAuditor(settings, hostname)

    def poll(self, emit: Callable[[Batch], None]) -> None:
        """Audit now and emit what changed since the previous audit."""
        stats = self.status.stats
        try:
            events = self.auditor.scan()
        except PortAuditError as exc:
            self.status.last_error = str(exc)
            raise
        stats.lines += self.auditor.sockets
        stats.events += len(events)
        self.status.last_read = time.time()
        self.status.last_error = None
        if events:
            emit(Batch(self.name, events, {}))
