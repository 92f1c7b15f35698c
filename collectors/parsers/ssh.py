"""OpenSSH (``sshd``, ``sshd-session``, ``sshd-auth``) messages → authentication events.

Dispatch is on the message's first character and a ``startswith``, so each line meets at
most one or two anchored patterns.

Addresses come only from the position sshd itself writes them in, never from text a client
controls (user names, a client's disconnect reason or version banner, hostbased client
user/host).  Patterns end with ``$`` after sshd's own suffixes (`` ssh2``, ``: RSA SHA256:…``,
`` [preauth]``), and where a user name precedes the address the match is greedy, so the
address is the *last* one followed by exactly sshd's suffix: ``Failed password for invalid
user x from 6.6.6.6 port 1 ssh2 from 192.0.2.1 port 22 ssh2`` is from 192.0.2.1.  OpenSSH
appends method information (``: …``) only for publickey, hostbased and GSSAPI, so for an
invalid user that information must look like a key (``ALG FINGERPRINT``) or hostbased's
quoted client user/host; an existing account name has no spaces, so for a valid user the
first `` from `` is sshd's.

What counts as a failure (``event.outcome: failure`` in category ``authentication``, the
events brute-force rules count):

* each failed attempt: ``Failed <method>`` (password, publickey, keyboard-interactive,
  hostbased, none…), ``Invalid user``, ``User … not allowed because …``, ``error: PAM:
  Authentication failure``, ``ROOT LOGIN REFUSED``, TCP wrappers refusals, a change of user
  name mid-connection, and sshd's verdicts ``maximum authentication attempts exceeded`` /
  ``Disconnecting: Too many authentication failures`` (action ``ssh_too_many_failures``);
* pre-authentication noise that is an attack in itself, under ``ssh_preauth_*`` actions: no
  identification string, a bad protocol banner, failed key exchange negotiation, a time-out
  before authentication, a protocol error, a connection closed, reset or disconnected
  ``[preauth]``.  A line closing a connection after a login (``Disconnected from user alice
  …``, ``Received disconnect …: 11: disconnected by user``) is a ``network`` event.

Each connection's end counts once.  sshd runs one process per connection, so the framing
hands this parser a :class:`~sentinel.collectors.parsers.syslog.Connections` table keyed by
host and pid; it remembers the peer (from ``Connection from`` at LogLevel VERBOSE, or any
line naming it) and whether the connection already failed.  A line that only ends a
connection (``Connection closed … [preauth]``, ``Disconnecting invalid user … Too many
authentication failures``, which always follows ``maximum authentication attempts
exceeded``) is a failure only when nothing before it on that connection was; otherwise it is
a ``network`` event (outcome still ``failure``).  Lines that do not name the peer (``fatal:
Read from socket failed``, ``kex_exchange_identification: …``, old ``Disconnecting: Too many
authentication failures``) take it from the table; when it is unknown the event has no
source and outcome ``unknown``, since a failure nobody can be blamed for must not be counted
against anyone.  ``sentinel parse`` with several jobs cuts files into chunks, each with its own
table, so a connection split across a chunk boundary may count its end once more.

Known differences from fail2ban's sshd filter (whose verdicts depend on later lines): a
``pam_unix(sshd:auth)`` failure counts when it is logged, not when the connection ends;
``Failed publickey`` for an existing account counts (fail2ban ignores it because agents offer
several keys; at sshd's default LogLevel INFO only the later ones are logged); a successful
login never turns earlier lines into failures.
"""

from __future__ import annotations

import re

from sentinel.collectors.parsers.addresses import add_source, normalize_ip
from sentinel.collectors.parsers.syslog import Connections, uses_connections
from sentinel.event import Event

