#!/usr/bin/env python3
"""Parsing throughput, side by side: `sentinel parse` vs fail2ban-regex vs sshguard's parser.

Generates a 1M-line auth.log with ../shared/tools/gen_authlog.py (cached under bench/out/),
runs each tool once as a whole process (start-up included) and reports wall time, lines/s,
peak RSS and the ratios.  Usage:  make bench   (or: .venv/bin/python bench/run.py --lines N)
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


def measure(tool: str, argv: list[str], lines: int, stdin: Path | None = None) -> Result:
    """Run ``argv`` once, output discarded; wall time and the child's peak RSS (wait4)."""
    with open(os.devnull, "wb") as null, open(stdin or os.devnull, "rb") as inp:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=inp, stdout=null, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{tool} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    command = " ".join(argv) + (f" < {stdin}" if stdin else "")
    return Result(tool, command, elapsed, lines / elapsed, usage.ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-peers", action="store_true", help="measure Sentinel only")
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"auth-{args.lines}-{args.seed}.log"
    if not log.exists():
        print(f"generating {log} …", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                str(GEN),
                "--lines",
                str(args.lines),
                "--seed",
                str(args.seed),
                "--out",
                str(log),
                "--truth",
                str(log.with_suffix(".truth.json")),
            ],
            check=True,
        )
    lines = args.lines
    sentinel = str(Path(sys.executable).with_name("sentinel"))
    results = [
        measure("sentinel parse", [sentinel, "parse", str(log)], lines),
        measure("sentinel parse -j1", [sentinel, "parse", "-j", "1", str(log)], lines),
    ]
    if not args.skip_peers:
        if shutil.which("fail2ban-regex"):
            results.append(measure("fail2ban-regex", ["fail2ban-regex", "--print-no-missed", str(log), "sshd"], lines))
        if SSHG_PARSER.exists():
            results.append(measure("sshguard sshg-parser", [str(SSHG_PARSER)], lines, stdin=log))

    base = results[0].lines_per_s
    print(f"\n{lines:,}-line auth.log ({log.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} cores\n")
    print("| tool | lines/s | wall s | peak RSS MB | Sentinel is × faster |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.tool} | {r.lines_per_s:,.0f} | {r.seconds:.2f} | {r.peak_rss_mb:.0f} | {base / r.lines_per_s:.2f} |"
        )
    (OUT / "parse.json").write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
