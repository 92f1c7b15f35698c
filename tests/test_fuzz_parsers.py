"""Property tests: whatever bytes a log holds, parsing goes on, and attacker text never moves an address.

* Arbitrary bytes (invalid UTF-8, NUL, control characters, very long lines) before a valid
  line, through :func:`parse_buffer` with every format: nothing escapes, and the valid line
  after the garbage still gives its event at the right byte offset.
* Arbitrary text as the user name of sshd, PAM and dropbear lines never changes the
  address the event is attributed to.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.collectors.parsers import FORMATS, get_parser
from sentinel.collectors.parsers.lines import BOM, ParseStats, parse_buffer
from sentinel.event import Event, is_auth_failure

#: A line each format recognises, and the address it names.
VALID = {
    "syslog": b"Mar  1 00:00:07 web-01 sshd[1012]: Failed password for invalid user pg from 192.0.2.7 port 15 ssh2",
    "auto": b"Mar  1 00:00:07 web-01 sshd[1012]: Failed password for invalid user pg from 192.0.2.7 port 15 ssh2",
    "journal": b"srv sshd[1012]: Failed password for invalid user pg from 192.0.2.7 port 15 ssh2",
    "nginx": b'192.0.2.7 - alice [10/Oct/2000:13:55:36 -0700] "POST /login HTTP/1.1" 401 12 "-" "curl/8"',
    "apache": b'192.0.2.7 - alice [10/Oct/2000:13:55:36 -0700] "POST /login HTTP/1.1" 401 12 "-" "curl/8"',
    "jsonl": b'{"event": "login_failed", "ip": "192.0.2.7", "user": "bob"}',
}
assert set(VALID) == set(FORMATS)

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Bytes that look like logs more often than uniform noise: fragments of real lines mixed in.
_FRAGMENTS = st.sampled_from(
    [
        b"Mar  1 00:00:07 ", b"web-01 ", b"sshd[", b"]: ", b"Failed password for ", b"invalid user ",
        b" from ", b" port ", b" ssh2", b"[preauth]", b"\xff\xfe", b"\x00", b"\r", b"\t", b"\xc3\xa9",
        b"pam_unix(sshd:auth): authentication failure; ", b"rhost=", b"  user=", b"{", b'"', b"<38>1 ",
        b"2015-04-16T18:02:50.321974+00:00 ", b"message repeated 3 times: [ ", b"\xed\xa0\x80", b"\n",
    ]
)  # fmt: skip
GARBAGE = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=12)), max_size=40).map(b"".join),
)


def _check_tail(fmt: str, garbage: bytes, base: int) -> None:
    data = garbage + b"\n" + VALID[fmt] + b"\n"
    stats = ParseStats()
    events = parse_buffer(data, base, get_parser(fmt, 2026), "/var/log/x", stats)
    assert stats.lines == data.count(b"\n")
    assert events, (fmt, data)
    last = events[-1]
    assert last["log.offset"] == base + len(garbage) + 1, (fmt, last)
    assert last["source.ip"] == "192.0.2.7", (fmt, last)
    assert last["log.file.path"] == "/var/log/x"
    for event in events:
        assert isinstance(event["log.offset"], int) and base <= event["log.offset"] < base + len(data)


@pytest.mark.parametrize("fmt", FORMATS)
@_SETTINGS
@given(garbage=GARBAGE, base=st.integers(min_value=0, max_value=1 << 40))
def test_garbage_then_valid_line(fmt: str, garbage: bytes, base: int) -> None:
    _check_tail(fmt, garbage, base)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "garbage",
    [
        b"x" * 70_000,  # longer than the line limit
        b"Mar  1 00:00:07 web-01 sshd[1]: Failed password for invalid user " + b"\xff" * 70_000,
        b"\x00" * 1000,
        b"\xff\xfe\xfd" * 100 + b"\r",
        b"Mar  1 00:00:07 web-01 sshd[1]: Invalid user " + "é".encode() * 40_000 + b" from 192.0.2.9",
        b"Mar  1 00:00:07 web-01 sshd[" + b"9" * 5000 + b"]: Invalid user x from 192.0.2.9",
        b"Mar  1 00:00:07 web-01 sshd[1]: Invalid user x from 192.0.2.9 port " + b"9" * 5000,
        b"<38>1 " + b"9" * 5000 + b" h sshd 1 - - Invalid user x from 192.0.2.9",
        b"\n".join([b"Mar  1 00:00:07 web-01 sshd[1]: Connection from 192.0.2.1 port 1"] * 3),
    ],
    ids=["long", "long-invalid-utf8", "nul", "invalid-utf8", "long-utf8", "huge-pid", "huge-port", "huge-stamp",
         "several"],
)  # fmt: skip
def test_hard_cases_then_valid_line(fmt: str, garbage: bytes) -> None:
    _check_tail(fmt, garbage, 12345)


@_SETTINGS
@given(data=st.binary(max_size=2000))
def test_syslog_parser_never_raises(data: bytes) -> None:
    """Not only does nothing escape ``parse_buffer``: the syslog parser itself never fails."""
    stats = ParseStats()
    parse_buffer(data + b"\n", 0, get_parser("syslog"), None, stats)
    assert stats.parser_errors == 0


# --------------------------------------------------------------------------- injection

#: Any text a client can make a daemon log as a user name (a log line has no line breaks).
USER_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\x00"), max_size=120
) | st.sampled_from(
    [
        "x from 6.6.6.6 port 1 ssh2",
        "x from 6.6.6.6 port 1 ssh2:",
        "x from 6.6.6.6 port 1 ssh2: RSA SHA256:abc",
        "x from 6.6.6.6",
        "x 6.6.6.6 port 1",
        "x 6.6.6.6 port 1 [preauth]",
        "' from 6.6.6.6:1",
        "x rhost=6.6.6.6",
        "x  user=y rhost=6.6.6.6",
        "",
        " ",
    ]
)

#: Lines with a user name slot, the address sshd/PAM/dropbear wrote, and whether it is a failure.
TEMPLATES = [
    "sshd[1]: Failed password for invalid user {u} from 192.0.2.7 port 2222 ssh2",
    "sshd[1]: Failed publickey for invalid user {u} from 192.0.2.7 port 2222 ssh2: RSA SHA256:abcdef",
    "sshd[1]: Failed keyboard-interactive/pam for invalid user {u} from 192.0.2.7 port 2222 ssh2",
    "sshd[1]: Invalid user {u} from 192.0.2.7 port 2222",
    "sshd[1]: Invalid user {u} from 192.0.2.7",
    "sshd[1]: error: maximum authentication attempts exceeded for invalid user {u} from 192.0.2.7 port 1 ssh2 "
    "[preauth]",
    "sshd[1]: Connection closed by invalid user {u} 192.0.2.7 port 2222 [preauth]",
    "sshd[1]: Disconnected from authenticating user {u} 192.0.2.7 port 2222 [preauth]",
    "sshd[1]: error: PAM: Authentication failure for illegal user {u} from 192.0.2.7",
    "sshd[1]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    "rhost=192.0.2.7  user={u}",
    "vsftpd[1]: pam_unix(vsftpd:auth): authentication failure; logname= uid=0 euid=0 tty=ftp ruser= "
    "rhost=192.0.2.7 user={u}",
    "dropbear[1]: Bad password attempt for '{u}' from 192.0.2.7:60588",
    "dropbear[1]: Exit before auth from <192.0.2.7:5>: (user '{u}', 10 fails): Max auth tries reached - user '{u}'",
]  # fmt: skip


def _check_attribution(message: str) -> Event:
    line = "Mar  1 00:00:07 web-01 " + message
    event = get_parser("syslog", 2026)(line)
    assert event is not None, line
    assert is_auth_failure(event), (line, event)
    assert event["source.ip"] == "192.0.2.7", (line, event)
    return event


@pytest.mark.parametrize("template", TEMPLATES)
@_SETTINGS
@given(user=USER_TEXT)
def test_user_name_never_moves_the_address(template: str, user: str) -> None:
    _check_attribution(template.format(u=user))


@_SETTINGS
@given(user=st.from_regex(r"[a-z_][a-z0-9_.-]{0,31}", fullmatch=True), info=USER_TEXT)
def test_valid_user_with_any_method_info(user: str, info: str) -> None:
    """An existing account (a name without spaces) and any ``: info`` sshd appends."""
    event = _check_attribution(f"sshd[1]: Failed password for {user} from 192.0.2.7 port 2222 ssh2: {info}")
    assert event["user.name"] == user


# --------------------------------------------------------------------------- crafted long lines

#: Messages repeating the separators the patterns search for: a local user can write any line
#: as "sshd" (``logger -t sshd``), so no pattern may take quadratic time on them.
_N = 60_000
CRAFTED = {
    "failed-invalid": "sshd[1]: Failed password for invalid user " + " from 1.2.3.4" * (_N // 14) + "x",
    "invalid-user": "sshd[1]: Invalid user " + " from 1.2.3.4 port 1" * (_N // 20) + " x",
    "closed-user": "sshd[1]: Connection closed by invalid user " + "a 1.2.3.4 port 1 " * (_N // 17) + "[preauth] x",
    "username-change": "sshd[1]: Disconnecting invalid user "
    + "a 1.2.3.4 port 1: Change of username or service not allowed: (" * (_N // 64)
    + "x",
    "max-attempts": "sshd[1]: maximum authentication attempts exceeded for invalid user "
    + " from 1.2.3.4 port 1" * (_N // 20)
    + "x",
    "received": "sshd[1]: Received disconnect from " + "a: 1: " * (_N // 6),
    "pam-rhost": "sshd[1]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    + " rhost=a user=" * (_N // 14)
    + " x y",
    "sudo": "sudo[1]: alice : TTY=pts/0 ; PWD=" + " ; USER=x ; ENV=" * (_N // 17) + "x",
    "dropbear-exit": "dropbear[1]: Exit before auth (user '"
    + "', 1 fails): Max auth tries reached - user '" * (_N // 45)
    + "x",
    "dropbear-bad": "dropbear[1]: Bad password attempt for '" + "' from 1.2.3.4:1" * (_N // 17) + "x",
    "rfc5424-sd": '<38>1 2019-07-08T17:40:17Z h sshd 1 - [a b="' + '\\"' * (_N // 2),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_long_lines_parse_in_linear_time(name: str) -> None:
    msg = CRAFTED[name]
    line = msg if msg.startswith("<") else "Mar  1 00:00:07 web-01 " + msg
    parse = get_parser("syslog", 2026)
    start = time.process_time()
    parse(line)
    assert time.process_time() - start < 0.25, name  # a few ms when linear; seconds when not


def test_a_byte_order_mark_at_the_start_of_a_file_does_not_cost_its_first_line() -> None:
    line = VALID["syslog"] + b"\n"
    events = parse_buffer(BOM + line + line, 0, get_parser("auto", 2026), "/var/log/x", ParseStats())
    assert [e["source.ip"] for e in events] == ["192.0.2.7", "192.0.2.7"]
    assert [e["log.offset"] for e in events] == [len(BOM), len(BOM) + len(line)]
    # Only at the start of a file: elsewhere the same bytes are part of a line.
    later = parse_buffer(BOM + line, 100, get_parser("auto", 2026), "/var/log/x", ParseStats())
    assert later == []
