"""``--format auto``: recognise each line's format from its first characters.

The first character picks the likely format (``{`` JSON, ``[`` Apache error log, a month name
syslog, a digit a stamp or an access log…); if that parser does not recognise the line, the
others are tried, so an unusual line costs a few more regex calls, never a wrong format.
"""

from __future__ import annotations

from sentinel.collectors.parsers import LineParser, syslog_parser
from sentinel.collectors.parsers.jsonl import parse_app_json
from sentinel.collectors.parsers.web import apache_parser, nginx_parser
from sentinel.event import Event


class AutoParser:
    __slots__ = ("_by_first", "_order")

    def __init__(self, year: int | None = None) -> None:
        syslog = syslog_parser(year)
        nginx = nginx_parser(year)
        apache = apache_parser(year)
        self._order: tuple[LineParser, ...] = (syslog, nginx, apache, parse_app_json)
        self._by_first: dict[str, tuple[LineParser, ...]] = {
            "{": (parse_app_json,),
            "[": (apache, syslog),
            "<": (syslog,),
        }
        for ch in "ADFJMNOS":  # month names
            self._by_first[ch] = (syslog, nginx, apache)
        for ch in "0123456789":
            self._by_first[ch] = (syslog, nginx, apache)

    def __call__(self, line: str) -> Event | None:
        for parse in self._by_first.get(line[:1], self._order):
            event = parse(line)
            if event is not None:
                return event
        return None
