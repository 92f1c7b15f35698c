"""Syslog framing and the sshd, PAM, sudo, su and dropbear message parsers, kind by kind."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers import ssh as ssh_parser
from sentinel.collectors.parsers.addresses import normalize_ip, source_fields
from sentinel.collectors.parsers.syslog import Connections, SyslogParser
from sentinel.collectors.parsers.timestamps import SyslogClock, iso_to_utc
from sentinel.event import Event, is_auth_failure, missing_fields

HEAD = "Mar  1 00:00:07 web-01"


def parser(year: int | None = 2026) -> SyslogParser:
    p = get_parser("syslog", year)
    assert isinstance(p, SyslogParser)
    return p


def parse(line: str) -> Event | None:
    """``line`` through a fresh syslog parser (year 2026)."""
    return parser()(line)


def sshd(msg: str, pid: int = 1012, prog: str = "sshd") -> Event | None:
    return parse(f"{HEAD} {prog}[{pid}]: {msg}")


#: ``subset`` keyword → field name.
FIELDS = {
    name.replace(".", "_").replace("@", "_"): name
    for name in (
        "@timestamp", "event.category", "event.type", "event.action", "event.outcome", "event.dataset",
        "source.address", "source.ip", "source.port", "source.domain", "user.name", "user.effective.name",
        "process.pid", "process.name", "process.command_line", "process.working_directory", "host.hostname",
        "service.name", "sentinel.attempts",
    )
}  # fmt: skip


def subset(event: Event | None, **fields: Any) -> bool:
    """``event`` has every ``fields`` item (``source_ip=...`` for ``source.ip``; ``None``: absent)."""
    assert event is not None
    want = {FIELDS[k]: v for k, v in fields.items()}
    got = {k: event.get(k) for k in want}
    assert got == want, event
    return True


def failure_from(event: Event | None, ip: str) -> None:
    assert event is not None
    assert is_auth_failure(event), event
    assert event["source.ip"] == ip, event


# --------------------------------------------------------------------------- framing


def test_rfc3164_frame_fields() -> None:
    event = sshd("Failed password for root from 192.0.2.7 port 2222 ssh2")
    assert event is not None
    assert event["@timestamp"] == iso_utc("2026-03-01T00:00:07")
    assert event["event.kind"] == "event"
    assert event["host.hostname"] == "web-01"
    assert event["process.name"] == "sshd"
    assert event["process.pid"] == 1012
    assert event["message"] == "Failed password for root from 192.0.2.7 port 2222 ssh2"


def iso_utc(local: str) -> str:
    """A naive local ISO time → the ``@timestamp`` the parsers give it."""
    return f"{datetime.fromisoformat(local).astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z"


@pytest.mark.parametrize(
    "line",
    [
        "Nov 23 21:50:19 sshd[8148]: Failed password for root from 192.0.2.7 port 1 ssh2",  # no host
        "Feb 7 16:01:07 linux-m899 sshd[5106]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar  3 00:17:22 [sshd]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Jun 25 23:53:34 [sshd] Failed password for root from 192.0.2.7 port 1 ssh2",
        "<38>Mar  3 00:17:22 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar  3 00:17:22.123456 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar  3 2024 00:17:22 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar  3 00:17:22 2024 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "2015-04-16T18:02:50.321974+00:00 host sshd[2716]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "2015-04-16 18:02:50 host sshd[2716]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "srv sshd[123]: Failed password for root from 192.0.2.7 port 1 ssh2",  # journal short, no stamp
        "sshd[123]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar  3 00:17:22 web sshd[1]: [ID 800047 auth.info] Failed password for root from 192.0.2.7 port 1 ssh2",
        "<38>1 2019-07-08T17:40:16.954167-04:00 h.example.com sshd 57915 - - "
        "Failed password for root from 192.0.2.7 port 1 ssh2",
    ],
)
def test_frame_layouts(line: str) -> None:
    event = parse(line)
    failure_from(event, "192.0.2.7")
    assert event is not None
    assert event["process.name"] == "sshd"
    assert event["message"] == "Failed password for root from 192.0.2.7 port 1 ssh2"
    assert event["@timestamp"].endswith("Z")


def test_frame_without_host() -> None:
    event = parse("Nov 23 21:50:19 sshd[8148]: Failed password for root from 192.0.2.7 port 1 ssh2")
    assert event is not None
    assert "host.hostname" not in event
    assert event["process.pid"] == 8148


def test_year_after_time_is_not_a_host() -> None:
    event = parse("Mar  3 00:17:22 2024 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2")
    assert event is not None
    assert event["host.hostname"] == "web"
    assert event["@timestamp"][:4] in ("2024", "2023")  # UTC of local midnight-ish may be the day before


def test_fractional_seconds_kept() -> None:
    event = parse("Mar  3 00:17:22.123456 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2")
    assert event is not None
    assert event["@timestamp"].endswith(":22.123456Z")


def test_iso_stamps_to_utc() -> None:
    event = parse(
        "2015-04-16T18:02:50.321974+02:00 host sshd[2716]: Failed password for root from 192.0.2.7 port 1 ssh2"
    )
    assert event is not None
    assert event["@timestamp"] == "2015-04-16T16:02:50.321974Z"
    event = parse("2015-04-16T18:02:50Z host sshd[2716]: Failed password for root from 192.0.2.7 port 1 ssh2")
    assert event is not None
    assert event["@timestamp"] == "2015-04-16T18:02:50Z"


def test_iso_to_utc() -> None:
    assert iso_to_utc("2019-07-08T17:40:16.954167-04:00") == "2019-07-08T21:40:16.954167Z"
    assert iso_to_utc("2019-07-08T17:40:16.5+00:00") == "2019-07-08T17:40:16.500000Z"
    assert iso_to_utc("2019-07-08T17:40:16.000+00:00") == "2019-07-08T17:40:16Z"
    assert iso_to_utc("2019-07-08T17:40:16.954167123Z") == "2019-07-08T17:40:16.954167Z"
    assert iso_to_utc("2019-07-08T17:40:16+0200") == "2019-07-08T15:40:16Z"
    assert iso_to_utc("not a stamp at all, no") is None
    assert iso_to_utc("2019-13-08T17:40:16Z") is None


def test_rfc5424() -> None:
    event = parse(
        "<38>1 2019-07-08T17:40:17.954167-04:00 hostname.example.com sshd 55555 - "
        '[timeQuality tzKnown="1" isSynced="0"][xxx@123 test="[brackets]"] '
        "Failed unknown for invalid user redmond from 192.0.2.2 port 55555 ssh2"
    )
    failure_from(event, "192.0.2.2")
    assert subset(
        event,
        _timestamp="2019-07-08T21:40:17.954167Z",
        host_hostname="hostname.example.com",
        process_pid=55555,
        user_name="redmond",
    )
    nil = parse("<38>1 2019-07-08T17:40:17Z - sshd - - - Failed password for root from 192.0.2.2 port 1 ssh2")
    assert nil is not None
    assert "host.hostname" not in nil and "process.pid" not in nil


def test_stamp_less_line_gets_current_time() -> None:
    before = datetime.now().astimezone()
    event = parse("srv sshd[123]: Failed password for root from 192.0.2.7 port 1 ssh2")
    assert event is not None
    stamp = datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00"))
    assert abs((stamp - before).total_seconds()) < 60
    assert event["host.hostname"] == "srv"


def test_message_api_for_journal_entries() -> None:
    p = parser()
    event = p.message("Invalid user bob from 192.0.2.9 port 4", "sshd", "2026-03-01T00:00:00Z", "h", "77")
    assert subset(event, event_action="ssh_invalid_user", process_pid=77, _timestamp="2026-03-01T00:00:00Z")
    assert p.message("Invalid user bob from 192.0.2.9", "sshd", "", None, "x") is not None
    assert p.message("routine", "CRON", "2026-03-01T00:00:00Z", "h", "1") is None


def test_message_repeated_multiplies_attempts() -> None:
    event = sshd("message repeated 3 times: [ Failed password for root from 192.0.2.7 port 22 ssh2]")
    failure_from(event, "192.0.2.7")
    assert event is not None
    assert event["sentinel.attempts"] == 3
    assert event["message"] == "Failed password for root from 192.0.2.7 port 22 ssh2"
    pam = sshd(
        "message repeated 2 times: [ PAM 3 more authentication failures; logname= uid=0 euid=0 tty=ssh "
        "ruser= rhost=192.0.2.7  user=root]"
    )
    assert pam is not None and pam["sentinel.attempts"] == 6


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "Mar  1 00:00:07",
        "Foo 99 99:99:99 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar 32 00:00:07 web sshd[1]: Failed password for root from 192.0.2.7 port 1 ssh2",
        "Mar  1 00:00:07 web sshd[99999999999999999999]: Failed password for root from 192.0.2.7 port 1 ssh2",
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /x: y HTTP/1.0" 401 -',
        "Mar  1 00:00:07 web-01 systemd-logind[612]: New session 1008 of user bob.",
        "Mar  1 00:00:07 web-01 sshd[1]: Server listening on 0.0.0.0 port 22.",
        "Mar  1 00:00:07 web-01 sshd[1]: Postponed publickey for git from 192.0.2.1 port 57904 ssh2 [preauth]",
        "Mar  1 00:00:07 web-01 sshd[1]: input_userauth_request: invalid user root [preauth]",
    ],
)
def test_lines_without_events(line: str) -> None:
    assert parse(line) is None


def test_quiet_programs_are_skipped() -> None:
    for prog in ("CRON", "cron", "crond"):
        line = f"{HEAD} {prog}[1003]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
        assert parse(line) is None


# --------------------------------------------------------------------------- clock


def test_year_inference_puts_stamps_in_the_past() -> None:
    clock = SyslogClock(now=datetime(2027, 1, 2, 10, 0))
    assert clock.stamp("Dec 31 23:59:59") is not None
    assert clock.stamp("Dec 31 23:59:59") == _utc(2026, 12, 31, 23, 59, 59)
    assert clock.stamp("Jan  2 09:00:00") == _utc(2027, 1, 2, 9, 0, 0)
    # up to two days in the future is clock skew, not last year
    assert clock.stamp("Jan  3 12:00:00") == _utc(2027, 1, 3, 12, 0, 0)
    assert clock.stamp("Feb 10 12:00:00") == _utc(2026, 2, 10, 12, 0, 0)


def test_year_inference_leap_day() -> None:
    clock = SyslogClock(now=datetime(2027, 3, 1))
    assert clock.stamp("Feb 29 12:00:00") == _utc(2024, 2, 29, 12, 0, 0)


def test_year_override() -> None:
    clock = SyslogClock(year=2005, now=datetime(2027, 1, 2))
    assert clock.stamp("Dec 31 23:59:59") == _utc(2005, 12, 31, 23, 59, 59)
    event = get_parser("syslog", year=2005)("Feb 25 14:34:10 belka sshd[1]: Invalid user x from 192.0.2.1")
    assert event is not None
    assert event["@timestamp"] == _utc(2005, 2, 25, 14, 34, 10)


def test_clock_rejects_nonsense() -> None:
    clock = SyslogClock(year=2026)
    assert clock.stamp("Foo  1 00:00:00") is None
    assert clock.stamp("Feb 30 00:00:00") is None
    assert clock.stamp("Mar  1 25:00:00") is None
    assert clock.stamp("Mar  1 00:00:xx") is None


def _utc(year: int, month: int, day: int, hour: int, minute: int, second: int) -> str:
    """A local wall-clock time → its ``@timestamp``."""
    return f"{datetime(year, month, day, hour, minute, second).astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z"


_TZ_SNIPPET = """
from sentinel.collectors.parsers import get_parser
p = get_parser("syslog", 2024)
for stamp in ("Jan 15 12:00:00", "Jul 15 12:00:00", "Mar 10 01:59:59", "Mar 10 03:00:00"):
    print(p(stamp + " h sshd[1]: Invalid user x from 192.0.2.1")["@timestamp"])
