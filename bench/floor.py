#!/usr/bin/env python3
"""The CPython floor of ``sentinel parse``: what the unavoidable part of the work costs here.

Whatever a parser decides, on the benchmark's auth.log it must at least split every line's
syslog frame (one anchored regex and its groups), then build each event's dict and serialise
it as NDJSON.  This measures those three steps alone, in one process, on the events the real
parser produces (so the same fields and values), and turns them into the throughput a parser
doing *nothing else* could reach on this machine's cores — no dispatch, no validation, no
address normalisation, no connection table, no time conversion, no start-up, no I/O.  Set
beside the target (600k lines/s) it tells how much CPU is left per line for the real decisions.

Usage:  make bench   (or: .venv/bin/python bench/floor.py [--lines N])
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers.lines import ParseStats, parse_buffer
from sentinel.collectors.parsers.syslog import _FAST

OUT = Path(__file__).resolve().parent / "out"
TARGET = 600_000


def _best(run: Callable[[], object], rounds: int = 3) -> float:
    """The fastest of ``rounds`` runs, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _builders(events: list[dict[str, Any]]) -> list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]]:
    """For each event a function building a dict with its keys from positional values (a dict
    display with constant keys, the cheapest way CPython has), and those values."""
    made: dict[tuple[str, ...], Callable[..., dict[str, Any]]] = {}
    out = []
    for event in events:
        keys = tuple(event)
        build = made.get(keys)
        if build is None:
            args = ", ".join(f"v{i}" for i in range(len(keys)))
            body = ", ".join(f"{k!r}: v{i}" for i, k in enumerate(keys))
            build = made[keys] = eval(f"lambda {args}: {{{body}}}")  # keys: our own field names
        out.append((build, tuple(event.values())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    log = OUT / f"auth-{args.lines}-{args.seed}.log"
    if not log.exists():
        raise SystemExit(f"{log} is missing: run bench/run.py first (it generates the log)")
    gc.disable()
    data = log.read_bytes()
    lines = data.decode("ascii").splitlines()
    events = parse_buffer(data, 0, get_parser("auto", 2026), str(log), ParseStats())

    match = _FAST.match

    def frames() -> None:
        for line in lines:
            m = match(line)
            if m is not None:
                m.groups()

    builders = _builders(events)

    def build() -> None:
        for make, values in builders:
            make(*values)

    def serialise() -> None:
        buf = bytearray()
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        for event in events:
            buf += dumps(event, option=newline)

    def real() -> None:
        parse_buffer(data, 0, get_parser("auto", 2026), str(log), ParseStats())

    n = len(lines)
    steps = {"split the frame (every line)": _best(frames), "build the event dicts": _best(build)}
    steps["serialise NDJSON"] = _best(serialise)
    floor = sum(steps.values())
    cores = os.cpu_count() or 1
    print(f"{n:,} lines, {len(events):,} events ({len(events) / n:.1%}), {cores} cores\n")
    print("| step | µs per line |\n|---|---:|")
    for name, seconds in steps.items():
        print(f"| {name} | {seconds / n * 1e6:.2f} |")
    print(f"| **floor** | **{floor / n * 1e6:.2f}** |")
    print(f"| real parser, same process (parse only, no output) | {_best(real, 1) / n * 1e6:.2f} |")
    budget = cores / TARGET
    print(
        f"\n{TARGET:,} lines/s on {cores} cores allows {budget * 1e6:.2f} µs of CPU per line; the floor alone takes "
        f"{floor / n / budget:.0%} of it, leaving {(budget - floor / n) * 1e6:.2f} µs per line for everything else.\n"
        f"A parser doing nothing but the floor would reach {cores * n / floor:,.0f} lines/s on {cores} cores."
    )


if __name__ == "__main__":
    main()