_PORT = r"(\d{1,10})"
#: After ``Failed METHOD for ``: an existing account (no spaces), then sshd's own tail.
_FAILED_VALID = re.compile(r"(<invalid username>|\S+) from (\S+)(?: port " + _PORT + r")?(?: ssh\d?)?(?:: .*)?$")
#: After ``Failed METHOD for invalid user ``: any user name; the last ``from`` whose tail is
#: exactly what sshd writes (method information restricted to keys and hostbased).
_FAILED_INVALID = re.compile(
    r"(.*) from (\S+)(?: port " + _PORT + r")?(?: ssh\d?)?"
    r"(?:: [^\s\"]+(?: [^\s\"]+)?(?: ID .* \(serial \d+\) CA [^\s\"]+ [^\s\"]+)?"
    r"(?:, client user \"[^\"]*\", client host \"[^\"]*\")?)?(?: \[preauth\])?$"
)
_FAILED_ANY = re.compile(r"(.*) from (\S+)(?: port " + _PORT + r")?(?: ssh\d?)?(?: \[preauth\])?$")
_ACCEPTED = re.compile(r"Accepted (\S+) for (\S+) from (\S+) port " + _PORT + r"(?: ssh\d?)?(?:: .*)?$")
_INVALID = re.compile(r"(?:Invalid|Illegal) user (.*) from (\S+)(?: port " + _PORT + r")?(?: \[preauth\])?$")
_CLOSED = re.compile(
    r"Connection (closed|reset) by (?:(?:(authenticating |invalid )?user (.*) )(\S+) port "
    + _PORT
    + r"|([^\s\[]\S*)(?: port "
    + _PORT
    + r")?)( \[preauth\])?$"
)
_DISCONNECTED = re.compile(
    r"Disconnected from (?:(authenticating |invalid )?user (.*) )?(\S+) port " + _PORT + r"( \[preauth\])?$"
)
_RECEIVED = re.compile(
    r"Received disconnect from (?:(\S+) port " + _PORT + r": ?|(\S+?): )(\d+): (.*?)( \[preauth\])?$"
)
_CONNECTION_FROM = re.compile(
    r"Connection from (\S+)(?: port " + _PORT + r")?(?: on \S+(?: port \d+)?)?(?: rdomain .*)?$"
)
_NOT_ALLOWED = re.compile(r"User (\S+) from (\S+) not allowed because .+$")
_NOT_ALLOWED_NOFROM = re.compile(r"User (\S+) not allowed because .+$")
_ROOT_REFUSED = re.compile(r"ROOT LOGIN REFUSED FROM (\S+?)(?: port " + _PORT + r")?(?: \[preauth\])?$")
_REFUSED_CONNECT = re.compile(r"refused connect from .* \(([^()\s]+)\)$")
_ADDRESS_MAPS = re.compile(r"Address (\S+) maps to (\S+), but this does not map back to the address")
_REVERSE_MAPPING = re.compile(r"reverse mapping checking getaddrinfo for (\S+) \[([^\]\s]+)\] failed")
_MAX_ATTEMPTS = re.compile(
    r"maximum authentication attempts exceeded for (?:invalid user )?(.*) from (\S+)"
    r"(?: port " + _PORT + r")?(?: ssh\d?)?(?: \[preauth\])?$"
)
_TOO_MANY = re.compile(
    r"Disconnecting: Too many authentication failures(?: for (?:invalid user )?(.*?))?(?: \[preauth\])?$"
)
_DISCONNECTING = re.compile(
    r"Disconnecting (?:(authenticating |invalid )?user (.*) )?(\S+) port "
    + _PORT
    + r": Too many authentication failures(?: \[preauth\])?$"
)
_USERNAME_CHANGE = re.compile(
    r"Disconnecting (?:authenticating |invalid )?user (?P<user>.*) (\S+) port "
    + _PORT
    + r": Change of username or service not allowed: \((?P=user),.*\)(?: \[preauth\])?$"
)
_NO_IDENT = re.compile(r"Did not receive identification string from (\S+)(?: port " + _PORT + r")?$")
_BAD_VERSION = re.compile(r"Bad protocol version identification .* from (\S+)(?: port " + _PORT + r")?$")
_BANNER = re.compile(r"banner exchange: Connection from (\S+) port " + _PORT + r": .*$")
_NEGOTIATE = re.compile(r"Unable to negotiate with (\S+) port " + _PORT + r": .*$")
_DISPATCH = re.compile(
    r"ssh_dispatch_run_fatal: Connection from (?:(authenticating |invalid )?user (.*) )?(\S+) port "
    + _PORT
    + r": .*?( \[preauth\])?$"
)
_TIMEOUT = re.compile(
    r"Timeout before authentication for (?:connection from )?(\S+?)(?: port " + _PORT + r"| to \S+, pid = \d+)?$"
)
_PAM_FAILURE = re.compile(
    r"PAM: [Aa]uthentication (?:failure|error) for (?:illegal user )?(.*) from (\S+)(?: via \S+)?\s*$"
)
_PAM_UNKNOWN = re.compile(
    r"PAM: User not known to the underlying authentication module for illegal user (.*) from (\S+)\s*$"
)
_SSH_SERVER = re.compile(r"SSH: Server;Ltype: \w+;Remote: (\S+?)-(\d{1,10});")
_KERNEL = re.compile(r"kernel: ?\[[^\]]*\]:? ")


