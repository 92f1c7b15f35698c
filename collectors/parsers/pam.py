"""PAM messages, whichever program logs them → authentication and session events.

Recognised (any PAM module, not only ``pam_unix``)::

    pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.1  user=root
    pam_unix(auth): … / pam_unix: … / (pam_unix) authentication failure; …   (older Linux-PAM)
    authentication failure; …              (program tag ``pop(pam_unix)[123]:``, Linux-PAM < 0.99.2)
    PAM 2 more authentication failures; … rhost=…   → one event standing for 2 attempts
    pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)
    pam_unix(sshd:session): session closed for user alice

A failure with a remote host (``rhost=``) is attributed to it; without one (su, sudo, a
console login) it is a local failure with no ``source.*``.  Both ``ruser`` and ``user`` may
be chosen by the client, and either may contain `` rhost=…``: the address is the first
`` rhost=`` value followed by nothing but the ``user=`` field, so text injected into
``ruser`` (before the real ``rhost``) or into ``user`` (after it) does not move it.

Sessions of cron (service ``cron``/``crond``; the syslog framing also drops the ``CRON``
program entirely) are skipped: cron opens and closes a session for root for every job, which
would flood the event store with routine noise and carries no security signal.
"""

from __future__ import annotations

import re

from sentinel.collectors.parsers.addresses import normalize_ip
from sentinel.event import Event

#: PAM services whose sessions are routine noise (see the module docstring).
QUIET_SERVICES = frozenset({"cron", "crond", "CRON"})

_RHOST = re.compile(r" rhost=(\S*)(?: +user=(.*?))? *$")
_USER = re.compile(r" user=(.*?) *$")
_MORE = re.compile(r"(\d{1,6}) more authentication failures?; (.*)$")
_SESSION_USER = re.compile(r"([^\s(]+)(?:\(uid=\d+\))?(?: by ([^\s(]*)(?:\(uid=\d+\))?)?")


def parse(msg: str) -> Event | None:
    """Parse one PAM message; ``None`` if it is not an authentication failure or session."""
    c = msg[:1]
    service: str | None = None
    if c == "p":
        if not msg.startswith("pam_"):
            return None
        colon = msg.find(": ", 4, 80)
        if colon < 0:
            return None
        head = msg[4:colon]  # "unix(sshd:auth)", "unix(auth)", "unix"
        paren = head.find("(")
        if paren >= 0:
            inside = head[paren + 1 : -1]
            sep = inside.find(":")
            if sep >= 0:
                service = inside[:sep]
                if service in QUIET_SERVICES:
                    return None
        body = msg[colon + 2 :]
    elif c == "(":
        if not msg.startswith("(pam_"):
            return None
        close = msg.find(") ", 5, 40)
        if close < 0:
            return None
        body = msg[close + 2 :]
    elif c == "P":
        if not msg.startswith("PAM "):
            return None
        body = msg[4:]
    elif c == "a":
        body = msg
    else:
        return None

    if body.startswith("authentication failure; "):
        return _failure(body[24:], service, 1)
    if body.startswith("session "):
        if body.startswith("session opened for user "):
            action, etype, rest = "session_opened", "start", body[24:]
        elif body.startswith("session closed for user "):
            action, etype, rest = "session_closed", "end", body[24:]
        else:
            return None
        m = _SESSION_USER.match(rest)
        if m is None:
            return None
        target, by = m.groups()
        event: Event = {
            "event.category": ["session"],
            "event.type": [etype],
            "event.action": action,
            "event.outcome": "success",
            "event.dataset": "pam",
            "user.name": target,
        }
        if by:  # su / sudo: "session opened for user root(uid=0) by alice(uid=1000)"
            event["user.name"] = by
            event["user.effective.name"] = target
        if service is not None:
            event["service.name"] = service
        return event
    if body[:1].isdigit():
        m = _MORE.match(body)
        if m is not None:
            return _failure(m.group(2), service, int(m.group(1)))
    return None


def _failure(fields: str, service: str | None, attempts: int) -> Event:
    """The event for ``logname=… uid=… euid=… tty=… ruser=… rhost=…  user=…``."""
    event: Event = {
        "event.category": ["authentication"],
        "event.type": ["start"],
        "event.action": "pam_auth_failure",
        "event.outcome": "failure",
        "event.dataset": "pam",
    }
    if service is not None:
        event["service.name"] = service
    user: str | None = None
    if fields.endswith(" [preauth]"):
        fields = fields[:-10]
    m = _RHOST.search(fields)
    if m is not None:
        rhost, user = m.groups()
        if rhost:
            event["source.address"] = rhost
            ip = normalize_ip(rhost)
            if ip is not None:
                event["source.ip"] = ip
            else:
                event["source.domain"] = rhost
        if not user:
            at = fields.find(" ruser=", 0, m.start() + 1)
            ruser = fields[at + 7 : m.start()] if at >= 0 else ""
            user = ruser or None
    else:
        u = _USER.search(fields)
        if u is not None:
            user = u.group(1) or None
    if user is not None:
        event["user.name"] = user
    if attempts != 1:
        event["sentinel.attempts"] = attempts
    return event
