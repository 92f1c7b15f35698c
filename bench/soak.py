#!/usr/bin/env python3
"""Soak: `sentinel run` (default rules, dry-run) tailing a log written at a steady rate.

Writes generated auth.log lines (../shared/tools/gen_authlog.py) at --rate lines/s for --minutes,
samples the daemon's RSS and CPU, and checks at the end that every line was stored once.
With --backlog N it measures instead how fast the daemon catches up on N lines written before
it starts (its checkpoint reaching the end of the file), and the CPU that takes.
Usage: .venv/bin/python bench/soak.py --minutes 30 --rate 20000
       .venv/bin/python bench/soak.py --backlog 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT.parent / "shared" / "tools" / "gen_authlog.py"


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of ``pid`` and its threads."""
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def stored_offset(work: Path, log: Path) -> int:
    """How far the daemon's committed checkpoint of ``log`` reaches (0 before the first commit)."""
    try:
        with sqlite3.connect(f"file:{work / 'state' / 'events.db'}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT state FROM checkpoints WHERE source = 'auth'").fetchone()
    except sqlite3.Error:
        return 0
    return 0 if row is None else int(json.loads(row[0])["paths"][str(log)][-1]["offset"])


def catch_up(daemon: subprocess.Popen[bytes], work: Path, log: Path, lines: int) -> None:
    """Time from the daemon's start until its checkpoint reaches the end of ``log``."""
    start = time.monotonic()
    size = log.stat().st_size
    while stored_offset(work, log) < size:
        if daemon.poll() is not None:
            sys.exit(f"the daemon exited ({daemon.returncode}); see {work / 'stderr'}")
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    _, cpu = proc_stats(daemon.pid)
    daemon.terminate()
    daemon.wait(60)
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"caught up on {lines:,} lines ({size / 1e6:.0f} MB) in {elapsed:.1f} s, start-up included: "
        f"{lines / elapsed:,.0f} lines/s, {cpu:.1f} s of CPU ({cpu / lines * 1e6:.1f} µs a line)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=20_000, help="lines per second")
    ap.add_argument("--backlog", type=int, default=0, help="measure the catch-up on this many lines instead")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sentinel-soak-"))
    source = work / "source.log"
    total = args.backlog or int(args.rate * args.minutes * 60)
    pool = min(total, 2_000_000)
    subprocess.run([sys.executable, str(GEN), "--lines", str(pool), "--seed", "3", "--out", str(source)], check=True)
    lines = source.read_bytes().splitlines(keepends=True)
    log = work / "auth.log"
    log.write_bytes(b"".join(lines[i % pool] for i in range(args.backlog)))
    cfg = work / "sentinel.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{work / "state"}"\n[metrics]\nenabled = false\n[ports]\nenabled = false\n'
        f'[[sources]]\ntype = "file"\nname = "auth"\npaths = ["{log}"]\nformat = "syslog"\nstart_at = "beginning"\n'
    )
    sentinel = str(Path(sys.executable).with_name("sentinel"))
    with open(work / "stderr", "wb") as err:
        daemon = subprocess.Popen([sentinel, "run", "-c", str(cfg)], stderr=err)
    if args.backlog:
        catch_up(daemon, work, log, args.backlog)
        return
    time.sleep(2)
    samples = []
    written = 0
    start = time.monotonic()
    next_sample = start
    with log.open("ab", buffering=1 << 20) as out:
        while written < total:
            due = int((time.monotonic() - start) * args.rate)
            if due > written:
                n = min(due - written, total - written)
                for i in range(written, written + n):
                    out.write(lines[i % pool])
                out.flush()
                written += n
            now = time.monotonic()
            if now >= next_sample:
                rss, cpu = proc_stats(daemon.pid)
                samples.append(
                    {"t": round(now - start), "rss_mb": round(rss, 1), "cpu_s": round(cpu, 1), "written": written}
                )
                next_sample += 30
            time.sleep(0.01)
    elapsed = time.monotonic() - start
    time.sleep(5)
    rss, cpu = proc_stats(daemon.pid)
    samples.append(
        {"t": round(time.monotonic() - start), "rss_mb": round(rss, 1), "cpu_s": round(cpu, 1), "written": written}
    )
    daemon.terminate()
    daemon.wait(60)
    stored_to = stored_offset(work, log)
    result = {
        "minutes": args.minutes,
        "rate": args.rate,
        "written": written,
        "write_seconds": round(elapsed, 1),
        "log_bytes": log.stat().st_size,
        "checkpoint_offset": stored_to,
        "cpu_percent": round(
            100 * (samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / max(1, samples[-1]["t"] - samples[0]["t"]), 1
        ),
        "samples": samples,
    }
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "soak.json").write_text(json.dumps(result, indent=1))
    first, middle, end = samples[0], samples[len(samples) // 2], samples[-1]
    print(
        f"{written:,} lines at {args.rate:,}/s for {elapsed / 60:.1f} min; caught up: "
        f"{stored_to == log.stat().st_size}; CPU {result['cpu_percent']}% of a core"
    )
    print(f"RSS MB: start {first['rss_mb']}, middle {middle['rss_mb']}, end {end['rss_mb']}")


if __name__ == "__main__":
    main()