print(p("2024-07-15T12:00:00 h sshd[1]: Invalid user x from 192.0.2.1")["@timestamp"])
"""


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", ["2024-01-15T12:00:00Z", "2024-07-15T12:00:00Z", "2024-03-10T01:59:59Z",
                 "2024-03-10T03:00:00Z", "2024-07-15T12:00:00Z"]),
        # New York: EST (-5) in January, EDT (-4) in July; DST starts 2024-03-10 at 02:00 local
        ("America/New_York", ["2024-01-15T17:00:00Z", "2024-07-15T16:00:00Z", "2024-03-10T06:59:59Z",
                              "2024-03-10T07:00:00Z", "2024-07-15T16:00:00Z"]),
        ("Asia/Kolkata", ["2024-01-15T06:30:00Z", "2024-07-15T06:30:00Z", "2024-03-09T20:29:59Z",
                          "2024-03-09T21:30:00Z", "2024-07-15T06:30:00Z"]),
    ],
)  # fmt: skip
def test_local_time_zone_conversion(tz: str, expected: list[str]) -> None:
    """Year-less and zone-less stamps are local time: converted with the process's TZ."""
    if not os.path.exists(f"/usr/share/zoneinfo/{tz}"):
        pytest.skip(f"no zoneinfo for {tz}")
    env = dict(os.environ, TZ=tz)
    out = subprocess.run(
        [sys.executable, "-c", _TZ_SNIPPET], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == expected


# --------------------------------------------------------------------------- sshd


@pytest.mark.parametrize(
    ("msg", "ip", "user"),
    [
        ("Failed password for root from 192.0.2.7 port 2222 ssh2", "192.0.2.7", "root"),
        ("Failed password for invalid user admin from 192.0.2.7 port 2222 ssh2", "192.0.2.7", "admin"),
        ("Failed password for illegal user admin from 192.0.2.7 port 2222", "192.0.2.7", "admin"),
        ("Failed password for invalid user  from 192.0.2.7 port 2222 ssh2", "192.0.2.7", ""),
        ("Failed password for root from 2001:db8::7 port 2222 ssh2", "2001:db8::7", "root"),
        ("Failed password for root from ::ffff:192.0.2.7 port 2222 ssh2", "192.0.2.7", "root"),
        ("Failed password for root from 192.0.2.7", "192.0.2.7", "root"),
        ("Failed publickey for root from 192.0.2.7 port 2222 ssh2: RSA SHA256:abcdef", "192.0.2.7", "root"),
        ("Failed publickey for invalid user git from 192.0.2.7 port 22 ssh2: ED25519 SHA256:x", "192.0.2.7", "git"),
        ("Failed keyboard-interactive/pam for invalid user j from 192.0.2.7 port 2 ssh2", "192.0.2.7", "j"),
        ("Failed keyboard-interactive for <invalid username> from 192.0.2.7 port 2 ssh2", "192.0.2.7", None),
        ("Failed none for invalid user x from 192.0.2.7 port 2 ssh2", "192.0.2.7", "x"),
        ("Failed unknown for invalid user redmond from 192.0.2.7 port 59197 ssh2", "192.0.2.7", "redmond"),
        ('Failed hostbased for dan from 192.0.2.7 port 45785 ssh2: RSA 8c:e3, client user "dan", '
         'client host "localhost"', "192.0.2.7", "dan"),
        ("error: PAM: Authentication failure for stefanor from 192.0.2.7", "192.0.2.7", "stefanor"),
        ("error: PAM: authentication error for james from 192.0.2.7 via 192.168.1.201", "192.0.2.7", "james"),
        ("error: PAM: Authentication failure for illegal user x from 192.0.2.7", "192.0.2.7", "x"),
        ("error: PAM: User not known to the underlying authentication module for illegal user k from 192.0.2.7 ",
         "192.0.2.7", "k"),
        ("Invalid user ftp from 192.0.2.7", "192.0.2.7", "ftp"),
        ("Invalid user ftp from 192.0.2.7 port 37220", "192.0.2.7", "ftp"),
        ("Illegal user ftp from 192.0.2.7", "192.0.2.7", "ftp"),
        ("Invalid user  from 192.0.2.7 port 34916", "192.0.2.7", ""),
        ("User root from 192.0.2.7 not allowed because not listed in AllowUsers", "192.0.2.7", "root"),
        ("User root from 192.0.2.7 not allowed because listed in DenyUsers", "192.0.2.7", "root"),
        ("User root from 192.0.2.7 not allowed because a group is listed in DenyGroups", "192.0.2.7", "root"),
        ("ROOT LOGIN REFUSED FROM ::ffff:192.0.2.7", "192.0.2.7", "root"),
        ("ROOT LOGIN REFUSED FROM 192.0.2.7 port 12345 [preauth]", "192.0.2.7", "root"),
        ("refused connect from _U2F_@::ffff:192.0.2.7 (::ffff:192.0.2.7)", "192.0.2.7", None),
        ("error: maximum authentication attempts exceeded for root from 192.0.2.7 port 49940 ssh2 [preauth]",
         "192.0.2.7", "root"),
        ("error: maximum authentication attempts exceeded for invalid user xxx from 192.0.2.7 port 1 ssh2 [preauth]",
         "192.0.2.7", "xxx"),
    ],
)  # fmt: skip
def test_sshd_failures(msg: str, ip: str, user: str | None) -> None:
    event = sshd(msg)
    failure_from(event, ip)
    assert event is not None
    assert event.get("user.name") == user
    assert event["event.dataset"] == "sshd" and event["service.name"] == "sshd"
    assert event["event.action"].startswith("ssh_")


def test_sshd_failure_event_shape() -> None:
    event = sshd("Failed password for invalid user admin from 192.0.2.7 port 2222 ssh2")
    assert subset(
        event,
        event_category=["authentication"],
        event_type=["start"],
        event_action="ssh_login_failed",
        event_outcome="failure",
        source_address="192.0.2.7",
        source_ip="192.0.2.7",
        source_port=2222,
    )


def test_sshd_host_name_source() -> None:
    event = sshd("User allena from example.com not allowed because not in any group")
    assert event is not None and is_auth_failure(event)
    assert event["source.domain"] == "example.com" and event["source.address"] == "example.com"
    assert "source.ip" not in event


@pytest.mark.parametrize("prog", ["sshd", "sshd-session", "sshd-auth"])
def test_sshd_program_names(prog: str) -> None:
    failure_from(sshd("Failed password for root from 192.0.2.1 port 56502 ssh2", prog=prog), "192.0.2.1")


def test_accepted_login_is_success() -> None:
    event = sshd("Accepted publickey for dave from 198.51.100.58 port 57236 ssh2: ED25519 SHA256:2117")
    assert subset(
        event,
        event_category=["authentication"],
        event_action="ssh_login",
        event_outcome="success",
        user_name="dave",
        source_ip="198.51.100.58",
        source_port=57236,
    )
    assert event is not None and not is_auth_failure(event)


@pytest.mark.parametrize(
    ("msg", "ip", "action"),
    [
        ("Connection closed by 192.0.2.7 port 50843 [preauth]", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Connection closed by 192.0.2.7 [preauth]", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Connection closed by 192.0.2.7 port 35352", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Connection closed by authenticating user root 192.0.2.7 port 46038 [preauth]", "192.0.2.7",
         "ssh_preauth_disconnect"),
        ("Connection closed by invalid user  192.0.2.7 port 34916 [preauth]", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Connection reset by 192.0.2.7 port 14282 [preauth]", "192.0.2.7", "ssh_preauth_reset"),
        ("Connection reset by authenticating user root 192.0.2.7 port 1558 [preauth]", "192.0.2.7",
         "ssh_preauth_reset"),
        ("Disconnected from 192.0.2.7 port 36985 [preauth]", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Disconnected from authenticating user root 192.0.2.7 port 33553 [preauth]", "192.0.2.7",
         "ssh_preauth_disconnect"),
        ("Disconnected from invalid user x 192.0.2.7 port 33553 [preauth]", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Received disconnect from 192.0.2.7 port 25778:11: Bye Bye [preauth]", "192.0.2.7",
         "ssh_preauth_disconnect"),
        ("error: Received disconnect from 192.0.2.7: 3: com.jcraft.jsch.JSchException: Auth fail [preauth]",
         "192.0.2.7", "ssh_preauth_disconnect"),
        ("Received disconnect from 192.0.2.7: 3: com.jcraft.jsch.JSchException: Auth fail", "192.0.2.7",
         "ssh_preauth_disconnect"),
        ("Received disconnect from 2001:db8::7: 14: No supported authentication methods available [preauth]",
         "2001:db8::7", "ssh_preauth_disconnect"),
        ("error: Received disconnect from 192.0.2.7 port 1684:14: No supported authentication methods available "
         "[preauth]", "192.0.2.7", "ssh_preauth_disconnect"),
        ("Did not receive identification string from 192.0.2.7", "192.0.2.7", "ssh_preauth_no_identification"),
        ("Did not receive identification string from 192.0.2.7 port 35836", "192.0.2.7",
         "ssh_preauth_no_identification"),
        ("Bad protocol version identification 'dummy' from 192.0.2.7 port 31778", "192.0.2.7",
         "ssh_preauth_bad_identification"),
        ("banner exchange: Connection from 192.0.2.7 port 44105: invalid format", "192.0.2.7",
         "ssh_preauth_bad_identification"),
        ("Unable to negotiate with 192.0.2.7 port 55419: no matching cipher found. Their offer: aes256-cbc "
         "[preauth]", "192.0.2.7", "ssh_preauth_negotiation_failed"),
        ("fatal: Unable to negotiate with 192.0.2.7 port 1: no matching key exchange method found. Their offer: x",
         "192.0.2.7", "ssh_preauth_negotiation_failed"),
        ("ssh_dispatch_run_fatal: Connection from 192.0.2.7 port 33738: message authentication code incorrect "
         "[preauth]", "192.0.2.7", "ssh_preauth_protocol_error"),
        ("fatal: Timeout before authentication for 192.0.2.7 port 55555", "192.0.2.7", "ssh_preauth_timeout"),
        ("Timeout before authentication for connection from 192.0.2.7 to 127.0.0.1, pid = 29098", "192.0.2.7",
         "ssh_preauth_timeout"),
        ("Disconnecting invalid user admin 192.0.2.7 port 44004: Change of username or service not allowed: "
         "(admin,ssh-connection) -> (user,ssh-connection) [preauth]", "192.0.2.7", "ssh_username_change"),
    ],
)  # fmt: skip
def test_sshd_preauth_noise(msg: str, ip: str, action: str) -> None:
    event = sshd(msg)
    failure_from(event, ip)
    assert event is not None and event["event.action"] == action


@pytest.mark.parametrize(
    "msg",
    [
        "Connection closed by 192.0.2.5",  # old sshd: before or after a login, unknown
        "Connection closed by user alice 192.0.2.5 port 22",
        "Disconnected from user alice 192.0.2.5 port 22",
        "Received disconnect from 192.0.2.5 port 5:11: disconnected by user",
        "ssh_dispatch_run_fatal: Connection from user alice 192.0.2.5 port 1: Broken pipe",
        "Connection from 192.0.2.5 port 51353 on 192.0.2.8 port 22",
        "Address 1.2.3.4 maps to 1234.bbbbbb.com, but this does not map back to the address - POSSIBLE BREAK-IN "
        "ATTEMPT!",
        "reverse mapping checking getaddrinfo for host.example [1.2.3.4] failed - POSSIBLE BREAK-IN ATTEMPT!",
        "User root not allowed because account is locked",  # no peer known
        "Disconnecting: Too many authentication failures for root [preauth]",  # no peer known
        "error: kex_exchange_identification: Connection closed by remote host",  # no peer known
    ],
)
def test_sshd_lines_that_are_not_failures(msg: str) -> None:
    event = sshd(msg)
    assert event is not None
    assert not is_auth_failure(event), event


def test_reverse_mapping_is_a_network_event() -> None:
    event = sshd(
        "Address 1.2.3.4 maps to 1234.bbbbbb.com, but this does not map back to the address - "
        "POSSIBLE BREAK-IN ATTEMPT!"
    )
    assert subset(event, event_category=["network"], event_action="ssh_reverse_mapping_mismatch", source_ip="1.2.3.4")


def test_unattributable_failure_has_no_source() -> None:
    event = sshd("Disconnecting: Too many authentication failures for root [preauth]")
    assert subset(event, event_action="ssh_too_many_failures", event_outcome="unknown", user_name="root")
    assert event is not None and "source.ip" not in event


# --------------------------------------------------------------------------- sshd connections


def feed(lines: list[str], p: SyslogParser | None = None) -> list[Event | None]:
    p = p or parser()
    return [p(f"{HEAD} {line}") for line in lines]


def test_connection_from_attributes_later_lines() -> None:
    events = feed(
        [
            "sshd[26713]: Connection from 192.0.2.77 port 51353 on 127.0.0.1 port 22",
            "sshd[26713]: Disconnecting: Too many authentication failures for root [preauth]",
            "sshd[26714]: fatal: Read from socket failed: Connection reset by peer [preauth]",
        ]
    )
    assert subset(events[0], event_action="ssh_connection_opened", source_ip="192.0.2.77", source_port=51353)
    assert events[0] is not None and not is_auth_failure(events[0])
    failure_from(events[1], "192.0.2.77")
    assert events[2] is not None and "source.ip" not in events[2]  # another pid: another connection


def test_context_is_per_host_and_pid() -> None:
    p = parser()
    p("Mar  1 00:00:01 a sshd[5]: Connection from 192.0.2.1 port 1")
    other = p("Mar  1 00:00:02 b sshd[5]: error: kex_exchange_identification: banner line too long")
    same = p("Mar  1 00:00:02 a sshd[5]: error: kex_exchange_identification: banner line too long")
    assert other is not None and not is_auth_failure(other)
    failure_from(same, "192.0.2.1")


def test_connection_end_counts_once() -> None:
    events = feed(
        [
            "sshd[7]: Failed password for root from 192.0.2.8 port 4 ssh2",
            "sshd[7]: Connection closed by authenticating user root 192.0.2.8 port 4 [preauth]",
            "sshd[8]: Connection closed by authenticating user root 192.0.2.8 port 5 [preauth]",
        ]
    )
    failure_from(events[0], "192.0.2.8")
    assert subset(events[1], event_category=["network"], event_outcome="failure", source_ip="192.0.2.8")
    failure_from(events[2], "192.0.2.8")


def test_max_attempts_then_disconnecting_counts_once() -> None:
    events = feed(
        [
            "sshd[9]: error: maximum authentication attempts exceeded for invalid user x from 192.0.2.7 port 1 ssh2 "
            "[preauth]",
            "sshd[9]: Disconnecting invalid user x 192.0.2.7 port 1: Too many authentication failures [preauth]",
        ]
    )
    failure_from(events[0], "192.0.2.7")
    assert events[1] is not None and not is_auth_failure(events[1])


def test_unnamed_failures_use_the_connection() -> None:
    events = feed(
        [
            "sshd[3]: Connection from 192.0.2.3 port 39678 on 192.168.1.9 port 22",
            "sshd[3]: fatal: Unable to negotiate a key exchange method [preauth]",
            "sshd[3]: fatal: Unable to negotiate a key exchange method [preauth]",
            "sshd[4]: Connection from 192.0.2.4 port 1",
            "sshd[4]: fatal: no matching mac found: client hmac-x server hmac-y [preauth]",
            "sshd[5]: Connection from 192.0.2.5 port 1",
            "sshd[5]: error: kex_exchange_identification: read: Connection reset by peer",
            "sshd[5]: Connection reset by 192.0.2.5 port 1",
        ]
    )
    failure_from(events[1], "192.0.2.3")
    failure_from(events[2], "192.0.2.3")
    failure_from(events[4], "192.0.2.4")
    failure_from(events[6], "192.0.2.5")
    assert events[7] is not None and not is_auth_failure(events[7])


def test_connections_table_is_bounded() -> None:
    conns = Connections(limit=10)
    for i in range(1000):
        conns.put(("h", str(i)), ("192.0.2.1", None, False))
    assert len(conns) <= 21
    assert conns.get(("h", "999")) is not None
    assert conns.get(("h", "0")) is None


def test_ssh_parse_without_framing() -> None:
    """The message parser is also a plain function of the message."""
    failure_from(ssh_parser.parse("Invalid user x from 192.0.2.1 port 2"), "192.0.2.1")
    assert ssh_parser.parse("Disconnecting: Too many authentication failures [preauth]") is not None


# --------------------------------------------------------------------------- sshd: attacker-controlled text


@pytest.mark.parametrize(
    ("msg", "ip", "user"),
    [
        ("Failed password for invalid user 1.2.3.4 from 5.6.7.8 port 22 ssh2", "5.6.7.8", "1.2.3.4"),
        ("Failed password for user from 127.0.0.1 port 20000 ssh1: ruser from 1.2.3.4", "127.0.0.1", "user"),
        ("Failed password for invalid user from 10.10.1.1 from 127.0.0.1 port 58946 ssh2", "127.0.0.1",
         "from 10.10.1.1"),
        ("Failed password for invalid user test from 10.10.1.2 port 55555 ssh2 from 127.0.0.1 port 58946 ssh2",
         "127.0.0.1", "test from 10.10.1.2 port 55555 ssh2"),
        # The user name "x from 6.6.6.6 port 1 ssh2:" sent from 192.0.2.9 (password auth has no ": info").
        ("Failed password for invalid user x from 6.6.6.6 port 1 ssh2: from 192.0.2.9 port 22 ssh2", "192.0.2.9",
         "x from 6.6.6.6 port 1 ssh2:"),
        ("Failed password for invalid user x from 6.6.6.6 port 1 ssh2: RSA SHA256:y from 192.0.2.9 port 2 ssh2",
         "192.0.2.9", "x from 6.6.6.6 port 1 ssh2: RSA SHA256:y"),
        ("Failed publickey for invalid user x from 6.6.6.6 port 1 ssh2 from 192.0.2.9 port 2 ssh2: RSA SHA256:z",
         "192.0.2.9", "x from 6.6.6.6 port 1 ssh2"),
        ('Failed hostbased for invalid user x from 192.0.2.9 port 2 ssh2: RSA fp, client user "a from 6.6.6.6 '
         'port 1 ssh2", client host "h"', "192.0.2.9", "x"),
        ("Invalid user x from 6.6.6.6 port 1 from 192.0.2.9 port 2", "192.0.2.9", "x from 6.6.6.6 port 1"),
        ("Invalid user x from 6.6.6.6 from 192.0.2.9", "192.0.2.9", "x from 6.6.6.6"),
        ("Connection closed by authenticating user test 127.0.0.1 port 12345 192.0.2.9 port 46039 [preauth]",
         "192.0.2.9", "test 127.0.0.1 port 12345"),
        ("Bad protocol version identification 'dummy string' from 6.6.6.6' from 192.0.2.9 port 31778", "192.0.2.9",
         None),
        ("error: maximum authentication attempts exceeded for invalid user a from 6.6.6.6 port 1 ssh2 from "
         "192.0.2.9 port 3 ssh2 [preauth]", "192.0.2.9", "a from 6.6.6.6 port 1 ssh2"),
        ("error: PAM: Authentication failure for illegal user a from 6.6.6.6 from 192.0.2.9", "192.0.2.9",
         "a from 6.6.6.6"),
        ("Disconnecting invalid user a 6.6.6.6 port 1: x 192.0.2.9 port 5: Change of username or service not "
         "allowed: (a 6.6.6.6 port 1: x,ssh-connection) -> (b,ssh-connection) [preauth]", "192.0.2.9",
         "a 6.6.6.6 port 1: x"),
    ],
)  # fmt: skip
def test_injected_addresses_are_ignored(msg: str, ip: str, user: str | None) -> None:
    event = sshd(msg)
    failure_from(event, ip)
    assert event is not None and event.get("user.name") == user


# --------------------------------------------------------------------------- PAM


@pytest.mark.parametrize(
    ("line", "ip", "user", "service"),
    [
        (f"{HEAD} sshd[2716]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
         "rhost=192.0.2.112  user=root", "192.0.2.112", "root", "sshd"),
        (f"{HEAD} sshd[2716]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
         "ruser=rda rhost=192.0.2.113 [preauth]", "192.0.2.113", "rda", "sshd"),
        (f"{HEAD} pure-ftpd: (pam_unix) authentication failure; logname= uid=0 euid=0 tty=pure-ftpd "
         "ruser=sample-user rhost=192.168.1.1 ", "192.168.1.1", "sample-user", None),
        (f"{HEAD} pop(pam_unix)[4920]: authentication failure; logname= uid=0 euid=0 tty= ruser= "
         "rhost=192.168.10.3 user=mailuser", "192.168.10.3", "mailuser", None),
        (f"{HEAD} vsftpd: pam_unix: authentication failure; logname= uid=0 euid=0 tty=ftp ruser=an8767 "
         "rhost=::ffff:192.0.2.5", "192.0.2.5", "an8767", None),
        (f"{HEAD} dovecot: pam_sss(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot "
         "ruser=bob rhost=2001:db8::5 user=bob", "2001:db8::5", "bob", "dovecot"),
        (f"{HEAD} daemon: pam_unix(auth): authentication failure; logname= uid=0 euid=0 tty=xxx ruser=test "
         "rhost=192.0.2.151 rhost=192.0.2.1", "192.0.2.1", "test rhost=192.0.2.151", None),
        (f"{HEAD} daemon: pam_unix(auth): authentication failure; logname= uid=0 euid=0 tty=xxx ruser= "
         "rhost=192.0.2.2 user=test rhost=192.0.2.152", "192.0.2.2", "test rhost=192.0.2.152", None),
    ],
)  # fmt: skip
def test_pam_failures(line: str, ip: str, user: str, service: str | None) -> None:
    event = parse(line)
    failure_from(event, ip)
    assert subset(event, event_action="pam_auth_failure", event_dataset="pam", user_name=user, service_name=service)


def test_pam_failure_with_host_name() -> None:
    event = parse(
        f"{HEAD} sshd[16004]: (pam_unix) authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
        "rhost=71-13-115-12.static.example.com  user=root"
    )
    assert event is not None and is_auth_failure(event)
    assert event["source.domain"] == "71-13-115-12.static.example.com"


def test_pam_more_failures_stand_for_several_attempts() -> None:
    event = sshd("PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.7  user=root")
    failure_from(event, "192.0.2.7")
    assert subset(event, sentinel_attempts=2, user_name="root")


def test_pam_local_failure_has_no_source() -> None:
    event = parse(
        f"{HEAD} sudo: pam_unix(sudo:auth): authentication failure; logname=alice uid=1000 euid=0 "
        "tty=/dev/pts/0 ruser=alice rhost=  user=alice"
    )
    assert subset(event, event_outcome="failure", user_name="alice", service_name="sudo", process_name="sudo")
    assert event is not None and "source.address" not in event


def test_pam_sessions() -> None:
    opened = sshd("pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)")
    assert subset(
        opened,
        event_category=["session"],
        event_type=["start"],
        event_action="session_opened",
        user_name="alice",
        service_name="sshd",
    )
    closed = sshd("pam_unix(sshd:session): session closed for user alice")
    assert subset(closed, event_category=["session"], event_type=["end"], event_action="session_closed")
    su = parse(f"{HEAD} su[5]: pam_unix(su:session): session opened for user root(uid=0) by alice(uid=1000)")
    assert subset(su, user_name="alice", user_effective_name="root", service_name="su")
    user = parse(f"{HEAD} systemd[5]: pam_unix(systemd-user:session): session opened for user bob(uid=1001) by (uid=0)")
    assert subset(user, user_name="bob", service_name="systemd-user")


def test_pam_cron_sessions_are_skipped_whatever_the_program() -> None:
    assert parse(f"{HEAD} crond-wrapper[5]: pam_unix(crond:session): session opened for user root by (uid=0)") is None
    assert parse(f"{HEAD} CROND[5]: pam_unix(cron:session): session closed for user root") is None


# --------------------------------------------------------------------------- sudo and su


def test_sudo_command() -> None:
    event = parse(f"{HEAD} sudo[9]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id -u")
    assert subset(
        event,
        event_category=["process"],
        event_type=["start"],
        event_action="sudo_command",
        event_outcome="success",
        event_dataset="sudo",
        user_name="alice",
        user_effective_name="root",
        process_command_line="/usr/bin/id -u",
        process_working_directory="/home/alice",
        process_name="sudo",
    )


def test_sudo_command_with_group_and_env_and_tricky_command() -> None:
    event = parse(
        f"{HEAD} sudo[9]: bob : TTY=pts/1 ; PWD=/tmp ; USER=postgres ; GROUP=postgres ; ENV=A=1 ; "
        "COMMAND=/bin/sh -c echo ; USER=root ; COMMAND=x"
    )
    assert subset(event, user_effective_name="postgres", process_command_line="/bin/sh -c echo ; USER=root ; COMMAND=x")


@pytest.mark.parametrize(
    ("msg", "action", "attempts"),
    [
        ("alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls",
         "sudo_auth_failed", 3),
        ("alice : 1 incorrect password attempt ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls",
         "sudo_auth_failed", None),
        ("mallory : user NOT in sudoers ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh", "sudo_denied", None),
        ("mallory : command not allowed ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh", "sudo_denied", None),
    ],
)  # fmt: skip
def test_sudo_failures(msg: str, action: str, attempts: int | None) -> None:
    event = parse(f"{HEAD} sudo[9]: {msg}")
    assert subset(event, event_action=action, event_outcome="failure", sentinel_attempts=attempts)
    assert event is not None and event["user.effective.name"] == "root"


@pytest.mark.parametrize(
    ("msg", "outcome"),
    [
        ("(to root) alice on pts/0", "success"),
        ("FAILED SU (to root) alice on pts/0", "failure"),
        ("Successful su for root by alice", "success"),
        ("FAILED su for root by alice", "failure"),
        ("+ pts/0 alice:root", "success"),
        ("- pts/0 alice:root", "failure"),
    ],
)
def test_su(msg: str, outcome: str) -> None:
    event = parse(f"{HEAD} su[9]: {msg}")
    assert subset(
        event,
        event_category=["authentication"],
        event_outcome=outcome,
        event_action="su_login" if outcome == "success" else "su_login_failed",
        event_dataset="su",
        user_name="alice",
        user_effective_name="root",
    )


def test_su_pam_failure_goes_to_pam() -> None:
    event = parse(
        f"{HEAD} su[9]: pam_unix(su:auth): authentication failure; logname=alice uid=1000 euid=0 tty=pts/0 "
        "ruser=alice rhost=  user=root"
    )
    assert subset(event, event_action="pam_auth_failure", event_outcome="failure", user_name="root")


# --------------------------------------------------------------------------- dropbear


@pytest.mark.parametrize(
    ("msg", "ip", "action", "user"),
    [
        ("bad password attempt for 'root' from 198.51.100.87:5543", "198.51.100.87", "dropbear_login_failed", "root"),
        ("Bad password attempt for 'root' from 1.2.3.4:60588", "1.2.3.4", "dropbear_login_failed", "root"),
        ("Bad password attempt for 'x' from 6.6.6.6:1' from 1.2.3.4:60588", "1.2.3.4", "dropbear_login_failed",
         "x' from 6.6.6.6:1"),
        ("login attempt for nonexistent user from ::ffff:198.51.100.215:60495", "198.51.100.215",
         "dropbear_invalid_user", None),
        ("Login attempt for nonexistent user 'bob' from [2001:db8::1]:60495", "2001:db8::1",
         "dropbear_invalid_user", "bob"),
        ("Exit before auth (user 'root', 10 fails): Max auth tries reached - user 'root' from 1.2.3.4:60588",
         "1.2.3.4", "dropbear_too_many_failures", "root"),
        ("[825] Jul 10 23:57:29 Exit before auth from <192.0.2.3:52289>: (user 'root', 10 fails): Max auth tries "
         "reached - user 'root'", "192.0.2.3", "dropbear_too_many_failures", "root"),
        ("Exit before auth from <192.0.2.3:52325>: Max auth tries reached - user 'is invalid'", "192.0.2.3",
         "dropbear_too_many_failures", None),
        ("[825] Jul 10 23:53:52 Bad password attempt for 'root' from 1.2.3.4:52289", "1.2.3.4",
         "dropbear_login_failed", "root"),
    ],
)  # fmt: skip
def test_dropbear_failures(msg: str, ip: str, action: str, user: str | None) -> None:
    event = parse(f"{HEAD} dropbear[1335]: {msg}")
    failure_from(event, ip)
    assert subset(event, event_action=action, user_name=user, event_dataset="dropbear")


def test_dropbear_success() -> None:
    event = parse(f"{HEAD} dropbear[1335]: Password auth succeeded for 'root' from 192.0.2.1:60588")
    assert subset(
        event, event_action="dropbear_login", event_outcome="success", source_ip="192.0.2.1", source_port=60588
    )
    key = parse(f"{HEAD} dropbear[1335]: Pubkey auth succeeded for 'root' with key md5 0c:fe:23 from 192.0.2.1:60588")
    assert subset(key, event_action="dropbear_login", user_name="root")


# --------------------------------------------------------------------------- addresses and schema


def test_normalize_ip() -> None:
    assert normalize_ip("192.0.2.1") == "192.0.2.1"
    assert normalize_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("[2001:db8::1]") == "2001:db8::1"
    for bad in ("192.030.0.6", "256.1.1.1", "1.2.3", "example.com", "", "١.٢.٣.٤"):
        assert normalize_ip(bad) is None, bad
    assert source_fields("example.com", "22") == {
        "source.address": "example.com",
        "source.domain": "example.com",
        "source.port": 22,
    }


def test_every_field_is_in_the_schema() -> None:
    lines = [
        "sshd[1]: Failed password for root from 192.0.2.7 port 2222 ssh2",
        "sshd[1]: Accepted password for root from 192.0.2.7 port 2222 ssh2",
        "sshd[2]: Connection from 192.0.2.8 port 1 on 192.0.2.1 port 22",
        "sshd[2]: Connection closed by 192.0.2.8 port 1 [preauth]",
        "sshd[3]: Disconnecting: Too many authentication failures [preauth]",
        "sshd[4]: PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.7  user=root",
        "sshd[4]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
        "sudo[5]: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id",
        "sudo[5]: alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/ls",
        "su[6]: (to root) alice on pts/0",
        "dropbear[7]: Bad password attempt for 'root' from 1.2.3.4:60588",
    ]
    events = [e for e in feed(lines) if e is not None]
    assert len(events) == len(lines)
    assert missing_fields(events) == set()
