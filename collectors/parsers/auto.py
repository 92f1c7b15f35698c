"""``--format auto``: recognise each line's format from its first characters.

A table indexed by the first character gives the parsers worth trying, most likely first:
``{`` JSON, ``[`` Apache error log, ``<`` syslog with a priority, a digit an ISO-stamped
syslog line (``2024-``), an nginx error log (``2024/``) or an access log (IPv4 client), a
letter a syslog stamp, a stamp-less journal-style line (``host prog[pid]: …``) or an access
log (IPv6 client, vhost or host name).  Two cheap checks make the common cases single-shot:
a line opening with a month name and a space is syslog, a digit line with ``-`` in column
5 is an ISO-stamped syslog line; only those are not retried with other parsers, so the hot
syslog path costs one parser call even for the many syslog lines that yield no event.
"""

from __future__ import annotations

from sentinel.collectors.parsers import LineParser, syslog_parser
from sentinel.collectors.parsers.jsonl import parse_app_json
from sentinel.collectors.parsers.timestamps import MONTHS
from sentinel.collectors.parsers.web import make_access_parser, parse_apache_error, parse_nginx_error
from sentinel.event import Event

_MONTH_NAMES = frozenset(MONTHS)


class AutoParser:
    """Parse lines of any supported format, each line on its own."""

    __slots__ = ("_by_first", "_nginx_first", "_order", "_syslog")

    def __init__(self, year: int | None = None) -> None:
        syslog = syslog_parser(year)
        access = make_access_parser("web.access")
        self._syslog = syslog
        self._order: tuple[LineParser, ...] = (syslog, access, parse_apache_error, parse_nginx_error, parse_app_json)
        by_first: dict[str, tuple[LineParser, ...]] = {
            "{": (parse_app_json,),
            "[": (parse_apache_error, syslog),
            "<": (syslog,),
            ":": (access, syslog),  # "::1 - - [..."
        }
        for ch in "0123456789":
            by_first[ch] = (access, parse_nginx_error, syslog)
        self._nginx_first: tuple[LineParser, ...] = (parse_nginx_error, access, syslog)
        for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
            by_first[ch] = (syslog, access)
        self._by_first = by_first

    def __call__(self, line: str) -> Event | None:
        first = line[:1]
        if line[3:4] == " " and line[:3] in _MONTH_NAMES:
            return self._syslog(line)
        parsers = self._by_first.get(first, self._order)
        if first.isdigit():
            fifth = line[4:5]
            if fifth == "-":  # 2024-03-01T10:00:01Z host prog[pid]: …
                return self._syslog(line)
            if fifth == "/":  # 2024/03/01 10:00:01 [error] …
                parsers = self._nginx_first
        for parse in parsers:
            event = parse(line)
            if event is not None:
                return event
        return None
