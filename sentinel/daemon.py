"""Daemon lifecycle (being written)."""

from __future__ import annotations

from pathlib import Path

from sentinel.config import Settings


def run_daemon(settings: Settings, config_path: Path) -> int:
    raise NotImplementedError
