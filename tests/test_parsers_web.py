"""nginx/Apache access and error logs, the JSON app login log, and ``--format auto`` dispatch."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers.jsonl import parse_app_json
from sentinel.collectors.parsers.lines import ParseStats, parse_buffer
from sentinel.collectors.parsers.web import (
    access_stamp_to_utc,
    make_access_parser,
    parse_apache_error,
    parse_error_message,
    parse_nginx_error,
)
from sentinel.event import Event, is_auth_failure

STAMP = "[10/Oct/2000:13:55:36 -0700]"
UTC_STAMP = "2000-10-10T20:55:36Z"
COMBINED = (
    '203.0.113.7 - alice [10/Oct/2000:13:55:36 -0700] "GET /admin/login.php?next=%2F&x=1 HTTP/1.1" '
    '200 2326 "http://example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
)


def access(line: str) -> Event:
    event = make_access_parser()(line)
    assert event is not None, line
    return event


def local_utc(year: int, month: int, day: int, hour: int, minute: int, second: int) -> str:
    """The UTC ISO form of a local wall-clock time (error logs carry no zone)."""
    return datetime(year, month, day, hour, minute, second).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------- access logs


def test_combined_all_fields() -> None:
    event = get_parser("nginx")(COMBINED)
    assert event == {
        "@timestamp": UTC_STAMP,
        "event.kind": "event",
        "event.category": ["web"],
        "event.type": ["access"],
        "event.dataset": "nginx.access",
        "event.outcome": "success",
        "service.name": "nginx",
        "source.address": "203.0.113.7",
        "source.ip": "203.0.113.7",
        "user.name": "alice",
        "http.request.method": "GET",
        "url.original": "/admin/login.php?next=%2F&x=1",
        "url.path": "/admin/login.php",
        "url.query": "next=%2F&x=1",
        "http.version": "1.1",
        "http.response.status_code": 200,
        "http.response.body.bytes": 2326,
        "http.request.referrer": "http://example.com/start.html",
        "user_agent.original": "Mozilla/4.08 [en] (Win98; I ;Nav)",
    }


def test_datasets_per_format() -> None:
    assert get_parser("apache")(COMBINED)["event.dataset"] == "apache.access"  # type: ignore[index]
    event = get_parser("auto")(COMBINED)
    assert event is not None
    assert event["event.dataset"] == "web.access"
    assert "service.name" not in event


def test_common_format_and_dash_fields() -> None:
    event = access('192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.0" 304 -')
    assert event["http.response.status_code"] == 304
    assert event["event.outcome"] == "success"
    for absent in ("user.name", "http.response.body.bytes", "http.request.referrer", "user_agent.original"):
        assert absent not in event


def test_dash_request_and_dash_referrer_agent() -> None:
    event = access(f'192.0.2.1 - - {STAMP} "-" 400 0 "-" "-"')
    assert event["event.outcome"] == "failure"
    assert event["http.response.body.bytes"] == 0
    for absent in ("http.request.method", "url.original", "http.request.referrer", "user_agent.original"):
        assert absent not in event


def test_vhost_combined() -> None:
    event = get_parser("apache")(
        f'www.example.com:443 198.51.100.4 - - {STAMP} "POST /login HTTP/2.0" 302 5 "-" "curl/8"'
    )
    assert event is not None
    assert event["source.ip"] == "198.51.100.4"
    assert event["url.domain"] == "www.example.com"
    assert event["http.version"] == "2.0"


@pytest.mark.parametrize(
    ("client", "ip"),
    [
        ("2001:db8::1", "2001:db8::1"),
        ("::1", "::1"),
        ("fe80::1", "fe80::1"),
        ("FE80::A", "fe80::a"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ],
)
def test_ipv6_clients(client: str, ip: str) -> None:
    line = f'{client} - - {STAMP} "GET / HTTP/1.1" 200 1 "-" "-"'
    for fmt in ("auto", "nginx", "apache"):
        event = get_parser(fmt)(line)
        assert event is not None, fmt
        assert event["source.ip"] == ip
        assert event["source.address"] == client
        assert "url.domain" not in event


def test_ipv6_client_with_remote_user_containing_spaces() -> None:
    event = access(f'2001:db8::1 - a b {STAMP} "GET / HTTP/1.1" 401 1 "-" "-"')
    assert event["source.ip"] == "2001:db8::1"
    assert event["user.name"] == "a b"


def test_hostname_client() -> None:
    event = access(f'crawler.example.net - - {STAMP} "GET / HTTP/1.1" 200 1 "-" "-"')
    assert event["source.domain"] == "crawler.example.net"
    assert "source.ip" not in event


def test_apache_escaped_quotes_do_not_shift_fields() -> None:
    line = (
        r'192.0.2.9 - - [10/Oct/2000:13:55:36 -0700] "GET /a\"b\" 200 1 \"x HTTP/1.1" 404 7 '
        r'"http://ref/\" 8.8.8.8" "Mozilla \"9.9.9.9\" - - [01/Jan/2001:00:00:00 +0000]"'
    )
    event = access(line)
    assert event["source.ip"] == "192.0.2.9"
    assert event["http.response.status_code"] == 404
    assert event["http.response.body.bytes"] == 7
    assert event["url.original"] == '/a"b" 200 1 "x'
    assert event["http.request.referrer"] == 'http://ref/" 8.8.8.8'
    assert event["user_agent.original"] == 'Mozilla "9.9.9.9" - - [01/Jan/2001:00:00:00 +0000]'
    assert event["@timestamp"] == UTC_STAMP
    assert "sentinel.parse_error" not in event


def test_nginx_hex_escapes_stay_escaped() -> None:
    line = f'192.0.2.9 - - {STAMP} "GET /\\x22 HTTP/1.1" 200 1 "-" "x\\x22 \\x22 401 1 \\x22y"'
    event = access(line)
    assert event["url.original"] == "/\\x22"
    assert event["user_agent.original"] == "x\\x22 \\x22 401 1 \\x22y"
    assert event["http.response.status_code"] == 200


def test_user_agent_and_extra_fields_containing_ips_are_not_the_client() -> None:
    line = (
        f'192.0.2.10 - - {STAMP} "GET / HTTP/1.1" 401 1 "http://10.0.0.1/" '
        '"Mozilla 203.0.113.66 client: 6.6.6.6 [client 6.6.6.6]" "198.51.100.77"'
    )
    for fmt in ("auto", "nginx", "apache"):
        event = get_parser(fmt)(line)
        assert event is not None
        assert event["source.ip"] == "192.0.2.10"
        assert is_auth_failure(event)


def test_binary_request_line() -> None:
    event = access(f'192.0.2.5 - - {STAMP} "\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03" 400 157 "-" "-"')
    assert event["source.ip"] == "192.0.2.5"
    assert event["http.response.status_code"] == 400
    assert "http.request.method" not in event
    assert "url.original" not in event


def test_request_variants() -> None:
    old = access(f'192.0.2.5 - - {STAMP} "GET /" 200 1')
    assert (old["http.request.method"], old["url.path"]) == ("GET", "/")
    assert "http.version" not in old
    proxy = access(f'192.0.2.5 - - {STAMP} "GET http://user@evil.example:8080/p/a?q=1 HTTP/1.1" 200 1')
    assert proxy["url.domain"] == "evil.example:8080"
    assert (proxy["url.path"], proxy["url.query"]) == ("/p/a", "q=1")
    spaced = access(f'192.0.2.5 - - {STAMP} "GET /a b HTTP/1.1" 200 1')
    assert spaced["url.original"] == "/a b"


def test_raw_quote_falls_back_to_loose_parse_keeping_the_client() -> None:
    event = access(f'192.0.2.77 - - {STAMP} "GET /a"b HTTP/1.1" 401 5 "-" "x"y"')
    assert event["source.ip"] == "192.0.2.77"
    assert event["http.response.status_code"] == 401
    assert "sentinel.parse_error" in event
    assert "event.original" in event


@pytest.mark.parametrize(
    ("status", "outcome", "auth"),
    [
        (200, "success", False),
        (302, "success", False),
        (401, "failure", True),
        (403, "failure", True),
        (404, "failure", False),
        (500, "failure", False),
    ],
)
def test_status_outcome(status: int, outcome: str, auth: bool) -> None:
    event = access(f'192.0.2.1 - - {STAMP} "POST /wp-login.php HTTP/1.1" {status} 1 "-" "-"')
    assert event["event.outcome"] == outcome
    assert is_auth_failure(event) is auth
    if auth:
        assert event["event.category"] == ["authentication", "web"]
        assert event["event.action"] == "http_auth_failed"
    else:
        assert event["event.category"] == ["web"]


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("10/Oct/2000:13:55:36 -0700", "2000-10-10T20:55:36Z"),
        ("10/Oct/2000:13:55:59 -0700", "2000-10-10T20:55:59Z"),  # same minute: cache hit
        ("10/Oct/2000:13:55:36 +0000", "2000-10-10T13:55:36Z"),  # same minute, other zone
        ("10/Oct/2000:13:55:36 +0530", "2000-10-10T08:25:36Z"),
        ("31/Dec/1999:23:30:00 -0100", "2000-01-01T00:30:00Z"),
        ("01/Mar/2024:00:10:00 +0100", "2024-02-29T23:10:00Z"),
    ],
)
def test_access_stamp_to_utc(stamp: str, expected: str) -> None:
    assert access_stamp_to_utc(stamp) == expected
    assert access_stamp_to_utc(stamp) == expected


def test_bad_stamps_are_not_access_lines() -> None:
    parse = make_access_parser()
    assert parse('192.0.2.1 - - [10/Foo/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1') is None
    assert parse('192.0.2.1 - - [31/Feb/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1') is None
    assert parse('192.0.2.1 - - [10/Oct/2000:13:55:36 +9900] "GET / HTTP/1.1" 200 1') is None
    assert parse("not an access log line") is None
    assert parse("") is None


def test_one_megabyte_url() -> None:
    url = "/" + "A" * (1 << 20)
    line = f'192.0.2.3 - - {STAMP} "GET {url}?q=1 HTTP/1.1" 414 0 "-" "-"'
    started = time.perf_counter()
    event = access(line)
    assert time.perf_counter() - started < 1.0
    assert event["url.path"] == url
    assert event["source.ip"] == "192.0.2.3"
    # Through the line loop: the default cap truncates it (no event, no crash) …
    stats = ParseStats()
    assert parse_buffer((line + "\n").encode(), 0, make_access_parser(), "x.log", stats) == []
    assert stats.truncated == 1
    # … a larger cap keeps it.
    stats = ParseStats()
    events = parse_buffer((line + "\n").encode(), 0, make_access_parser(), None, stats, max_line=4 << 20)
    assert len(events) == 1 and events[0]["url.path"] == url


def test_pathological_lines_stay_linear() -> None:
    lines = [
        "192.0.2.1 - " + f'x {STAMP} "' * 20000,
        "192.0.2.1 - - " + STAMP + ' "' + '\\"' * 200000,
        "2024/01/01 00:00:00 [error] 1#1: *1 " + 'user "x" was not found in "/f", client: 1.1.1.1' * 2000,
        "2024/01/01 00:00:00 [error] 1#1: *1 " + 'user "x" was not found in "/f", client: 1.1.1.1' * 80,
        "2024/01/01 00:00:00 [error] 1#1: *1 " + ", client: 1.1.1.1, server: s" * 130,
        "[Sat Jun 01 02:17:42 2013] [error] [client 1.2.3.4] " + "user x not found x" * 5000,
    ]
    parse = get_parser("auto")
    for line in lines:
        started = time.perf_counter()
        parse(line)
        assert time.perf_counter() - started < 1.0, line[:80]


def test_invalid_utf8_via_parse_buffer() -> None:
    good = f'192.0.2.1 - - {STAMP} "GET / HTTP/1.1" 200 1 "-" "ok"\n'.encode()
    bad = f'198.51.100.2 - - {STAMP} "GET /\xff HTTP/1.1" 401 1 "-" "ua'.encode() + b'\xc3\x28\x00"\n'
    stats = ParseStats()
    events = parse_buffer(good + bad, 100, get_parser("auto"), "/var/log/nginx/access.log", stats)
    assert [e["source.ip"] for e in events] == ["192.0.2.1", "198.51.100.2"]
    assert events[1]["log.offset"] == 100 + len(good)
    assert "sentinel.parse_error" in events[1]
    assert events[1]["user_agent.original"] == "ua\\xc3("
    assert is_auth_failure(events[1])
    assert stats.invalid_utf8 == 1 and stats.nul_bytes == 1 and stats.events == 2


# --------------------------------------------------------------------------- nginx error log

NGINX_TAIL = ', client: 192.0.2.50, server: www.example.com, request: "GET /private/ HTTP/1.1", host: "www.example.com"'


@pytest.mark.parametrize(
    ("message", "action", "user"),
    [
        ('user "bob" was not found in "/etc/nginx/.htpasswd"', "http_auth_failed", "bob"),
        ('user "bob": password mismatch', "http_auth_failed", "bob"),
        ("no user/password was provided for basic authentication", "http_auth_missing", None),
        ("PAM: user 'bob' - not authenticated: Authentication failure", "http_auth_failed", "bob"),
        ("access forbidden by rule", "http_access_denied", None),
    ],
)
def test_nginx_auth_failures(message: str, action: str, user: str | None) -> None:
    line = f"2012/04/09 11:53:29 [error] 2865#0: *66647 {message}{NGINX_TAIL}"
    event = get_parser("nginx")(line)
    assert event is not None
    assert is_auth_failure(event)
    assert event["event.category"] == ["authentication", "web"]
    assert (event["event.action"], event.get("user.name")) == (action, user)
    assert event["source.ip"] == "192.0.2.50"
    assert event["event.dataset"] == "nginx.error"
    assert event["process.pid"] == 2865
    assert event["@timestamp"] == local_utc(2012, 4, 9, 11, 53, 29) + "Z"
    assert get_parser("auto")(line) == event


def test_nginx_ipv6_client_and_referrer() -> None:
    line = (
        '2014/04/02 12:37:58 [error] 6563#0: *1861 user "u": password mismatch, client: 2001:db8::5, '
        'server: s, request: "GET /admin HTTP/1.1", host: "s", referrer: "https://s/admin"'
    )
    event = parse_nginx_error(line)
    assert event is not None and event["source.ip"] == "2001:db8::5"


def test_nginx_user_name_injection_uses_the_real_context() -> None:
    user = 'x": password mismatch, client: 6.6.6.6, server: s, request: "GET / HTTP/1.1", host: "h'
    line = f'2014/04/03 22:20:40 [error] 1#0: *3 user "{user}" was not found in "/f"{NGINX_TAIL}'
    event = parse_nginx_error(line)
    assert event is not None
    assert event["source.ip"] == "192.0.2.50"
    assert event["user.name"] == user


def test_nginx_many_injected_contexts_do_not_hide_the_real_one() -> None:
    fake = ', client: 6.6.6.6, server: s, request: "GET / HTTP/1.1", host: "h"'
    user = "x" + fake * 40
    line = f'2014/04/03 22:20:40 [error] 1#0: *3 user "{user}": password mismatch{NGINX_TAIL}'
    started = time.perf_counter()
    event = parse_nginx_error(line)
    assert time.perf_counter() - started < 0.1
    assert event is not None and event["source.ip"] == "192.0.2.50"


def test_nginx_odd_context_still_attributed_to_first_client() -> None:
    line = (
        '2014/04/03 22:20:40 [error] 1#0: *3 user "x": password mismatch, client: 192.0.2.8, server: s, '
        'request: "GET /"a HTTP/1.1"'
    )
    event = parse_nginx_error(line)
    assert event is not None and event["source.ip"] == "192.0.2.8"


def test_nginx_other_signals_are_not_authentication() -> None:
    tls = (
        "2020/11/25 14:42:16 [crit] 76952#76952: *2454307 SSL_do_handshake() failed (SSL: error:1408F0C6:"
        "SSL routines:ssl3_get_record:packet length too long) while SSL handshaking, client: 192.0.2.4, "
        "server: 0.0.0.0:443"
    )
    limited = '2015/10/29 20:01:02 [error] 1#0: *9 limiting requests, excess: 1.852 by zone "one"' + NGINX_TAIL
    for line, action in ((tls, "tls_handshake_failed"), (limited, "http_rate_limited")):
        event = parse_nginx_error(line)
        assert event is not None
        assert (event["event.action"], event["event.outcome"]) == (action, "failure")
        assert not is_auth_failure(event)
    upstream = (
        "2020/11/25 16:02:45 [error] 1#1: *5 connect() failed (111: Connection refused) while connecting to "
        'upstream, client: 192.0.2.4, server: s, request: "GET / HTTP/2.0", upstream: "http://127.0.0.1:3000/", '
        'host: "s"'
    )
    assert parse_nginx_error(upstream) is None


# --------------------------------------------------------------------------- Apache error log


@pytest.mark.parametrize(
    ("line", "ip", "port", "action", "user"),
    [
        (
            "[Sat Jun 01 02:17:42 2013] [error] [client 192.168.33.1] user root not found: /",
            "192.168.33.1",
            None,
            "http_auth_failed",
            "root",
        ),
        (
            "[Thu Jul 11 01:21:43 2013] [error] [client 2001:db8::8b2c] user  not found: /",
            "2001:db8::8b2c",
            None,
            "http_auth_failed",
            None,
        ),
        (
            "[Mon Jan 01 10:00:00.123456 2014] [auth_basic:error] [pid 123] [client 1.2.3.4:5678] AH01618: "
            "user x not found: /",
            "1.2.3.4",
            5678,
            "http_auth_failed",
            "x",
        ),
        (
            "[Sat Jul 20 21:39:11.978080 2013] [auth_basic:error] [pid 1:tid 2] [client 127.0.0.1:51390] AH01617: "
            'user bob: authentication failure for "/basic/file": Password Mismatch',
            "127.0.0.1",
            51390,
            "http_auth_failed",
            "bob",
        ),
        (
            "[Sat Jul 20 22:11:44.1 2013] [authz_owner:error] [pid 1:tid 2] [client [2001:db8::1]:51548] AH01637: "
            "Authorization of user t to access /p failed, reason: file owner dan does not match",
            "2001:db8::1",
            51548,
            "http_authz_failed",
            "t",
        ),
        (
            "[Wed Jul 17 23:50:37 2013] [error] [client 127.0.0.1] Digest: user bob: password mismatch: /d/",
            "127.0.0.1",
            None,
            "http_auth_failed",
            "bob",
        ),
        (
            "[Thu Jul 18 00:08:39 2013] [error] [client 127.0.0.1] Digest: user `bob' in realm `area' not found: /d",
            "127.0.0.1",
            None,
            "http_auth_failed",
            "bob",
        ),
        (
            "[Mon Nov 06 13:39:56.637868 2023] [auth_basic:error] [pid 3:tid 1] [remote 192.0.2.111:35924] AH01618: "
            "user whatever not found: /admin",
            "192.0.2.111",
            35924,
            "http_auth_failed",
            "whatever",
        ),
        (
            "[Mon Jan 01 10:00:00 2014] [auth_basic:error] [pid 1] (2)No such file or directory: "
            "[client 1.2.3.4:5] AH01618: user x not found: /",
            "1.2.3.4",
            5,
            "http_auth_failed",
            "x",
        ),
        (
            "[Wed Jul 17 23:20:45 2013] [error] [client 127.0.0.1] client denied by server configuration: /var/www/x",
            "127.0.0.1",
            None,
            "http_access_denied",
            None,
        ),
    ],
)
def test_apache_auth_failures(line: str, ip: str, port: int | None, action: str, user: str | None) -> None:
    for parse in (get_parser("apache"), get_parser("auto")):
        event = parse(line)
        assert event is not None
        assert is_auth_failure(event)
        assert event["event.category"] == ["authentication", "web"]
        assert (event["source.ip"], event.get("source.port")) == (ip, port)
        assert (event["event.action"], event.get("user.name")) == (action, user)
        assert event["event.dataset"] == "apache.error"


def test_apache_stamp_keeps_fraction() -> None:
    event = parse_apache_error(
        "[Sat Jul 20 21:37:32.266605 2013] [auth_basic:error] [pid 1] [client 127.0.0.1:5] "
        "AH01618: user  not found: /basic/x, referer: http://x/"
    )
    assert event is not None
    assert event["@timestamp"] == local_utc(2013, 7, 20, 21, 37, 32) + ".266605Z"
    assert event["url.path"] == "/basic/x"


@pytest.mark.parametrize(
    "line",
    [
        "[Sat Jun 01 02:17:42 2013] [error] [client 192.168.33.1] File does not exist: "
        "/srv/http/site/[client 192.168.0.1] user root not found",
        "[Sat Jun 01 02:17:42 2013] [error] File does not exist: [client 192.168.0.1] user root not found",
        "[Sun Jul 28 21:16:37 2013] [error] [client 127.0.0.1] Digest: invalid nonce abc received - hash is not d4",
        "[Sat Jun 01 02:17:42 2013] [notice] Apache/2.2.22 (Debian) configured -- resuming normal operations",
    ],
)
def test_apache_non_failures(line: str) -> None:
    for fmt in ("apache", "auto"):
        event = get_parser(fmt)(line)
        assert event is None or not is_auth_failure(event)


def test_apache_injection_in_user_name_keeps_structural_client() -> None:
    event = parse_apache_error(
        "[Sat Jun 01 02:17:42 2013] [error] [client 192.0.2.1] user [client 6.6.6.6] x not found: /"
    )
    assert event is not None and event["source.ip"] == "192.0.2.1"


def test_mod_evasive_is_not_an_authentication_failure() -> None:
    event = parse_apache_error(
        "[Thu Oct 17 18:43:40.160521 2019] [evasive20:error] [pid 22589] [client 192.0.2.1:56175] "
        "client denied by server configuration: /path/index.php, referer: https://h/"
    )
    assert event is not None
    assert (event["event.action"], event["event.outcome"]) == ("http_dos_blocked", "failure")
    assert not is_auth_failure(event)


# --------------------------------------------------------------------------- through syslog / journal

FRAMED = [
    (
        "Feb 15 16:23:00 srv httpd[22034]: [authz_core:error] [pid 22034] [client 192.0.2.1:58585] AH01630: "
        "client denied by server configuration: /home/www/",
        "192.0.2.1",
        "httpd",
        "apache.error",
    ),
    (
        "Feb 15 16:23:40 srv httpd/backend1[22034]: [authz_core:error] [pid 22036] [client 192.0.2.2:59392] "
        "AH01630: client denied by server configuration: /home/backend1/",
        "192.0.2.2",
        "httpd/backend1",
        "apache.error",
    ),
    (
        "Feb 16 22:32:48 srv apache2[2]: [error] [client 127.0.0.1] user bob not found: /b",
        "127.0.0.1",
        "apache2",
        "apache.error",
    ),
    (
        'host nginx[983478]: 2023/12/09 21:35:20 [error] 983478#983478: *3 user "u" was not found in "/f", '
        'client: 192.0.2.3, server: h, request: "GET / HTTP/2.0", host: "h"',
        "192.0.2.3",
        "nginx",
        "nginx.error",
    ),
    (
        'Dec  9 21:35:20 web nginx: [error] 9#9: *3 user "u": password mismatch, client: 2001:db8::3, server: h',
        "2001:db8::3",
        "nginx",
        "nginx.error",
    ),
]


@pytest.mark.parametrize(("line", "ip", "prog", "dataset"), FRAMED)
def test_error_logs_through_syslog(line: str, ip: str, prog: str, dataset: str) -> None:
    native = "nginx" if dataset.startswith("nginx") else "apache"
    for fmt in ("syslog", "auto", native):
        event = get_parser(fmt, 2005)(line)
        assert event is not None, fmt
        assert is_auth_failure(event)
        assert (event["source.ip"], event["process.name"], event["event.dataset"]) == (ip, prog, dataset)


def test_registered_message_parser() -> None:
    assert parse_error_message("[error] [client 192.0.2.1] user x not found: /") is not None
    assert parse_error_message("Started Session 3 of user root.") is None
    kernel = "Mar  1 10:00:01 web kernel: [12345.678] [client 192.0.2.1] user x not found: /"
    assert get_parser("syslog")(kernel) is None


# --------------------------------------------------------------------------- JSON app log


def js(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def test_json_app_keys_failure() -> None:
    event = parse_app_json(
        js(
            {
                "time": "2024-05-01T10:00:00+02:00",
                "ip": "203.0.113.5",
                "user": "bob",
                "event": "login_failed",
                "path": "/login",
                "method": "POST",
                "status": 401,
            }
        )
    )
    assert event == {
        "@timestamp": "2024-05-01T08:00:00Z",
        "event.kind": "event",
        "event.category": ["authentication", "web"],
        "event.type": ["start"],
        "event.action": "login_failed",
        "event.outcome": "failure",
        "event.dataset": "app.login",
        "source.address": "203.0.113.5",
        "source.ip": "203.0.113.5",
        "user.name": "bob",
        "http.response.status_code": 401,
        "url.path": "/login",
        "http.request.method": "POST",
    }


def test_json_ecs_dotted_and_nested() -> None:
    dotted = {
        "@timestamp": "2024-05-01T08:00:00Z",
        "source.ip": "2001:db8::7",
        "user.name": "amy",
        "event.outcome": "success",
        "url.path": "/login",
        "http.response.status_code": 200,
    }
    nested = {
        "@timestamp": "2024-05-01T08:00:00Z",
        "source": {"ip": "2001:db8::7"},
        "user": {"name": "amy"},
        "event": {"outcome": "success"},
        "url": {"path": "/login"},
        "http": {"response": {"status_code": 200}},
    }
    for obj in (dotted, nested):
        event = parse_app_json(js(obj))
        assert event is not None
        assert (event["event.outcome"], event["event.action"]) == ("success", "login_success")
        assert (event["source.ip"], event["user.name"], event["url.path"]) == ("2001:db8::7", "amy", "/login")
        assert event["http.response.status_code"] == 200


@pytest.mark.parametrize(
    ("obj", "outcome"),
    [
        ({"event": "login", "status": 401}, "failure"),
        ({"event": "login", "status": 403}, "failure"),
        ({"event": "login", "status": 200}, "success"),
        ({"event": "login", "status": "302"}, "success"),
        ({"event": "login", "status": 500}, "unknown"),
        ({"event": "login"}, "unknown"),
        ({"event": "Login-Success", "status": 401}, "success"),
        ({"event.outcome": "failure", "status": 200}, "failure"),
        ({"event.category": ["authentication"], "event.action": "sso", "status": 403}, "failure"),
    ],
)
def test_json_outcome(obj: dict[str, Any], outcome: str) -> None:
    event = parse_app_json(js(obj))
    assert event is not None
    assert event["event.outcome"] == outcome
    assert is_auth_failure(event) is (outcome == "failure")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        "{",
        "[]",
        '"x"',
        "1",
        "null",
        '{"event": "page_view", "status": 401}',
        '{"status": 401}',
        "{" + '"a":{' * 2000 + "}" * 2001,
        '{"event": "login"} trailing',
    ],
)
def test_json_not_login_records(line: str) -> None:
    assert parse_app_json(line) is None


def test_json_wrong_types_are_ignored() -> None:
    event = parse_app_json(
        js(
            {
                "event": "login_failed",
                "ip": 123,
                "user": ["a"],
                "status": True,
                "time": {"x": 1},
                "path": 5,
                "method": None,
                "event.outcome": 7,
            }
        )
    )
    assert event is not None
    assert event["event.outcome"] == "failure"
    for absent in ("source.ip", "user.name", "http.response.status_code", "url.path", "http.request.method"):
        assert absent not in event
    assert event["@timestamp"].endswith("Z")


@pytest.mark.parametrize("address", ["not-an-ip", "1.2.3.4, 5.6.7.8", "999.1.1.1", "", "x" * 1000])
def test_json_only_real_ip_addresses(address: str) -> None:
    event = parse_app_json(js({"event": "login_failed", "remote_addr": address}))
    assert event is not None and "source.ip" not in event


def test_json_ip_keys_and_mapped_ipv6() -> None:
    for key in ("source.ip", "client.ip", "ip", "remote_addr", "client_ip"):
        event = parse_app_json(js({"event": "login_failed", key: "::ffff:192.0.2.44"}))
        assert event is not None and event["source.ip"] == "192.0.2.44", key


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714550400, "2024-05-01T08:00:00Z"),
        (1714550400.5, "2024-05-01T08:00:00.500000Z"),
        (1714550400123, "2024-05-01T08:00:00.123000Z"),
        ("2024-05-01T08:00:00Z", "2024-05-01T08:00:00Z"),
        ("2024-05-01 08:00:00,250+00:00", "2024-05-01T08:00:00.250000Z"),
    ],
)
def test_json_timestamps(value: Any, expected: str) -> None:
    for key in ("@timestamp", "timestamp", "time", "ts"):
        event = parse_app_json(js({"event": "login", key: value}))
        assert event is not None and event["@timestamp"] == expected


def test_json_naive_time_is_local_and_bad_time_is_now() -> None:
    event = parse_app_json(js({"event": "login", "ts": "2024-05-01T08:00:00"}))
    assert event is not None and event["@timestamp"] == local_utc(2024, 5, 1, 8, 0, 0) + "Z"
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H")
    for bad in ('"yesterday"', "1" + "0" * 30, "1e300", "-1e17", "[1]", '"' + "9" * 100 + '"'):
        event = parse_app_json('{"event": "login", "ts": ' + bad + "}")
        assert event is not None and event["@timestamp"][:13] >= before[:13]


# --------------------------------------------------------------------------- auto dispatch


@pytest.mark.parametrize(
    ("line", "dataset"),
    [
        ("Mar  1 10:00:01 web sshd[1]: Failed password for root from 203.0.113.1 port 4022 ssh2", "sshd"),
        ("<34>1 2024-03-01T10:00:01Z web sshd 1 - - Failed password for root from 203.0.113.1 port 4022 ssh2", "sshd"),
        ("2024-03-01T10:00:01+00:00 web sshd[1]: Failed password for root from 203.0.113.1 port 4022 ssh2", "sshd"),
        ("web sshd[1]: Failed password for root from 203.0.113.1 port 4022 ssh2", "sshd"),
        (COMBINED, "web.access"),
        (f'fe80::1 - - {STAMP} "GET / HTTP/1.1" 200 1', "web.access"),
        (f'::1 - - {STAMP} "GET / HTTP/1.1" 200 1', "web.access"),
        (f'Mail.example.org:80 192.0.2.1 - - {STAMP} "GET / HTTP/1.1" 200 1 "-" "-"', "web.access"),
        (f'Mar.example.org - - {STAMP} "GET / HTTP/1.1" 200 1', "web.access"),
        (
            '2012/04/09 11:53:29 [error] 2865#0: *1 user "x": password mismatch, client: 192.0.2.1, server: s',
            "nginx.error",
        ),
        ("[Sat Jun 01 02:17:42 2013] [error] [client 192.0.2.1] user root not found", "apache.error"),
        ('{"event": "login_failed", "ip": "192.0.2.1"}', "app.login"),
        (' {"event": "login_failed", "ip": "192.0.2.1"}', "app.login"),
    ],
)
def test_auto_recognises_each_format(line: str, dataset: str) -> None:
    event = get_parser("auto", 2024)(line)
    assert event is not None, line
    assert event["event.dataset"] == dataset


def test_auto_ignores_unknown_lines() -> None:
    parse = get_parser("auto")
    for line in ("", "hello", "Mar  1 10:00:01 web cron[1]: (root) CMD (run-parts)", "[x]", "{}", "::", "1"):
        assert parse(line) is None
