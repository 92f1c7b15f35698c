"""``sentinel replay``: evaluate the rules over log files on event time, responding to nothing.

Replaying last week's log gives the findings a live run would have given, because windows
run on the events' own timestamps.  Findings are printed as NDJSON; a progress bar is shown
on a terminal (never when standard error is not one).
"""

from __future__ import annotations

import gc
import marshal
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import orjson

from sentinel.collectors.compressed import DECOMPRESSION_ERRORS, UnsupportedCompression, compression_of, reader
from sentinel.collectors.parallel import CHUNK, map_chunks
from sentinel.collectors.parse_files import PARALLEL_MIN_SIZE, is_binary_journal, journal_batches, parse_range
from sentinel.collectors.parsers import LineParser, get_parser
from sentinel.collectors.parsers.lines import ParseStats, parse_buffer
from sentinel.config import Settings
from sentinel.engine.engine import Engine, int_id
from sentinel.engine.rule import load_rules
from sentinel.enrich.geoip import GeoIPError, open_enricher
from sentinel.event import Event, event_time
from sentinel.pipeline import engine_options

BLOCK = 1 << 20
#: How much of each file is read to date it (its first event) before a replay of several.
FIRST_EVENT_BYTES = 256 << 10


def _blocks(path: str, advance: Callable[[int], None]) -> Iterator[tuple[int, bytes]]:
    """(offset, complete lines) blocks of a file, decompressed if it is a compressed rotation
    (offsets then count decompressed bytes; the progress, the file's own), or of stdin for ``-``."""
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        read, compressed = reader(raw)
        offset = 0
        rest = b""
        done = 0
        while data := read(BLOCK):
            if not compressed or path == "-":  # (no progress bar for standard input)
                advance(len(data))
            else:
                advance(raw.tell() - done)
                done = raw.tell()
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield offset, data[:cut]
                offset += cut
        if rest:
            yield offset, rest
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


def _progress(total: int) -> tuple[AbstractContextManager[object], Callable[[int], None]]:
    if not sys.stderr.isatty():
        return nullcontext(), lambda n: None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("replay"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=__import__("rich.console").console.Console(file=sys.stderr),
    )
    task = bar.add_task("replay", total=total)
    return bar, lambda n: bar.advance(task, n)


def _either(a: Callable[[Event], bool], b: Callable[[Event], bool]) -> Callable[[Event], bool]:
    return lambda e: a(e) or b(e)


def _pack(size: int, events: list[Event]) -> bytes:
    """One worker message: the input bytes it covers and the events with their times and ids
    (computed here, off the parent's path).  marshal is about twice as fast as pickle for these
    plain dicts; an event holding anything else (never from our parsers) falls back to pickle."""
    batch = (size, events, [event_time(e["@timestamp"]) for e in events], [int_id(e) for e in events])
    try:
        return b"m" + marshal.dumps(batch)
    except ValueError:
        return b"p" + pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def _parallel(
    name: str,
    jobs: int,
    wants: Callable[[Event], bool],
    make_parser: Callable[[], LineParser],
    stats: ParseStats,
    feed: Callable[[list[Event], list[float] | None, list[int] | None], None],
    advance: Callable[[int], None],
) -> None:
    """Parse in forked workers, which keep only the events ``wants`` (some rule, or the enricher, whose
    state depends on order, so it runs here); evaluate here, in file order."""
    mine = ParseStats()
    fd = os.open(name, os.O_RDONLY)
    try:

        def work(start: int, end: int, warm: int) -> list[bytes]:
            parse = make_parser()
            parse_range(fd, warm, start, parse, name, ParseStats(), None)
            # One message per block, packed as soon as it is parsed: the worker holds bytes, not
            # a chunk's events, and the parent one block's events at a time.
            messages = parse_range(fd, start, end, parse, name, mine, lambda es: _pack(0, [e for e in es if wants(e)]))
            messages.append(_pack(end - start, []))  # the chunk's size, for the progress bar
            return messages

        def emit(data: bytes) -> None:
            loads = marshal.loads if data[:1] == b"m" else pickle.loads
            size, events, times, ids = loads(memoryview(data)[1:])  # our own forked worker: trusted
            advance(size)
            feed(events, times, ids)

        size = os.fstat(fd).st_size
        trailers = map_chunks(fd, size, jobs, work, lambda: orjson.dumps(mine.as_dict()), emit=emit, chunk=CHUNK)
        for trailer in trailers:
            stats.add(orjson.loads(trailer))
    finally:
        os.close(fd)


