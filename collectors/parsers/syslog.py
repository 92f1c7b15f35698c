"""Syslog framing: RFC 3164 (with or without a year), RFC 3339 stamps, RFC 5424, and the
stamp-less ``host prog[pid]: message`` lines of ``journalctl -o short`` style output.

The frame gives time, host, program and pid; the message goes to the parser registered for
the program, else to the fallback parser (PAM, which any program may log through).  Lines no
message parser recognises yield no event.

Speed: the usual ``Mmm dd hh:mm:ss host prog[pid]: `` header is recognised by one short
regex, and the time is converted (through a per-minute cache) only once a message parser has
produced an event; :data:`QUIET_PROGRAMS` (cron) are dropped before any message parsing.
Everything else takes the general path, which tries each stamp format in turn.

Some daemons (sshd) log one connection per process and name the peer only in some of its
lines; parsers marked with :func:`uses_connections` get a per-parser :class:`Connections`
table, keyed by host and pid, to remember it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from sentinel.collectors.parsers.timestamps import SyslogClock, iso_to_utc, now_utc
from sentinel.event import Event

#: A message parser gets the message text (after ``prog[pid]: ``) and returns the fields it
#: recognised, or ``None``.  The framing adds time, host, process and ``message``.
MessageParser = Callable[[str], Event | None]

#: Programs whose lines never become events: cron opens and closes a PAM session for every
#: job, which is pure noise for a security monitor (see the ``pam`` module).
QUIET_PROGRAMS = frozenset({"CRON", "cron", "crond", "anacron"})

#: Connection state of one daemon process: (peer address, peer port, whether the connection
#: already produced a failure event).
Peer = tuple[str | None, str | None, bool]


class Connections:
    """Bounded memory of open connections, keyed by ``(host, pid)``.

    Two generations: when the current one fills up it becomes the old one and the previous
    old one is dropped, so memory stays bounded without per-entry bookkeeping, and a
    connection seen recently is always remembered.
    """

    __slots__ = ("_new", "_old", "limit")

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self._new: dict[tuple[str | None, str], Peer] = {}
        self._old: dict[tuple[str | None, str], Peer] = {}

    def get(self, key: tuple[str | None, str]) -> Peer | None:
        peer = self._new.get(key)
        return peer if peer is not None else self._old.get(key)

    def put(self, key: tuple[str | None, str], peer: Peer) -> None:
        new = self._new
        new[key] = peer
        if len(new) > self.limit:
            self._old = new
            self._new = {}

    def pop(self, key: tuple[str | None, str]) -> Peer | None:
        peer = self._new.pop(key, None)
        old = self._old.pop(key, None)
        return peer if peer is not None else old

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


class ConnectionParser(Protocol):
    """A message parser that also gets the connection table and its process's host and pid."""

    def __call__(
        self, msg: str, conns: Connections | None = None, host: str | None = None, pid: str | None = None
    ) -> Event | None: ...


_F = TypeVar("_F")
_CONNECTION_AWARE = "_sentinel_uses_connections"


def uses_connections(func: _F) -> _F:
    """Mark a message parser as a :class:`ConnectionParser`: the framing then calls it as
    ``func(msg, connections, host, pid)`` (plain calls ``func(msg)`` keep working)."""
    setattr(func, _CONNECTION_AWARE, True)
    return func


_TAG = r"(?:(?P<host>[^\s\[\]]+) )?(?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d{1,10})\])?: "
#: ``[sshd]: msg`` / ``[sshd] msg``: a bracketed tag without pid (old BSD and some devices).
_BRACKET_TAG = re.compile(r"(?:(?P<host>[^\s\[\]]+) )?\[(?P<prog>[^\s\[\]:]+)\]:? ")
_FAST = re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ([^\s\[\]]+) ([^\s\[\]:]+)(?:\[(\d{1,10})\])?: ")
_RFC3164 = re.compile(
    r"(?:<\d{1,3}>)?(?P<minute>[A-Z][a-z]{2} {1,2}\d{1,2}(?: \d{4})? \d\d:\d\d):(?P<sec>\d\d)"
    r"(?P<frac>\.\d{1,9})?(?: (?P<year>\d{4}))? "
)
_ISO = re.compile(r"(?:<\d{1,3}>)?(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) ")
#: RFC 5424; structured-data values may hold ``]`` inside their quotes (seen in the wild).
_RFC5424 = re.compile(
    r"<\d{1,3}>1 (?P<iso>\S+) (?P<host>\S+) (?P<prog>\S+) (?P<pid>\S+) \S+ "
    r"(?:-|(?:\[[^\s\]\"]+(?: [^\s=\]\"]+=\"(?:[^\"\\]|\\.)*\")*\])+) ?"
)
_TAG_RE = re.compile(_TAG)
_SOLARIS_ID = re.compile(r"\[ID \d+ [\w.]+\] ")
_REPEATED = re.compile(r"message repeated (\d+) times: \[ ?(.*?)\]?$")


