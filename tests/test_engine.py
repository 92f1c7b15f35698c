"""The rules engine: windows on event time, attempts not lines, bounded state, allowlist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sentinel.engine.engine import Engine, EngineOptions
from sentinel.engine.rule import Rule, RuleError, load_rules, parse_rule
from sentinel.engine.samples import test_rules as run_rule_samples
from sentinel.engine.windows import CountWindows, pack
from sentinel.event import Event

OPTIONS = EngineOptions(own_addresses=("192.0.2.10",))


def failure(ip: str, second: int, pid: int | None = None, user: str = "root", extra: Event | None = None) -> Event:
    minutes, secs = divmod(second, 60)
    hours, minutes = divmod(minutes, 60)
    event: Event = {
        "@timestamp": f"2026-03-01T{hours:02d}:{minutes:02d}:{secs:02d}Z",
        "event.kind": "event",
        "event.category": ["authentication"],
        "event.outcome": "failure",
        "event.dataset": "sshd",
        "source.ip": ip,
        "user.name": user,
        "host.hostname": "web-01",
        "process.pid": pid if pid is not None else 1000 + second,
        "message": f"Failed password for {user} from {ip} port 22 ssh2",
    }
    event.update(extra or {})
    return event


def rule(**overrides: Any) -> Rule:
    data: dict[str, Any] = {
        "id": "t",
        "name": "test",
        "techniques": ["T1110"],
        "match": {"event.outcome": "failure", "event.category": "authentication"},
        "group": {"by": ["source.ip"]},
        "condition": {"type": "count", "threshold": 5, "window": 600},
        "responses": [{"type": "ban", "duration": 600, "escalate": True}],
    }
    data.update(overrides)
    return Rule.model_validate(data)


def run(engine: Engine, events: list[Event]) -> list[Event]:
    return [f for e in events for f in engine.process(e)]


def test_five_in_window_fires_once_with_evidence() -> None:
    engine = Engine([rule()], OPTIONS)
    findings = run(engine, [failure("203.0.113.1", s) for s in (0, 100, 200, 300, 600)])
    assert len(findings) == 1
    f = findings[0]
    assert f["event.kind"] == "alert"
    assert f["rule.id"] == "t"
    assert f["threat.technique.id"] == ["T1110"]
    assert f["source.ip"] == "203.0.113.1"
    assert len(f["sentinel.trigger_event_ids"]) == 5
    assert f["sentinel.actions"] == [{"type": "ban", "target": "203.0.113.1", "duration": 600, "offence": 1}]


def test_window_is_inclusive_and_slides() -> None:
    engine = Engine([rule()], OPTIONS)
    assert run(engine, [failure("203.0.113.2", s) for s in (0, 1, 2, 3, 601)]) == []
    # 1, 2, 3, 601 and 602 fall within 601 s: still not 600 …
    assert run(engine, [failure("203.0.113.2", 602)]) == []
    # … but 3, 601, 602, 603, 603 do.
    assert len(run(engine, [failure("203.0.113.2", 603), failure("203.0.113.2", 603, pid=9)])) == 1


def test_out_of_order_events_within_tolerance_count() -> None:
    engine = Engine([rule()], OPTIONS)
    events = [failure("203.0.113.3", s) for s in (300, 100, 200, 0, 250)]
    assert len(run(engine, events)) == 1


def test_pam_summary_at_connection_end_is_not_counted_again() -> None:
    """Three wrong passwords on one connection: 3 sshd lines, 1 pam_unix line, "PAM 2 more"."""
    engine = Engine([rule()], OPTIONS)
    events = []
    for i in range(3):
        if i == 0:
            pam = failure("203.0.113.10", i, pid=700)
            pam["message"] = "pam_unix(sshd:auth): authentication failure; rhost=203.0.113.10 user=root"
            events.append(pam)
        events.append(failure("203.0.113.10", i, pid=700))
    more = failure("203.0.113.10", 30, pid=700, extra={"sentinel.attempts": 2})
    more["message"] = "PAM 2 more authentication failures; rhost=203.0.113.10 user=root"
    events.append(more)
    assert run(engine, events) == []  # 3 attempts, not 6
    assert len(run(engine, [failure("203.0.113.10", 40 + i, pid=701 + i) for i in range(2)])) == 1


def test_pam_and_sshd_lines_of_one_attempt_count_once() -> None:
    engine = Engine([rule()], OPTIONS)
    events = []
    for i in range(4):
        pam = failure("203.0.113.4", i * 10, pid=500 + i)
        pam["message"] = "pam_unix(sshd:auth): authentication failure; rhost=203.0.113.4 user=root"
        events += [pam, failure("203.0.113.4", i * 10, pid=500 + i)]
    assert run(engine, events) == []  # 8 lines, 4 attempts
    assert engine.stats.twins == 4
    # Two real attempts on one connection in the same second both count: 4 + 1 fires.
    assert len(run(engine, [failure("203.0.113.4", 50, pid=600)])) == 1
    engine = Engine([rule()], OPTIONS)
    same = [failure("203.0.113.4", 50, pid=600) for _ in range(5)]
    assert len(run(engine, same)) == 1


def test_repeated_message_counts_as_many_attempts() -> None:
    engine = Engine([rule()], OPTIONS)
    assert len(run(engine, [failure("203.0.113.5", 0, extra={"sentinel.attempts": 5})])) == 1


def test_allowlisted_loopback_and_own_addresses_are_never_banned() -> None:
    options = EngineOptions(allowlist=("198.51.100.0/24",), own_addresses=("192.0.2.10",))
    engine = Engine([rule()], options)
    for ip in ("198.51.100.7", "127.0.0.1", "::1", "192.0.2.10", "fe80::1"):
        (finding,) = run(engine, [failure(ip, s) for s in range(5)])
        assert finding["sentinel.actions"] == []
        assert finding["sentinel.suppressed"][0]["reason"] == "allowlisted"


def test_ipv6_is_grouped_by_64_and_banned_as_network() -> None:
    engine = Engine([rule()], OPTIONS)
    events = [failure(f"2001:db8:1:2::{i:x}", i) for i in range(1, 6)]
    (finding,) = run(engine, events)
    assert finding["sentinel.actions"][0]["target"] == "2001:db8:1:2::/64"
    assert finding["source.ip"] == "2001:db8:1:2::5"


def test_ban_escalates_for_repeat_offenders_and_is_capped() -> None:
    engine = Engine([rule()], EngineOptions(own_addresses=(), ban_max_duration=2000))
    durations = []
    for burst in range(4):
        (finding,) = run(engine, [failure("203.0.113.6", burst * 1000 + s) for s in range(5)])
        durations.append(finding["sentinel.actions"][0]["duration"])
    assert durations == [600, 1200, 2000, 2000]


def test_distinct_users_per_address() -> None:
    spray = rule(condition={"type": "distinct", "field": "user.name", "threshold": 3, "window": 600})
    engine = Engine([spray], OPTIONS)
    same_user = [failure("203.0.113.8", s, user="root") for s in range(5)]
    assert run(engine, same_user) == []
    (finding,) = run(engine, [failure("203.0.113.8", 10 + i, user=u) for i, u in enumerate(("a", "b"))])
    assert finding["sentinel.count"] == 3


def test_new_value_learns_first_and_survives_a_dump() -> None:
    new_country = rule(
        match={"event.outcome": "success"},
        group={"by": ["user.name"]},
        condition={"type": "new_value", "field": "source.geo.country_iso_code", "remember": "90d"},
        responses=[{"type": "alert"}, {"type": "revoke_tokens"}],
    )

    def login(country: str, second: int) -> Event:
        return failure(
            "203.0.113.9",
            second,
            user="alice",
            extra={"event.outcome": "success", "source.geo.country_iso_code": country},
        )

    engine = Engine([new_country], OPTIONS)
    assert run(engine, [login("DE", 0), login("DE", 100)]) == []
    state = engine.dump_state()
    restarted = Engine([new_country], OPTIONS)
    restarted.load_state(state)
    (finding,) = run(restarted, [login("BR", 200)])
    assert finding["sentinel.previous_values"] == ["DE"]
    assert {"type": "revoke_tokens", "user": "alice"} in finding["sentinel.actions"]


def test_state_is_bounded_and_evictions_counted() -> None:
    windows = CountWindows(threshold=5, window=600, max_keys=1000)
    for i in range(5000):
        windows.add(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", pack(float(i), i))
    assert len(windows) == 1000
    assert windows.stats.evicted == 4000


def test_state_expires_with_the_window() -> None:
    engine = Engine([rule()], OPTIONS)
    run(engine, [failure(f"203.0.113.{i}", i) for i in range(100)])
    assert sum(engine.state_sizes().values()) == 100
    run(engine, [failure("198.51.100.1", 3600)])
    assert sum(engine.state_sizes().values()) == 1


def test_bad_rule_file_names_file_and_key() -> None:
    with pytest.raises(RuleError, match=r"x.toml: condition.threshold"):
        parse_rule('id = "x"\nname = "x"\n[match]\n"event.outcome" = "failure"\n[condition]\nthreshold = 0\n', "x.toml")
    with pytest.raises(RuleError, match=r"x.toml: techniques"):
        parse_rule('id = "x"\nname = "x"\ntechniques = ["brute"]\n[match]\n"a" = 1\n', "x.toml")


def test_every_builtin_rule_has_passing_samples() -> None:
    results = run_rule_samples(load_rules())
    assert results
    assert [r for r in results if not r.ok] == []


BROKEN = """
id = "broken"
name = "claims to fire on one failure but needs five"
[match]
"event.outcome" = "failure"
[group]
by = ["source.ip"]
[condition]
threshold = 5
[[samples]]
fire = true
lines = ["Mar  1 10:00:01 web-01 sshd[2001]: Failed password for root from 203.0.113.7 port 40001 ssh2"]
[[samples]]
fire = false
lines = ["Mar  1 10:00:01 web-01 sshd[2001]: Accepted password for root from 203.0.113.7 port 40001 ssh2"]
"""

NO_SAMPLES = """
id = "untested"
name = "no samples"
[match]
"event.outcome" = "failure"
"""


@pytest.mark.parametrize(("text", "message"), [(BROKEN, b"must fire, did not"), (NO_SAMPLES, b"needs samples")])
def test_rules_test_command_fails_for_bad_samples(tmp_path: Path, text: str, message: bytes) -> None:
    (tmp_path / "r.toml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", "rules", "test", "--no-builtin", "--rules", str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert message in proc.stdout


def test_rules_test_command_passes_for_builtin_rules() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", "rules", "test"], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout
    assert b" 0 failed" in proc.stdout


def test_cooldown_keeps_one_finding_per_key_per_period() -> None:
    account = rule(
        group={"by": ["user.name"]},
        condition={"type": "distinct", "field": "source.ip", "threshold": 3, "window": 3600},
        cooldown="1h",
        responses=[{"type": "alert"}],
    )
    engine = Engine([account], OPTIONS)
    events = [failure(f"203.0.113.{i}", i * 10, user="alice") for i in range(12)]
    assert len(run(engine, events)) == 1
    assert engine.stats.cooled == 3
    assert len(run(engine, [failure(f"198.51.100.{i}", 4000 + i, user="alice") for i in range(3)])) == 1


def test_dormant_account_is_not_relearnt_silently() -> None:
    from sentinel.engine.windows import NewValues

    seen = NewValues(remember=100.0, max_keys=10)
    assert seen.add("alice", "DE", 0.0) == (False, [])  # first country: learnt
    seen.expire(1000.0)  # DE forgotten, alice still known
    assert seen.add("alice", "BR", 1000.0) == (True, [])


def test_state_stays_bounded_when_event_time_stalls() -> None:
    """Old lines arriving after newer ones (a clock set back) still get their state swept."""
    engine = Engine([rule()], OPTIONS)
    run(engine, [failure("198.51.100.1", 7200)])  # the watermark: two hours in
    for i in range(250_000):  # then a flood of events an hour older than the watermark
        engine.process(failure(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 3600))
    assert sum(engine.state_sizes().values()) <= 100_001


def test_tagged_entries_are_shared_and_a_foreign_tag_is_harmless() -> None:
    """The engine's one tagged entry per event is stored as is by a count and a distinct window
    (one int for both); a tag from another table never changes what a distinct window reads."""
    from sentinel.engine.windows import DistinctWindows, ValueIds, untag

    ids = ValueIds()
    counts = CountWindows(threshold=3, window=600, max_keys=10)
    distinct = DistinctWindows(threshold=3, window=600, max_keys=10, ids=ids)
    entry = pack(1.0, 7) | ids.tag("root")
    assert counts.add("203.0.113.1", entry) is None
    assert distinct.add("203.0.113.1", "root", entry) is None
    assert counts._state["203.0.113.1"] is distinct._state["203.0.113.1"]
    # An entry tagged for another value (or table): stored re-tagged, read back exactly.
    other = DistinctWindows(threshold=2, window=600, max_keys=10)
    assert other.add("k", "admin", pack(2.0, 8) | ids.tag("root")) is None
    assert other.add("k", "root", pack(3.0, 9)) == [pack(2.0, 8), pack(3.0, 9)]
    # Count windows ignore tags: fired entries are plain.
    assert counts.add("203.0.113.1", pack(2.0, 8) | ids.tag("x")) is None
    fired = counts.add("203.0.113.1", pack(3.0, 9))
    assert fired is not None
    assert fired == [pack(1.0, 7), pack(2.0, 8), pack(3.0, 9)] == [untag(e) for e in fired]
