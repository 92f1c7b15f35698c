"""`sentinel run` end to end: tailed log lines → findings and (dry-run) responses in the store,
and rule memory (the countries an account uses) surviving a restart of the real process."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import SentinelProcess, wait_until
from tests.test_geoip import BERLIN, MADRID, write_geo_db


def config(tmp_path: Path, log: Path, extra: str = "") -> Path:
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        "[collectors]\npoll_interval = 0.1\n"
        "[ports]\nenabled = false\n"
        f'[[sources]]\ntype = "file"\nname = "auth"\npaths = ["{log}"]\nformat = "syslog"\nstart_at = "beginning"\n'
        + extra
    )
    return cfg


def stored(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    db = tmp_path / "state" / "events.db"
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            rows = conn.execute("SELECT doc FROM events").fetchall()
    except sqlite3.OperationalError:
        return []
    docs = [json.loads(r[0]) for r in rows]
    return [d for d in docs if d.get("event.kind") == kind or d.get("event.dataset") == kind]


def append(log: Path, *lines: str) -> None:
    with log.open("a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def test_five_failures_make_a_finding_and_a_dry_run_ban(
    tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    proc = sentinel_process(config(tmp_path, log))
    proc.wait_log("running with")
    append(
        log,
        *(
            f"Nov 22 10:00:0{i} web-01 sshd[{4000 + i}]: "
            f"Failed password for root from 203.0.113.44 port {5000 + i} ssh2"
            for i in range(5)
        ),
    )
    wait_until(lambda: len(stored(tmp_path, "sentinel.response")) >= 1, timeout=15)
    assert proc.stop() == 0
    (finding,) = [f for f in stored(tmp_path, "alert") if f["rule.id"] == "ssh-brute-force"]
    assert finding["source.ip"] == "203.0.113.44"
    assert len(finding["sentinel.trigger_event_ids"]) == 5
    ban = next(r for r in stored(tmp_path, "sentinel.response") if r["event.action"] == "ban")
    assert ban["sentinel.dry_run"] is True
    assert ban["sentinel.finding_id"] == finding["event.id"]
    assert ban["sentinel.response"]["target"] == "203.0.113.44"
    assert "dry-run: would ban 203.0.113.44" in proc.log()


def test_country_change_survives_a_restart(tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]) -> None:
    db = write_geo_db(tmp_path / "city.mmdb")
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = config(tmp_path, log, f'[geoip]\ndatabase = "{db}"\n')
    accepted = "Nov 22 10:{m:02d}:00 web-01 sshd[{pid}]: Accepted publickey for alice from {ip} port 5000 ssh2"

    first = sentinel_process(cfg)
    first.wait_log("running with")
    append(log, accepted.format(m=0, pid=7001, ip=BERLIN))  # learnt: alice logs in from Germany
    wait_until(lambda: any(e.get("user.name") == "alice" for e in stored(tmp_path, "event")), timeout=15)
    assert first.stop() == 0
    assert (tmp_path / "state" / "rule-state.json").exists()

    second = sentinel_process(cfg)
    second.wait_log("running with")
    append(log, accepted.format(m=30, pid=7002, ip=BERLIN), accepted.format(m=45, pid=7003, ip=MADRID))
    wait_until(lambda: any(f["rule.id"] == "login-new-country" for f in stored(tmp_path, "alert")), timeout=15)
    assert second.stop() == 0
    findings = [f for f in stored(tmp_path, "alert") if f["rule.id"] == "login-new-country"]
    assert len(findings) == 1, "the Berlin login after the restart is known, only Madrid is new"
    assert findings[0]["source.geo.country_iso_code"] == "ES"
    assert findings[0]["sentinel.previous_values"] == ["DE"]
    revoke = [r for r in stored(tmp_path, "sentinel.response") if r["event.action"] == "revoke_tokens"]
    assert revoke and revoke[0]["sentinel.response"]["user"] == "alice"
