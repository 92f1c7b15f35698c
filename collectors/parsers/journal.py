"""Journal entries → events.

An entry is a mapping of journal fields.  Values arrive in several shapes depending on the
reader: ``bytes`` or ``str`` (systemd-python, raw or converted; ints for ``_PID``), and, from
``journalctl -o json``, strings, arrays of byte values for binary data, arrays of values for a
field repeated in one entry, and ``null`` for data too large to show.  The message is handed
to the syslog message parsers by program name (``SYSLOG_IDENTIFIER``, else ``_COMM``), so a
journal line and a syslog line of the same sshd message give the same event.

The journal cursor (``__CURSOR``) never enters the event: it is where the *source* stands and
belongs to its checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from sentinel.collectors.parsers import LineParser
from sentinel.collectors.parsers.lines import ParseStats
from sentinel.collectors.parsers.syslog import SyslogParser
from sentinel.collectors.parsers.timestamps import now_utc
from sentinel.event import Event

#: First bytes of every binary journal file (``journal-file.h``: ``HEADER_SIGNATURE``).
JOURNAL_MAGIC: Final = b"LPKSHHRH"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_USEC: Final = 253402300799999999  # 9999-12-31T23:59:59.999999Z


def _scalar(value: object) -> object:
    """One value of a field: the last of a repeated field (as journalctl shows it), bytes for a
    JSON byte array, ``None`` for JSON ``null`` or an empty array."""
    if isinstance(value, list | tuple):
        if not value:
            return None
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            return bytes(value)  # journalctl -o json: binary data as an array of byte values
        return _scalar(value[-1])
    return value


def _text(value: object) -> str | None:
    """A short identifying field (program, host, pid) as text; undecodable bytes are replaced."""
    value = _scalar(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int):
        text = str(value)
    else:
        text = str(value)  # UUIDs and the like from systemd-python's converters
    return text or None


def _usec_to_utc(usec: int) -> str | None:
    """Microseconds since the epoch → ISO UTC with ``Z`` (exact: no float rounding)."""
    if not 0 <= usec <= _MAX_USEC:
        return None
    value = _EPOCH + timedelta(microseconds=usec)
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds").replace("+00:00", "Z")


def _timestamp(value: object) -> str | None:
    """``__REALTIME_TIMESTAMP`` in any shape (µs as int/str/bytes, or an aware datetime)."""
    value = _scalar(value)
    if isinstance(value, datetime):  # systemd-python's default converter
        if value.tzinfo is None:
            value = value.astimezone()
        return _usec_to_utc((value - _EPOCH) // timedelta(microseconds=1))
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return _usec_to_utc(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return _usec_to_utc(int(value))
    return None


def _message(value: object, max_bytes: int, stats: ParseStats | None) -> tuple[str | None, list[str]]:
    """The message as text, and what had to be repaired (the same wording as for log lines)."""
    value = _scalar(value)
    if value is None:
        return None, []
    problems: list[str] = []
    if isinstance(value, str):
        text = value
        if len(value) >= max_bytes // 4 and len(value.encode("utf-8", "surrogatepass")) >= max_bytes:
            value = value.encode("utf-8", "surrogatepass")
    elif not isinstance(value, bytes):
        text = str(value)
    if isinstance(value, bytes):
        truncated = len(value) >= max_bytes
        if truncated:
            value = value[: max_bytes - 1]
            if stats is not None:
                stats.truncated += 1
            problems.append(f"line longer than {max_bytes} bytes, truncated")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            if truncated and exc.reason == "unexpected end of data" and exc.end == len(value):
                value = value[: exc.start]  # the cut fell inside a character: drop its start
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = value.decode("utf-8", "backslashreplace")
                if stats is not None:
                    stats.invalid_utf8 += 1
                problems.append("invalid UTF-8 (bytes shown as \\x escapes)")
    if "\x00" in text:
        if stats is not None:
            stats.nul_bytes += 1
        problems.append("NUL bytes removed")
        text = text.replace("\x00", "")
    return text, problems


def parse_journal_entry(
    fields: Mapping[str, object],
    syslog: SyslogParser,
    *,
    max_bytes: int = 65536,
    stats: ParseStats | None = None,
) -> Event | None:
    """One journal entry → an event, or ``None`` if no message parser recognises it.

    ``@timestamp`` is the entry's ``__REALTIME_TIMESTAMP`` (when journald received it),
    ``process.pid`` the trusted ``_PID`` (else the sender's ``SYSLOG_PID``), ``host.hostname``
    ``_HOSTNAME``.  A message longer than ``max_bytes``, binary, or holding NUL bytes is
    repaired as a log line would be, and the repair noted in ``sentinel.parse_error``.
    """
    prog = _text(fields.get("SYSLOG_IDENTIFIER")) or _text(fields.get("_COMM"))
    if prog is None:
        return None
    msg, problems = _message(fields.get("MESSAGE"), max_bytes, stats)
    if msg is None:
        return None
    timestamp = (
        _timestamp(fields.get("__REALTIME_TIMESTAMP"))
        or _timestamp(fields.get("_SOURCE_REALTIME_TIMESTAMP"))
        or now_utc()
    )
    pid = _text(fields.get("_PID")) or _text(fields.get("SYSLOG_PID"))
    event = syslog.message(msg, prog, timestamp, _text(fields.get("_HOSTNAME")), pid)
    if event is not None and problems:
        event["sentinel.parse_error"] = "; ".join(problems)
        event["event.original"] = msg
    return event


def journal_line_parser(syslog: LineParser) -> LineParser:
    """``sentinel parse --format journal``: lines of ``journalctl -o json`` or ``json-seq`` (one
    object per line) or of ``journalctl -o short``/``short-iso``/``short-precise`` and fail2ban's
    ``srv sshd[123]: msg`` text, which the syslog framing already reads.

    ``syslog`` must be a :class:`SyslogParser` (what :func:`~sentinel.collectors.parsers.syslog_parser`
    returns): JSON entries go straight to its message parsers.
    """
    if not isinstance(syslog, SyslogParser):
        raise TypeError(f"journal_line_parser needs a SyslogParser, not {type(syslog).__name__}")
    parser = syslog

    def parse(line: str) -> Event | None:
        if line.startswith("\x1e"):  # journalctl -o json-seq: RFC 7464 record separator
            line = line[1:]
        if line.startswith("{"):
            try:
                fields = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            return parse_journal_entry(fields, parser) if isinstance(fields, dict) else None
        return parser(line)

    return parse
