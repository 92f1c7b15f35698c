"""JSON-lines application login log → web authentication events (being written)."""

from __future__ import annotations

from sentinel.event import Event


def parse_app_json(line: str) -> Event | None:
    return None
