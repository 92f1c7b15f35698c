"""dropbear messages → authentication events (being written)."""

from __future__ import annotations

from sentinel.event import Event


def parse(msg: str) -> Event | None:
    return None
