"""`sentinel replay`: parallel and sequential runs agree, enrichment included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_geoip import BERLIN, MADRID, write_geo_db

FILLER = "Mar  1 0{h}:{m:02d}:{s:02d} web-01 sshd[{pid}]: Failed password for root from 203.0.113.{o} port 22 ssh2\n"
LOGIN = "Mar  1 0{h}:{m:02d}:00 web-01 sshd[{pid}]: Accepted publickey for alice from {ip} port 5000 ssh2\n"


def test_parallel_replay_matches_sequential_and_enriches_before_filtering(tmp_path: Path) -> None:
    db = write_geo_db(tmp_path / "city.mmdb")
    log = tmp_path / "auth.log"
    with log.open("w") as fh:
        for i in range(200_000):  # ~20 MB: large enough for the parallel path
            h, rest = divmod(i // 50, 3600)
            fh.write(FILLER.format(h=h, m=rest // 60, s=rest % 60, pid=1000 + i, o=i % 200))
            if i == 1000:
                fh.write(LOGIN.format(h=0, m=1, pid=99, ip=BERLIN))
            if i == 190_000:
                fh.write(LOGIN.format(h=h, m=rest // 60, pid=98, ip=MADRID))
    assert log.stat().st_size > 16 << 20
    outputs = []
    for jobs in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-m", "sentinel", "replay", "-j", jobs, "--year", "2026", "--geoip-db", str(db), str(log)],
            capture_output=True,
            check=True,
            timeout=300,
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    findings = [json.loads(line) for line in outputs[0].splitlines()]
    new_country = [f for f in findings if f["rule.id"] == "login-new-country"]
    assert [f["source.geo.country_iso_code"] for f in new_country] == ["ES"]
    assert any(f["rule.id"] == "ssh-brute-force" for f in findings)