class SyslogParser:
    """Parse one syslog line into an event, dispatching the message by program name."""

    __slots__ = ("_contextual", "_fallback", "_programs", "clock", "connections")

    def __init__(
        self,
        programs: dict[str, MessageParser],
        fallback: MessageParser | None = None,
        year: int | None = None,
        quiet: Iterable[str] = QUIET_PROGRAMS,
    ) -> None:
        dispatch: dict[str, MessageParser | None] = dict(programs)
        for prog in quiet:
            dispatch.setdefault(prog, None)
        self._programs = dispatch
        self._contextual: dict[str, ConnectionParser] = {
            prog: parse  # type: ignore[misc]
            for prog, parse in programs.items()
            if getattr(parse, _CONNECTION_AWARE, False)
        }
        self._fallback = fallback
        self.clock = SyslogClock(year)
        self.connections = Connections()

    def __call__(self, line: str) -> Event | None:
        # Fast path: "Mmm dd hh:mm:ss host prog[pid]: msg", the layout of nearly every auth.log.
        m = _FAST.match(line)
        if m is not None:
            host, prog, pid = m.groups()
            if not (len(host) == 4 and host.isdigit()):  # else a year: the general path
                fallback = self._fallback
                parse = self._programs.get(prog, fallback)
                if parse is None:
                    return None
                msg = line[m.end() :]
                if msg.startswith(("message repeated ", "[ID ")):
                    stamp = self.clock.stamp(line[:15])
                    return None if stamp is None else self.message(msg, prog, stamp, host, pid)
                ctx = self._contextual.get(prog)
                event = parse(msg) if ctx is None else ctx(msg, self.connections, host, pid)
                if event is None:
                    if parse is fallback or fallback is None:
                        return None
                    event = fallback(msg)
                    if event is None:
                        return None
                stamp = self.clock.stamp(line[:15])
                if stamp is None:
                    return None
                event["@timestamp"] = stamp
                event["event.kind"] = "event"
                event["host.hostname"] = host
                event["process.name"] = prog
                if pid is not None:
                    event["process.pid"] = int(pid)
                event["message"] = msg
                return event
        return self._general(line)

    def _general(self, line: str) -> Event | None:
        """Any other layout: RFC 3164 variants, RFC 3339 / ISO stamps, RFC 5424, no stamp."""
        pos = 0
        timestamp: str | None = None
        first = line[:1]
        m: re.Match[str] | None
        if first.isalpha() or first == "<":
            m = _RFC3164.match(line)
            if m is not None:
                prefix = self.clock.minute_prefix(*m.group("minute", "year"))
                if prefix is None:
                    return None
                timestamp = f"{prefix}{m.group('sec')}{m.group('frac') or ''}Z"
                pos = m.end()
        if timestamp is None and (first.isdigit() or first == "<"):
            m = _ISO.match(line)
            if m is None:
                m = _RFC5424.match(line)
                if m is not None:  # the frame is complete: host, program and pid included
                    timestamp = iso_to_utc(m.group("iso"))
                    if timestamp is None:
                        return None
                    host, prog, pid = m.group("host", "prog", "pid")
                    return self.message(line[m.end() :], prog, timestamp, None if host == "-" else host, pid)
            else:
                timestamp = iso_to_utc(m.group("iso").replace(",", "."))
                if timestamp is None:
                    return None
                pos = m.end()
        tag = _TAG_RE.match(line, pos) or _BRACKET_TAG.match(line, pos)
        if tag is None:
            return None
        return self.message(
            line[tag.end() :],
            tag.group("prog"),
            timestamp or "",
            tag.group("host"),
            tag.group("pid") if tag.re is _TAG_RE else None,
        )

    def message(self, msg: str, prog: str, timestamp: str, host: str | None, pid: str | None) -> Event | None:
        """Parse a message already separated from its frame (also used for journal entries).

        An empty ``timestamp`` means the record carries none: the event gets the current time.
        """
        count = 1
        if msg.startswith("message repeated "):
            rep = _REPEATED.match(msg)
            if rep is not None:
                count, msg = int(rep.group(1)), rep.group(2)
        if msg.startswith("[ID "):
            sol = _SOLARIS_ID.match(msg)
            if sol is not None:
                msg = msg[sol.end() :]
        if pid is not None and not (pid.isdecimal() and len(pid) <= 10):
            pid = None
        fallback = self._fallback
        parse = self._programs.get(prog, fallback)
        if parse is None:
            return None
        ctx = self._contextual.get(prog)
        event = parse(msg) if ctx is None else ctx(msg, self.connections, host, pid)
        if event is None:
            if parse is fallback or fallback is None:
                return None
            event = fallback(msg)
            if event is None:
                return None
        event["@timestamp"] = timestamp or now_utc()
        event["event.kind"] = "event"
        if host is not None:
            event["host.hostname"] = host
        event["process.name"] = prog
        if pid is not None:
            event["process.pid"] = int(pid)
        event["message"] = msg
        if count > 1:
            event["sentinel.attempts"] = count * event.get("sentinel.attempts", 1)
        return event
