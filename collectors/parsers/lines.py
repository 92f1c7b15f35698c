"""Bytes → lines → events, the hot loop shared by replay, ``sentinel parse`` and file tails.

Input is a buffer of complete lines (ending in ``\\n``).  ASCII buffers, the common case,
are decoded in one call; otherwise each line is decoded on its own so that one bad byte
costs one line, not the buffer.  Invalid UTF-8, NUL bytes and over-long lines are counted
and never stop the loop; an event from such a line carries the raw text (escaped) in
``event.original`` and the reason in ``sentinel.parse_error``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sentinel.collectors.parsers import LineParser
from sentinel.event import Event

#: The UTF-8 byte-order mark some editors put at the start of a file: not part of its first line.
BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class ParseStats:
    """Counters of one parsing stage (exported as metrics by the daemon)."""

    lines: int = 0
    events: int = 0
    invalid_utf8: int = 0
    nul_bytes: int = 0
    truncated: int = 0
    parser_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def add(self, counts: dict[str, int]) -> None:
        """Add another stage's counters (e.g. a parallel worker's) to these."""
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)


def parse_buffer(
    data: bytes,
    base_offset: int,
    parse: LineParser,
    path: str | None,
    stats: ParseStats,
    max_line: int = 65536,
) -> list[Event]:
    """Parse the complete lines in ``data`` (which starts at byte ``base_offset`` of ``path``)."""
    if base_offset == 0 and data.startswith(BOM):  # a file saved by an editor that marks UTF-8
        data, base_offset = data[len(BOM) :], len(BOM)
    events: list[Event] = []
    append = events.append
    offset = base_offset
    if data.isascii() and b"\x00" not in data:
        lines = data.decode("ascii").split("\n")
        if lines[-1] == "":
            lines.pop()
        stats.lines += len(lines)
        for line in lines:
            size = len(line) + 1
            if size > max_line:
                event = _parse_odd(line, None, parse, stats, max_line)
            else:
                try:
                    event = parse(line[:-1] if line.endswith("\r") else line)
                except Exception:  # a parser bug must never stop a collector
                    stats.parser_errors += 1
                    event = None
            if event is not None:
                if path is not None:
                    event["log.file.path"] = path
                event["log.offset"] = offset
                append(event)
            offset += size
    else:
        raw_lines = data.split(b"\n")
        if raw_lines[-1] == b"":
            raw_lines.pop()
        stats.lines += len(raw_lines)
        for raw in raw_lines:
            event = _parse_odd(None, raw, parse, stats, max_line)
            if event is not None:
                if path is not None:
                    event["log.file.path"] = path
                event["log.offset"] = offset
                append(event)
            offset += len(raw) + 1
    stats.events += len(events)
    return events


def _parse_odd(
    text: str | None, raw: bytes | None, parse: LineParser, stats: ParseStats, max_line: int
) -> Event | None:
    """The slow path: decode one line defensively, truncate it, note what was wrong."""
    problems = []
    if raw is not None:
        if len(raw) >= max_line:
            raw = raw[: max_line - 1]
            stats.truncated += 1
            problems.append(f"line longer than {max_line} bytes, truncated")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "backslashreplace")
            stats.invalid_utf8 += 1
            problems.append("invalid UTF-8 (bytes shown as \\x escapes)")
    else:
        assert text is not None
        if len(text) >= max_line:
            text = text[: max_line - 1]
            stats.truncated += 1
            problems.append(f"line longer than {max_line} bytes, truncated")
    if "\x00" in text:
        stats.nul_bytes += 1
        problems.append("NUL bytes removed")
        text = text.replace("\x00", "")
    try:
        event = parse(text)
    except Exception:
        stats.parser_errors += 1
        return None
    if event is not None and problems:
        event["sentinel.parse_error"] = "; ".join(problems)
        event["event.original"] = text
    return event