def _with_peer(event: Event, user: str | None, addr: str, port: str | None) -> Event:
    """Add the user and the peer (``source.*``) sshd named to ``event``."""
    if user is not None:
        event["user.name"] = user
    add_source(event, addr)
    if port is not None:
        event["source.port"] = int(port)
    return event


def _failure(action: str, user: str | None, addr: str, port: str | None, etype: str = "start") -> Event:
    """A failed-authentication event from ``addr``."""
    event: Event = {
        "event.category": ["authentication"],
        "event.type": [etype],
        "event.action": action,
        "event.outcome": "failure",
        "event.dataset": "sshd",
        "service.name": "sshd",
        "source.address": addr,
    }
    return _with_peer(event, user, addr, port)


def _network(action: str, user: str | None, addr: str, port: str | None, etype: list[str]) -> Event:
    """A connection event (opened, closed, refused mapping…) that is not a failed attempt."""
    event: Event = {
        "event.category": ["network"],
        "event.type": etype,
        "event.action": action,
        "event.dataset": "sshd",
        "service.name": "sshd",
        "source.address": addr,
    }
    return _with_peer(event, user, addr, port)


def _mark_failed(conns: Connections | None, host: str | None, pid: str | None, addr: str, port: str | None) -> None:
    if conns is not None and pid is not None:
        conns.put((host, pid), (addr, port, True))


def _closing(
    action: str,
    user: str | None,
    addr: str,
    port: str | None,
    counts: bool,
    conns: Connections | None,
    host: str | None,
    pid: str | None,
) -> Event:
    """A line ending a connection: a failure if ``counts`` and the connection had none yet."""
    peer = conns.pop((host, pid)) if conns is not None and pid is not None else None
    if counts and (peer is None or not peer[2]):
        return _failure(action, user, addr, port, "end")
    event = _network(action, user, addr, port, ["connection", "end"])
    if counts:
        event["event.outcome"] = "failure"  # already counted for this connection
    return event


def _unnamed_peer(
    action: str,
    user: str | None,
    conns: Connections | None,
    host: str | None,
    pid: str | None,
    ends: bool,
) -> Event:
    """A failure line that does not name the peer: take it from the connection table.

    ``ends``: the line closes the connection, so it counts only if the connection did not
    fail before, and the connection is forgotten.
    """
    peer = None
    if conns is not None and pid is not None:
        key = (host, pid)
        peer = conns.pop(key) if ends else conns.get(key)
        if peer is not None and peer[0] is not None and not (ends and peer[2]):
            if not ends:
                conns.put(key, (peer[0], peer[1], True))
            return _failure(action, user, peer[0], peer[1], "end" if ends else "start")
    known = peer is not None and peer[0] is not None
    event: Event = {
        "event.category": ["network"] if known else ["authentication"],
        "event.type": ["end"] if ends else ["info"],
        "event.action": action,
        "event.outcome": "failure" if known else "unknown",
        "event.dataset": "sshd",
        "service.name": "sshd",
    }
    if user is not None:
        event["user.name"] = user
    if peer is not None and peer[0] is not None:
        event["source.address"] = peer[0]
        ip = normalize_ip(peer[0])
        if ip is not None:
            event["source.ip"] = ip
        else:
            event["source.domain"] = peer[0]
    return event


