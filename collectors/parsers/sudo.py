"""sudo and su messages → privileged-command and session events (being written)."""

from __future__ import annotations

from sentinel.event import Event


def parse_sudo(msg: str) -> Event | None:
    return None


def parse_su(msg: str) -> Event | None:
    return None
