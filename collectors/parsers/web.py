"""nginx and Apache access and error logs → web events (being written)."""

from __future__ import annotations

from sentinel.collectors.parsers import LineParser
from sentinel.event import Event


def _none(line: str) -> Event | None:
    return None


def nginx_parser(year: int | None = None) -> LineParser:
    return _none


def apache_parser(year: int | None = None) -> LineParser:
    return _none
