#!/usr/bin/env python3
"""Throughput side by side with the peers, each tool run once as a whole process (start-up
included), on a 1M-line auth.log from ../shared/tools/gen_authlog.py (cached under bench/out/):

* parsing: `sentinel parse` vs `fail2ban-regex FILE sshd` vs sshguard's `sshg-parser`;
* detection: `sentinel replay` with every built-in rule, checked against the generator's
  ground truth (addresses crossing 5 failures in 600 s), beside fail2ban-regex;
* memory: `sentinel replay` on a log where one window holds 1M distinct attacking addresses.

Usage:  make bench   (or: .venv/bin/python bench/run.py --lines N)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
GEN = ROOT.parent / "shared" / "tools" / "gen_authlog.py"
SSHG_PARSER = Path("/usr/libexec/sshguard/sshg-parser")


@dataclass
class Result:
    tool: str
    command: str
    seconds: float
    lines_per_s: float
    peak_rss_mb: float


def measure(tool: str, argv: list[str], lines: int, stdin: Path | None = None, stdout: Path | None = None) -> Result:
    """Run ``argv`` once, output discarded (or kept); wall time and the child's peak RSS (wait4)."""
    with open(stdout or os.devnull, "wb") as out, open(stdin or os.devnull, "rb") as inp:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=inp, stdout=out, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{tool} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    command = " ".join(argv) + (f" < {stdin}" if stdin else "")
    return Result(tool, command, elapsed, lines / elapsed, usage.ru_maxrss / 1024)


def table(title: str, results: list[Result]) -> None:
    base = results[0].lines_per_s
    print(f"\n{title}\n")
    print("| tool | lines/s | wall s | peak RSS MB | first row is × faster |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        ratio = base / r.lines_per_s
        print(f"| {r.tool} | {r.lines_per_s:,.0f} | {r.seconds:.2f} | {r.peak_rss_mb:.0f} | {ratio:.2f} |")


def write_distinct(path: Path, n: int) -> None:
    """``n`` failed logins, each from a new address, all within 10 minutes (one window)."""
    with path.open("w") as fh:
        for i in range(n):
            second = i * 600 // n
            ip = f"{11 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.{1 + i % 250}"
            fh.write(
                f"Mar  1 10:{second // 60:02d}:{second % 60:02d} web-01 sshd[{1000 + i}]: "
                f"Failed password for root from {ip} port {1024 + i % 60000} ssh2\n"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--year", type=int, default=2026, help="the generator's --year (default 2026)")
    ap.add_argument("--skip-peers", action="store_true", help="measure Sentinel only")
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"auth-{args.lines}-{args.seed}.log"
    truth_file = log.with_suffix(".truth.json")
    if not log.exists():
        print(f"generating {log} …", file=sys.stderr)
        gen = [sys.executable, str(GEN), "--lines", str(args.lines), "--seed", str(args.seed), "--year", str(args.year)]
        subprocess.run([*gen, "--out", str(log), "--truth", str(truth_file)], check=True)
    lines = args.lines
    sentinel = str(Path(sys.executable).with_name("sentinel"))
    peers: list[Result] = []
    if not args.skip_peers and shutil.which("fail2ban-regex"):
        peers.append(measure("fail2ban-regex", ["fail2ban-regex", "--print-no-missed", str(log), "sshd"], lines))
    if not args.skip_peers and SSHG_PARSER.exists():
        peers.append(measure("sshguard sshg-parser", [str(SSHG_PARSER)], lines, stdin=log))
    size = f"{lines:,}-line auth.log ({log.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} cores"

    parse = [
        measure("sentinel parse", [sentinel, "parse", str(log)], lines),
        measure("sentinel parse -j1", [sentinel, "parse", "-j", "1", str(log)], lines),
    ]
    table(f"Parsing: {size}", parse + peers)

    findings = OUT / "findings.json"
    replay_cmd = [sentinel, "replay", "--year", str(args.year), str(log)]
    replay = [measure("sentinel replay (all rules)", replay_cmd, lines, stdout=findings)]
    table(f"Detection: {size}", replay + peers[:1])
    truth = set(json.loads(truth_file.read_text())["crossing_5_in_600s"])
    banned = set()
    for line in findings.read_text().splitlines():
        f = json.loads(line)
        if f["rule.id"] == "ssh-brute-force" and any(a["type"] == "ban" for a in f["sentinel.actions"]):
            banned.add(f["source.ip"])
    print(
        f"\nssh-brute-force bans vs ground truth: {len(banned & truth)} of {len(truth)} found, "
        f"{len(banned - truth)} extra, {len(truth - banned)} missed"
    )

    wide = OUT / "distinct-1m.log"
    if not wide.exists():
        write_distinct(wide, 1_000_000)
    memory = [
        measure(
            "sentinel replay, 1M distinct addresses in one window",
            [sentinel, "replay", "--year", str(args.year), str(wide)],
            1_000_000,
        )
    ]
    table("Memory: 1M failed logins from 1M distinct addresses within 10 minutes", memory)
    results = parse + replay + memory + peers
    (OUT / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
