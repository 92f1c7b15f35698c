"""OpenSSH (``sshd``, ``sshd-session``) messages → authentication events.

Dispatch is on the message's first word, so each line meets at most a few anchored
patterns.  Addresses come only from the position sshd itself writes them in (``from ADDR
port N``), never from user-controlled text such as the user name.
"""

from __future__ import annotations

import re

from sentinel.collectors.parsers.addresses import source_fields
from sentinel.event import Event

_FAILED = re.compile(
    r"Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*) from (?P<addr>\S+) port (?P<port>\d+)"
)
_ACCEPTED = re.compile(r"Accepted (?P<method>\S+) for (?P<user>.*) from (?P<addr>\S+) port (?P<port>\d+)")
_INVALID = re.compile(r"Invalid user (?P<user>.*) from (?P<addr>\S+)(?: port (?P<port>\d+))?")


def _auth(outcome: str, action: str, m: re.Match[str]) -> Event:
    event: Event = {
        "event.category": ["authentication"],
        "event.type": ["start"] if outcome == "success" else ["start"],
        "event.action": action,
        "event.outcome": outcome,
        "event.dataset": "sshd",
        "service.name": "sshd",
        "user.name": m.group("user"),
    }
    event.update(source_fields(m.group("addr"), m.group("port")))
    return event


def parse(msg: str) -> Event | None:
    """Parse one sshd message; ``None`` if it says nothing Sentinel watches."""
    first = msg[:4]
    if first == "Fail":
        m = _FAILED.match(msg)
        if m is not None:
            return _auth("failure", f"ssh_failed_{m.group('method')}", m)
    elif first == "Acce":
        m = _ACCEPTED.match(msg)
        if m is not None:
            return _auth("success", f"ssh_accepted_{m.group('method')}", m)
    elif first == "Inva":
        m = _INVALID.match(msg)
        if m is not None:
            return _auth("failure", "ssh_invalid_user", m)
    return None