def _first_event_time(name: str, fmt: str, year: int | None) -> float | None:
    """The time of the first event in the file's first 256 KiB, or in a journal (None: none, or
    unreadable — the replay itself reports that)."""
    try:
        if fmt in ("auto", "journal") and is_binary_journal(name):
            first = next(journal_batches(name, ParseStats(), size=1), [])
            return event_time(first[0]["@timestamp"]) if first else None
        with open(name, "rb") as raw:
            read, _ = reader(raw)
            data = b""
            while len(data) < FIRST_EVENT_BYTES and (more := read(FIRST_EVENT_BYTES - len(data))):
                data += more
    except (OSError, RuntimeError, UnsupportedCompression, *DECOMPRESSION_ERRORS):
        return None
    data = data[: data.rfind(b"\n") + 1]
    for event in parse_buffer(data, 0, get_parser(fmt, year), name, ParseStats()):
        stamp = event.get("@timestamp")
        if isinstance(stamp, str):
            return event_time(stamp)
    return None


def in_time_order(files: list[str], fmt: str = "auto", year: int | None = None) -> list[str]:
    """``files`` ordered by the time of their first event.

    Windows run on event time, so rotations must be replayed oldest first; a shell glob
    (``auth.log*``: auth.log, auth.log.1, auth.log.2.gz) names them newest first, which would
    replay the week backwards and miss most findings.  Files without a datable event keep their
    place relative to the others; standard input (``-``) leaves the order as given.
    """
    if "-" in files or len(files) < 2:
        return files
    times = {name: _first_event_time(name, fmt, year) for name in dict.fromkeys(files)}
    dated = iter(sorted((n for n in files if times[n] is not None), key=lambda n: times[n] or 0.0))
    return [next(dated) if times[n] is not None else n for n in files]


def replay(
    files: list[str],
    settings: Settings,
    rule_dirs: list[Path],
    fmt: str = "auto",
    year: int | None = None,
    show_stats: bool = False,
    jobs: int = 0,
    geoip_db: Path | None = None,
) -> int:
    """Print the findings the rules make of ``files``; return the exit status."""
    gc.disable()  # no reference cycles in events; see parse_files
    rules = load_rules([*settings.rules.directories, *rule_dirs], settings.rules.disabled)
    engine = Engine(rules, engine_options(settings.engine))
    geo = settings.geoip if geoip_db is None else settings.geoip.model_copy(update={"database": geoip_db})
    try:
        enricher = open_enricher(geo)
    except GeoIPError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    parse = get_parser(fmt, year)
    ordered = in_time_order(files, fmt, year)
    if ordered != files:
        print(f"sentinel: replaying oldest first: {', '.join(ordered)}", file=sys.stderr)
        files = ordered
    stats = ParseStats()
    out = sys.stdout.buffer
    total = sum(os.path.getsize(f) for f in files if f != "-" and os.path.isfile(f))
    bar, advance = _progress(total)
    process = engine.process
    dumps = orjson.dumps

    enrich = enricher.enrich if enricher is not None else None

    def feed(events: list[Event], times: list[float] | None = None, ids: list[int] | None = None) -> None:
        if times is None or ids is None:
            for event in events:
                if enrich is not None:
                    enrich(event)
                for finding in process(event):
                    out.write(dumps(finding) + b"\n")
            return
        for event, t, eid in zip(events, times, ids, strict=True):
            if enrich is not None:
                enrich(event)  # adds geo and travel fields, none of which the time or id read
            for finding in process(event, t, eid):
                out.write(dumps(finding) + b"\n")

    jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
    with bar:
        for name in files:
            path = None if name == "-" else name
            try:
                if (
                    jobs > 1
                    and name != "-"
                    and os.path.isfile(name)
                    and os.path.getsize(name) >= PARALLEL_MIN_SIZE
                    and compression_of(name) is None
                ):
                    keep = engine.wants if enricher is None else _either(engine.wants, enricher.selects)
                    _parallel(name, jobs, keep, lambda: get_parser(fmt, year), stats, feed, advance)
                    continue
                if fmt in ("auto", "journal") and is_binary_journal(name):
                    for batch in journal_batches(name, stats):
                        feed(batch)
                    continue
                for offset, block in _blocks(name, advance):
                    feed(parse_buffer(block, offset, parse, path, stats))
            except BrokenPipeError:  # our output was closed (`| head`): not this file's fault
                raise
            except OSError as exc:  # gzip.BadGzipFile is one, without a strerror
                print(f"sentinel: {name}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            except (RuntimeError, UnsupportedCompression, *DECOMPRESSION_ERRORS) as exc:  # RuntimeError: JournalError
                print(f"sentinel: {name}: {exc or 'the compressed data ends early'}", file=sys.stderr)
                return 1
    out.flush()
    if enricher is not None:
        enricher.close()
    if show_stats:
        e = engine.stats
        print(
            f"sentinel replay: lines={stats.lines} events={stats.events} matched={e.matched} twins={e.twins} "
            f"late={e.late} findings={sum(e.findings.values())} suppressed={e.suppressed} "
            f"state_keys={sum(engine.state_sizes().values())}",
            file=sys.stderr,
        )
    return 0
