"""Syslog framing: RFC 3164 (with or without a year), RFC 3339 stamps, RFC 5424, and the
stamp-less ``host prog[pid]: message`` lines of ``journalctl -o short`` style output.

The frame gives time, host, program and pid; the message goes to the parser registered for
the program (:data:`PROGRAMS`).  Lines no program parser recognises yield no event.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sentinel.collectors.parsers.timestamps import SyslogClock, iso_to_utc, now_utc
from sentinel.event import Event

#: A message parser gets the message text (after ``prog[pid]: ``) and returns the fields it
#: recognised, or ``None``.  The framing adds time, host, process and ``message``.
MessageParser = Callable[[str], Event | None]

_TAG = r"(?:(?P<host>[^\s\[\]]+) )?(?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: "
_RFC3164 = re.compile(
    r"(?:<\d{1,3}>)?(?P<minute>[A-Z][a-z]{2} {1,2}\d{1,2}(?: \d{4})? \d\d:\d\d):(?P<sec>\d\d)(?P<frac>\.\d{1,9})?"
    r"(?: (?P<year>\d{4}))? " + _TAG
)
_ISO = re.compile(
    r"(?:<\d{1,3}>)?(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) " + _TAG
)
_RFC5424 = re.compile(
    r"<\d{1,3}>1 (?P<iso>\S+) (?P<host>\S+) (?P<prog>\S+) (?P<pid>\S+) \S+ "
    r"(?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?"
)
_NO_STAMP = re.compile(_TAG)
_SOLARIS_ID = re.compile(r"\[ID \d+ [\w.]+\] ")
_REPEATED = re.compile(r"message repeated (\d+) times: \[ ?(.*?)\]?$")


class SyslogParser:
    """Parse one syslog line into an event, dispatching the message by program name."""

    __slots__ = ("_fallback", "_programs", "clock")

    def __init__(
        self,
        programs: dict[str, MessageParser],
        fallback: MessageParser | None = None,
        year: int | None = None,
    ) -> None:
        self._programs = programs
        self._fallback = fallback
        self.clock = SyslogClock(year)

    def __call__(self, line: str) -> Event | None:
        m = _RFC3164.match(line)
        if m is not None:
            prefix = self.clock.minute_prefix(*m.group("minute", "year"))
            if prefix is None:
                return None
            frac = m.group("frac")
            timestamp = f"{prefix}{m.group('sec')}{frac or ''}Z"
        else:
            m = _ISO.match(line) or _RFC5424.match(line)
            if m is not None:
                stamp = iso_to_utc(m.group("iso").replace(",", "."))
                if stamp is None:
                    return None
                timestamp = stamp
            else:
                m = _NO_STAMP.match(line)
                if m is None:
                    return None
                timestamp = now_utc()
        host, prog, pid = m.group("host", "prog", "pid")
        return self.message(line[m.end() :], prog, timestamp, host, pid)

    def message(
        self, msg: str, prog: str, timestamp: str, host: str | None, pid: str | None
    ) -> Event | None:
        """Parse a message already separated from its frame (also used for journal entries)."""
        count = 1
        if msg.startswith("message repeated "):
            rep = _REPEATED.match(msg)
            if rep is not None:
                count, msg = int(rep.group(1)), rep.group(2)
        elif msg.startswith("[ID "):
            sol = _SOLARIS_ID.match(msg)
            if sol is not None:
                msg = msg[sol.end() :]
        parse = self._programs.get(prog, self._fallback)
        if parse is None:
            return None
        event = parse(msg)
        if event is None:
            if parse is self._fallback or self._fallback is None:
                return None
            event = self._fallback(msg)
            if event is None:
                return None
        event["@timestamp"] = timestamp
        event["event.kind"] = "event"
        if host is not None:
            event["host.hostname"] = host
        event["process.name"] = prog
        if pid is not None and pid.isdigit():
            event["process.pid"] = int(pid)
        event["message"] = msg
        if count > 1:
            event["sentinel.attempts"] = count * event.get("sentinel.attempts", 1)
        return event
