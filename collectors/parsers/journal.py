"""Journal entries → events (being written)."""

from __future__ import annotations

from sentinel.collectors.parsers import LineParser


def journal_line_parser(syslog: LineParser) -> LineParser:
    return syslog