@uses_connections
def parse(msg: str, conns: Connections | None = None, host: str | None = None, pid: str | None = None) -> Event | None:
    """Parse one sshd message; ``None`` if it says nothing Sentinel watches.

    ``conns``, ``host`` and ``pid`` (given by the syslog framing) let lines that do not name
    the peer be attributed, and count each connection's failure once.
    """
    event: Event
    c = msg[:1]
    if c == "F":
        if not msg.startswith("Failed "):
            return None
        at = msg.find(" for ", 7)
        if at < 0:
            return None
        at += 5
        user: str | None = None
        # Fast path for the usual "... from ADDR port N ssh2": the same answer as the
        # patterns below (the last " from " followed by exactly sshd's tail), fewer steps.
        if msg.startswith(("invalid user ", "illegal user "), at):
            at += 13
            if msg.endswith(" ssh2"):
                i = msg.rfind(" from ", at - 1)
                if i >= at - 1:
                    addr, sep, port = msg[i + 6 : -5].partition(" port ")
                    if sep and addr and " " not in addr and port.isdecimal() and len(port) <= 10:
                        user = msg[at:i] if i >= at else ""
            if user is None:
                m = _FAILED_INVALID.match(msg, at) or _FAILED_ANY.match(msg, at)
                if m is None:
                    return None
                user, addr, port = m.groups()
        else:
            sp = msg.find(" ", at)
            if sp > at and msg.startswith(" from ", sp) and msg.endswith(" ssh2"):
                addr, sep, port = msg[sp + 6 : -5].partition(" port ")
                if sep and addr and " " not in addr and port.isdecimal() and len(port) <= 10:
                    user = msg[at:sp]
            if user is None:
                m = _FAILED_VALID.match(msg, at) or _FAILED_ANY.match(msg, at)
                if m is None:
                    return None
                user, addr, port = m.groups()
                if user == "<invalid username>":
                    user = None
        event = {
            "event.category": ["authentication"],
            "event.type": ["start"],
            "event.action": "ssh_login_failed",
            "event.outcome": "failure",
            "event.dataset": "sshd",
            "service.name": "sshd",
            "user.name": user,
            "source.address": addr,
        }
        if user is None:
            del event["user.name"]
        _with_peer(event, None, addr, port)
        if conns is not None and pid is not None:
            conns.put((host, pid), (addr, port, True))
        return event
    if c == "I":
        if not msg.startswith(("Invalid user ", "Illegal user ")):
            return None
        i = msg.rfind(" from ", 12)
        addr, sep, port = msg[i + 6 :].partition(" port ")
        if i >= 12 and sep and addr and " " not in addr and port.isdecimal() and len(port) <= 10:
            user = msg[13:i] if i >= 13 else ""
        else:
            m = _INVALID.match(msg)
            if m is None:
                return None
            user, addr, port = m.groups()
        event = {
            "event.category": ["authentication"],
            "event.type": ["start"],
            "event.action": "ssh_invalid_user",
            "event.outcome": "failure",
            "event.dataset": "sshd",
            "service.name": "sshd",
            "user.name": user,
            "source.address": addr,
        }
        _with_peer(event, None, addr, port)
        if conns is not None and pid is not None:
            conns.put((host, pid), (addr, port, True))
        return event
    if c == "A":
        if msg.startswith("Accepted "):
            m = _ACCEPTED.match(msg)
            if m is None:
                return None
            addr = m.group(3)
            event = {
                "event.category": ["authentication"],
                "event.type": ["start"],
                "event.action": "ssh_login",
                "event.outcome": "success",
                "event.dataset": "sshd",
                "service.name": "sshd",
                "user.name": m.group(2),
                "source.address": addr,
                "source.port": int(m.group(4)),
            }
            ip = normalize_ip(addr)
            if ip is not None:
                event["source.ip"] = ip
            else:
                event["source.domain"] = addr
            return event
        m = _ADDRESS_MAPS.match(msg)
        if m is not None:
            event = _network("ssh_reverse_mapping_mismatch", None, m.group(1), None, ["info"])
            return event
        return None
    if c == "C":
        if msg.startswith("Connection from "):
            m = _CONNECTION_FROM.match(msg)
            if m is None:
                return None
            addr, port = m.groups()
            if conns is not None and pid is not None:
                conns.put((host, pid), (addr, port, False))
            return _network("ssh_connection_opened", None, addr, port, ["connection", "start"])
        if msg.startswith("Connection closed by ") and msg.endswith(" [preauth]"):
            addr, sep, port = msg[21:-10].partition(" port ")  # the usual pre-auth close
            if sep and addr and " " not in addr and addr[0] != "[" and port.isdecimal() and len(port) <= 10:
                return _closing("ssh_preauth_disconnect", None, addr, port, True, conns, host, pid)
        m = _CLOSED.match(msg)
        if m is None:
            return None
        how, kind, user, addr, port, addr2, port2, preauth = m.groups()
        if addr is None:
            addr, port = addr2, port2
        # Before authentication: "[preauth]", an (authenticating|invalid) user, or a port
        # with no user at all (closed before the privilege-separated child started).
        # "Connection closed by user alice ..." is after a login; without a port or
        # "[preauth]" (old sshd) it may be either, so it does not count.
        counts = preauth is not None or kind is not None or (user is None and port is not None)
        action = "ssh_preauth_disconnect" if how == "closed" else "ssh_preauth_reset"
        if not counts:
            action = "ssh_connection_closed" if how == "closed" else "ssh_connection_reset"
        return _closing(action, user, addr, port, counts, conns, host, pid)
    if c == "R":
        if msg.startswith("Received disconnect from "):
            m = _RECEIVED.match(msg)
            if m is None:
                return None
            addr, port, addr2, code, _reason, preauth = m.groups()
            # 3 (key exchange failed, what JSch sends on "Auth fail") and 14 (no more
            # authentication methods) are authentication failures even after "[preauth]" is gone.
            counts = preauth is not None or code in ("3", "14")
            return _closing(
                "ssh_preauth_disconnect" if counts else "ssh_disconnected",
                None, addr or addr2, port, counts, conns, host, pid,
            )  # fmt: skip
        if msg.startswith("ROOT LOGIN REFUSED FROM "):
            m = _ROOT_REFUSED.match(msg)
            if m is None:
                return None
            _mark_failed(conns, host, pid, m.group(1), m.group(2))
            return _failure("ssh_root_login_refused", "root", m.group(1), m.group(2))
        if msg.startswith("Read from socket failed: Connection reset by peer"):
            if not msg.endswith(" [preauth]"):
                return None
            return _unnamed_peer("ssh_preauth_reset", None, conns, host, pid, ends=True)
        return None
    if c == "D":
        if msg.startswith("Disconnected from "):
            m = _DISCONNECTED.match(msg)
            if m is None:
                return None
            kind, user, addr, port, preauth = m.groups()
            counts = preauth is not None or kind is not None or user is None
            return _closing(
                "ssh_preauth_disconnect" if counts else "ssh_disconnected",
                user, addr, port, counts, conns, host, pid,
            )  # fmt: skip
        if msg.startswith("Disconnecting: "):
            m = _TOO_MANY.match(msg)
            if m is None:
                return None
            # sshd's verdict (OpenSSH < 6.8), counted like "maximum authentication attempts".
            return _unnamed_peer("ssh_too_many_failures", m.group(1), conns, host, pid, ends=False)
        if msg.startswith("Disconnecting "):
            m = _DISCONNECTING.match(msg)
            if m is not None:
                _kind, user, addr, port = m.groups()
                return _closing("ssh_too_many_failures", user, addr, port, True, conns, host, pid)
            m = _USERNAME_CHANGE.match(msg)
            if m is not None:
                user, addr, port = m.groups()
                _mark_failed(conns, host, pid, addr, port)
                return _failure("ssh_username_change", user, addr, port)
            return None
        if msg.startswith("Did not receive identification string from "):
            m = _NO_IDENT.match(msg)
            if m is None:
                return None
            _mark_failed(conns, host, pid, m.group(1), m.group(2))
            return _failure("ssh_preauth_no_identification", None, m.group(1), m.group(2), "end")
        return None
    if c == "U":
        if msg.startswith("User "):
            m = _NOT_ALLOWED.match(msg)
            if m is not None:
                user, addr = m.groups()
                _mark_failed(conns, host, pid, addr, None)
                return _failure("ssh_user_not_allowed", user, addr, None)
            m = _NOT_ALLOWED_NOFROM.match(msg)
            if m is not None:
                return _unnamed_peer("ssh_user_not_allowed", m.group(1), conns, host, pid, ends=False)
            return None
        if msg.startswith("Unable to negotiate "):
            m = _NEGOTIATE.match(msg)
            if m is not None:
                _mark_failed(conns, host, pid, m.group(1), m.group(2))
                return _failure("ssh_preauth_negotiation_failed", None, m.group(1), m.group(2), "end")
            if msg.startswith("Unable to negotiate a key exchange method"):
                return _unnamed_peer("ssh_preauth_negotiation_failed", None, conns, host, pid, ends=False)
        return None
    if c == "e" or c == "f":
        if msg.startswith(("error: ", "fatal: ")):
            return parse(msg[7:], conns, host, pid)
        return None
    if c == "P":
        if msg.startswith("PAM: "):
            m = _PAM_FAILURE.match(msg)
            if m is not None:
                user, addr = m.groups()
                _mark_failed(conns, host, pid, addr, None)
                return _failure("ssh_pam_auth_failure", user, addr, None)
            m = _PAM_UNKNOWN.match(msg)
            if m is not None:
                user, addr = m.groups()
                _mark_failed(conns, host, pid, addr, None)
                return _failure("ssh_invalid_user", user, addr, None)
        return None  # "Postponed …", and "PAM 2 more …" which the pam parser reads
    if c == "k":
        if msg.startswith("kex_exchange_identification: "):
            return _unnamed_peer("ssh_preauth_bad_identification", None, conns, host, pid, ends=False)
        if msg.startswith("kernel:"):  # journal oddity: a kernel-style prefix inside the message
            m = _KERNEL.match(msg)
            if m is not None and m.end() < len(msg) and msg[m.end()] != "k":
                return parse(msg[m.end() :], conns, host, pid)
        return None
    if c == "B":
        m = _BAD_VERSION.match(msg)
        if m is None:
            return None
        _mark_failed(conns, host, pid, m.group(1), m.group(2))
        return _failure("ssh_preauth_bad_identification", None, m.group(1), m.group(2), "end")
    if c == "b":
        m = _BANNER.match(msg)
        if m is None:
            return None
        _mark_failed(conns, host, pid, m.group(1), m.group(2))
        return _failure("ssh_preauth_bad_identification", None, m.group(1), m.group(2), "end")
    if c == "m":
        m = _MAX_ATTEMPTS.match(msg)
        if m is None:
            return None
        user, addr, port = m.groups()
        _mark_failed(conns, host, pid, addr, port)
        return _failure("ssh_too_many_failures", user, addr, port)
    if c == "s":
        m = _DISPATCH.match(msg)
        if m is None:
            return None
        kind, user, addr, port, preauth = m.groups()
        if preauth is None and kind is None:
            return _network("ssh_protocol_error", user, addr, port, ["connection", "end"])
        _mark_failed(conns, host, pid, addr, port)
        return _failure("ssh_preauth_protocol_error", user, addr, port, "end")
    if c == "T":
        m = _TIMEOUT.match(msg)
        if m is None:
            return None
        _mark_failed(conns, host, pid, m.group(1), m.group(2))
        return _failure("ssh_preauth_timeout", None, m.group(1), m.group(2), "end")
    if c == "r":
        m = _REFUSED_CONNECT.match(msg)
        if m is not None:
            _mark_failed(conns, host, pid, m.group(1), None)
            return _failure("ssh_connection_refused", None, m.group(1), None)
        m = _REVERSE_MAPPING.match(msg)
        if m is not None:
            event = _network("ssh_reverse_mapping_mismatch", None, m.group(2), None, ["info"])
            return event
        return None
    if c == "n":
        if msg.startswith("no matching ") and msg.endswith(" [preauth]"):
            return _unnamed_peer("ssh_preauth_negotiation_failed", None, conns, host, pid, ends=False)
        return None
    if c == "S":
        m = _SSH_SERVER.match(msg)
        if m is not None and conns is not None and pid is not None:
            key = (host, pid)
            if conns.get(key) is None:
                conns.put(key, (m.group(1), m.group(2), False))
        return None
    return None
