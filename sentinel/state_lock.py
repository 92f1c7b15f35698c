"""One daemon per state directory: an exclusive ``flock`` on ``<state_dir>/sentinel.lock``.

Two daemons on one state directory would read every line twice and fight over checkpoints,
bans and rule state.  The lock goes with the descriptor (or the process, however it ends), so
other commands can also ask whether a daemon is running there.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "sentinel.lock"


def lock_state_dir(state_dir: Path) -> int | None:
    """Lock ``<state_dir>/sentinel.lock``: its file descriptor, or None if another process holds it."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def daemon_running(state_dir: Path) -> bool:
    """True while a daemon holds the state directory's lock (or, unable to tell, assumed so)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
