"""dropbear messages → authentication events.

::

    Bad password attempt for 'root' from 192.0.2.1:60588
    Login attempt for nonexistent user from ::ffff:192.0.2.1:60495
    Exit before auth (user 'root', 10 fails): Max auth tries reached - user 'root' from 192.0.2.1:60588
    Exit before auth from <192.0.2.1:52289>: (user 'root', 10 fails): Max auth tries reached - user 'root'
    Password auth succeeded for 'root' from 192.0.2.1:60588
    Pubkey auth succeeded for 'root' with key sha1!! … from 192.0.2.1:60588

Addresses are ``ADDR:PORT`` (IPv6 included, so split at the last colon).  The quoted user
name is the client's choice and may itself contain ``' from …``: patterns are greedy and
end with ``$``, so the address is the one dropbear wrote last.  Under the journal dropbear
may repeat its own ``[pid] Mmm dd hh:mm:ss`` prefix inside the message; it is skipped.
"""

from __future__ import annotations

import re

from sentinel.collectors.parsers.addresses import normalize_ip
from sentinel.event import Event

_OWN_PREFIX = re.compile(r"\[\d+\] [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ")
_BAD_PASSWORD = re.compile(r"[Bb]ad password attempt for '(.*)' from (\S+):(\d{1,5})$")
_NONEXISTENT = re.compile(r"[Ll]ogin attempt for nonexistent user(?: '(.*)')? from (\S+):(\d{1,5})$")
_MAX_TRIES = re.compile(
    r"Exit before auth(?: from <(\S+):(\d{1,5})>)?:? (?:\(user '.{0,256}?', \d+ fails\): )?"
    r"Max auth tries reached - user '(.*)'(?: from (\S+):(\d{1,5}))?$"
)
_SUCCEEDED = re.compile(r"(\w+) auth succeeded for '(.*)' (?:with key .* )?from (\S+):(\d{1,5})$")


def _event(action: str, outcome: str, user: str | None, addr: str, port: str) -> Event:
    event: Event = {
        "event.category": ["authentication"],
        "event.type": ["start"],
        "event.action": action,
        "event.outcome": outcome,
        "event.dataset": "dropbear",
        "service.name": "dropbear",
        "source.address": addr,
        "source.port": int(port),
    }
    if user is not None:
        event["user.name"] = user
    ip = normalize_ip(addr)
    if ip is not None:
        event["source.ip"] = ip
    else:
        event["source.domain"] = addr
    return event


def parse(msg: str) -> Event | None:
    """Parse one dropbear message; ``None`` if it is not about authentication."""
    if msg.startswith("["):
        own = _OWN_PREFIX.match(msg)
        if own is None:
            return None
        msg = msg[own.end() :]
    c = msg[:1]
    if c == "B" or c == "b":
        m = _BAD_PASSWORD.match(msg)
        if m is not None:
            return _event("dropbear_login_failed", "failure", *m.groups())
    elif c == "L" or c == "l":
        m = _NONEXISTENT.match(msg)
        if m is not None:
            return _event("dropbear_invalid_user", "failure", *m.groups())
    elif c == "E":
        m = _MAX_TRIES.match(msg)
        if m is not None:
            addr, port, user, addr2, port2 = m.groups()
            if addr is None:
                if addr2 is None:
                    return None
                addr, port = addr2, port2
            if user == "is invalid":  # dropbear's wording when the account does not exist
                user = None
            return _event("dropbear_too_many_failures", "failure", user, addr, port)
    elif c == "P":
        m = _SUCCEEDED.match(msg)
        if m is not None:
            _method, user, addr, port = m.groups()
            return _event("dropbear_login", "success", user, addr, port)
    return None
