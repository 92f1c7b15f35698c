"""sudo and su messages → privileged-command and user-switch events.

sudo logs who ran what as whom::

    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/systemctl status nginx
    alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls
    mallory : user NOT in sudoers ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh

The command is the invoker's own text and comes last, so the fields before it are read
left to right (plain string searches, linear in the line) and everything after
``COMMAND=`` is the command line.  PAM lines sudo and su
write (``pam_unix(sudo:auth): authentication failure; …``) go to the PAM parser.

su (util-linux, shadow and BSD styles)::

    (to root) alice on pts/0            FAILED SU (to root) alice on pts/0
    Successful su for root by alice     FAILED su for root by alice
    + pts/0 alice:root                  - pts/0 alice:root
"""

from __future__ import annotations

import re

from sentinel.event import Event

_INCORRECT = re.compile(r"(\d{1,6}) incorrect password attempts? ; ")
_DENIED = (
    "user NOT in sudoers ; ",
    "user NOT authorized on host ; ",
    "command not allowed ; ",
    "a password is required ; ",
)
_SU_TO = re.compile(r"(FAILED SU )?\(to (\S+)\) (\S+) on (\S+)$")
_SU_FOR = re.compile(r"(Successful|FAILED) su for (\S+) by (\S+)$")
_SU_BSD = re.compile(r"([+-]) (\S+) (\S+):(\S+)$")


def _fields(rest: str) -> tuple[str, str, str] | None:
    """``[TTY=… ; ]PWD=… ; USER=… ; […] COMMAND=…`` → (working directory, target user, command).

    Read left to right with ``str.find`` (linear whatever the text): the working directory
    runs to the first `` ; USER=``, the user (no spaces) to the next `` ; ``, and the command
    is everything after the first `` COMMAND=`` that follows (GROUP, TSID, ENV may come first).
    """
    if rest.startswith("TTY="):
        sep = rest.find(" ; ", 4)
        if sep < 0:
            return None
        rest = rest[sep + 3 :]
    if not rest.startswith("PWD="):
        return None
    at_user = rest.find(" ; USER=", 4)
    if at_user < 0:
        return None
    end_user = rest.find(" ; ", at_user + 8)
    if end_user < 0:
        return None
    user = rest[at_user + 8 : end_user]
    at_cmd = rest.find(" ; COMMAND=", end_user) if not rest.startswith(" ; COMMAND=", end_user) else end_user
    if at_cmd < 0 or not user or " " in user:
        return None
    return rest[4:at_user], user, rest[at_cmd + 11 :]


def parse_sudo(msg: str) -> Event | None:
    """One sudo message: a command run (``sudo_command``) or refused (failure events)."""
    sep = msg.find(" : ")
    if sep < 0:
        return None
    user = msg[:sep].strip()
    if not user or " " in user:
        return None
    rest = msg[sep + 3 :]
    if rest.startswith(("TTY=", "PWD=")):
        fields = _fields(rest)
        if fields is None:
            return None
        pwd, target, command = fields
        return {
            "event.category": ["process"],
            "event.type": ["start"],
            "event.action": "sudo_command",
            "event.outcome": "success",
            "event.dataset": "sudo",
            "service.name": "sudo",
            "user.name": user,
            "user.effective.name": target,
            "process.command_line": command,
            "process.working_directory": pwd,
        }
    attempts = 1
    category = "process"
    if rest[:1].isdigit():
        inc = _INCORRECT.match(rest)
        if inc is None:
            return None
        attempts = int(inc.group(1))
        action = "sudo_auth_failed"
        category = "authentication"
        rest = rest[inc.end() :]
    elif rest.startswith(_DENIED):
        action = "sudo_denied"
        rest = rest[rest.find(" ; ") + 3 :]
    else:
        return None
    event: Event = {
        "event.category": [category],
        "event.type": ["start"],
        "event.action": action,
        "event.outcome": "failure",
        "event.dataset": "sudo",
        "service.name": "sudo",
        "user.name": user,
    }
    fields = _fields(rest)
    if fields is not None:
        event["process.working_directory"], event["user.effective.name"], event["process.command_line"] = fields
    if attempts != 1:
        event["sentinel.attempts"] = attempts
    return event


def _su(outcome: str, user: str, target: str) -> Event:
    return {
        "event.category": ["authentication"],
        "event.type": ["start"],
        "event.action": "su_login" if outcome == "success" else "su_login_failed",
        "event.outcome": outcome,
        "event.dataset": "su",
        "service.name": "su",
        "user.name": user,
        "user.effective.name": target,
    }


def parse_su(msg: str) -> Event | None:
    """One su message: a user switch that succeeded (``su_login``) or failed."""
    c = msg[:1]
    if c == "(" or c == "F":
        m = _SU_TO.match(msg)
        if m is not None:
            failed, target, user, _tty = m.groups()
            return _su("failure" if failed else "success", user, target)
    if c == "S" or c == "F":
        m = _SU_FOR.match(msg)
        if m is not None:
            how, target, user = m.groups()
            return _su("success" if how == "Successful" else "failure", user, target)
    if c == "+" or c == "-":
        m = _SU_BSD.match(msg)
        if m is not None:
            sign, _tty, user, target = m.groups()
            return _su("success" if sign == "+" else "failure", user, target)
    return None
