"""``sentinel parse``: files → NDJSON events on standard output, as fast as the machine allows.

Large regular files are cut into newline-aligned chunks parsed by forked workers, one per
core (:mod:`sentinel.collectors.parallel`); each worker writes its chunk's output to standard
output when its turn comes, so the output is in file order without copying it between
processes.  Small files, pipes and ``--jobs 1`` take the single-process path.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from sentinel.collectors.compressed import DECOMPRESSION_ERRORS, UnsupportedCompression, reader
from sentinel.collectors.parallel import map_chunks
from sentinel.collectors.parsers import LineParser, get_parser
from sentinel.collectors.parsers.journal import JOURNAL_MAGIC
from sentinel.collectors.parsers.lines import ParseStats, parse_buffer
from sentinel.event import Event, nested

BLOCK = 1 << 20  # bytes parsed per call: big enough to amortise, small enough for the cache
PARALLEL_MIN_SIZE = 16 << 20  # below this, forking costs more than it saves


def _serializer(nest: bool) -> Callable[[list[Event]], bytes]:
    """NDJSON for a block of events: one growing buffer, which is several times cheaper
    than joining thousands of small ``bytes`` objects."""
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE

    def serialize(events: list[Event]) -> bytes:
        buf = bytearray()
        if nest:
            for e in events:
                buf += dumps(nested(e), option=newline)
        else:
            for e in events:
                buf += dumps(e, option=newline)
        return bytes(buf)

    return serialize


def parse_range(
    fd: int,
    start: int,
    end: int,
    parse: LineParser,
    path: str,
    stats: ParseStats,
    serialize: Callable[[list[Event]], Any] | None,
    keep: Callable[[Event], bool] | None = None,
) -> list[Any]:
    """Parse bytes [start, end) of ``fd`` (both on line boundaries), one result per block.

    Each block's events go through ``serialize`` (or, with ``keep``, the list of those it
    accepts); with neither the events are only parsed (warming up a parser's memory).
    """
    if keep is not None:
        serialize = lambda events: [e for e in events if keep(e)]  # noqa: E731
    out = []
    pos = start
    rest = b""
    while pos < end:
        data = rest + os.pread(fd, min(BLOCK, end - pos), pos)
        read_at = pos - len(rest)
        pos += len(data) - len(rest)
        cut = data.rfind(b"\n") + 1 if pos < end else len(data)
        rest = data[cut:]
        if cut == 0:  # no newline yet in this block: keep reading
            continue
        events = parse_buffer(data[:cut], read_at, parse, path, stats)
        if events and serialize is not None:
            out.append(serialize(events))
    if rest:
        events = parse_buffer(rest, end - len(rest), parse, path, stats)
        if events and serialize is not None:
            out.append(serialize(events))
    return out


def _parallel(
    fd: int,
    size: int,
    jobs: int,
    make_parser: Callable[[], LineParser],
    path: str,
    serialize: Callable[[list[Event]], bytes],
    stats: ParseStats,
) -> None:
    mine = ParseStats()

    def work(start: int, end: int, warm: int) -> bytes:
        parse = make_parser()
        parse_range(fd, warm, start, parse, path, ParseStats(), None)
        return b"".join(parse_range(fd, start, end, parse, path, mine, serialize))

    sys.stdout.flush()
    for trailer in map_chunks(fd, size, jobs, work, lambda: orjson.dumps(mine.as_dict()), direct_fd=1):
        stats.add(orjson.loads(trailer))


def _sequential(
    stream: Iterable[bytes],
    parse: LineParser,
    path: str | None,
    out: Callable[[bytes], object],
    serialize: Callable[[list[Event]], bytes],
    stats: ParseStats,
) -> None:
    offset = 0
    rest = b""
    for data in stream:
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            events = parse_buffer(data[:cut], offset, parse, path, stats)
            offset += cut
            if events:
                out(serialize(events))
    if rest:
        events = parse_buffer(rest, offset, parse, path, stats)
        if events:
            out(serialize(events))


def _blocks(read: Callable[[int], bytes]) -> Iterable[bytes]:
    """The file's bytes, up to ``BLOCK`` at a time from ``read``."""
    while block := read(BLOCK):
        yield block


def is_binary_journal(name: str) -> bool:
    """A binary journal file (or a directory of them), read through libsystemd, not as lines."""
    if name == "-":
        return False
    if os.path.isdir(name):
        return True
    try:
        with open(name, "rb") as fh:
            return fh.read(len(JOURNAL_MAGIC)) == JOURNAL_MAGIC  # no import of the journal reader otherwise
    except OSError:
        return False


def journal_batches(name: str, stats: ParseStats, size: int = 4096) -> Iterator[list[Event]]:
    """The events of a binary journal file, or of a journal directory's files, in batches.

    A directory without ``*.journal`` files (``*.journal~`` after an unclean shutdown), usually
    one level down under the machine id, is an error (``RuntimeError``), not silence.
    """
    from sentinel.collectors.sources.journald import iter_journal_file_events

    path = Path(name)
    if path.is_dir() and not any(p.name.endswith((".journal", ".journal~")) for p in path.rglob("*.journal*")):
        raise RuntimeError("a directory is read as journal files, and it holds none")
    batch: list[Event] = []
    for event in iter_journal_file_events(path, stats=stats):
        event["log.file.path"] = name
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parse_one(
    name: str,
    fmt: str,
    year: int | None,
    jobs: int,
    write: Callable[[bytes], object],
    serialize: Callable[[list[Event]], bytes],
    stats: ParseStats,
) -> None:
    """Print the events of one file (``-``: standard input), raising what went wrong."""
    if name == "-":
        read, _ = reader(sys.stdin.buffer)
        _sequential(_blocks(read), get_parser(fmt, year), None, write, serialize, stats)
        return
    if fmt in ("auto", "journal") and is_binary_journal(name):
        for batch in journal_batches(name, stats):
            write(serialize(batch))
        return
    with open(name, "rb", buffering=0) as fh:
        read, compressed = reader(fh)  # a compressed rotation is read in one sequential pass
        size = os.fstat(fh.fileno()).st_size
        if not compressed and jobs > 1 and size >= PARALLEL_MIN_SIZE and os.path.isfile(name):
            sys.stdout.buffer.flush()  # what earlier files printed comes first
            _parallel(fh.fileno(), size, jobs, lambda: get_parser(fmt, year), name, serialize, stats)
        else:
            _sequential(_blocks(read), get_parser(fmt, year), name, write, serialize, stats)


def parse_files(
    files: list[str],
    fmt: str = "auto",
    year: int | None = None,
    nested: bool = False,
    show_stats: bool = False,
    jobs: int = 0,
) -> int:
    """Print the events of ``files`` as NDJSON; return the process exit status."""
    # Events hold no reference cycles: the cyclic collector would only rescan them (~20% of
    # the time on a large file).  This is a short-lived command, so switch it off.
    gc.disable()
    serialize = _serializer(nested)
    stats = ParseStats()
    jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
    try:
        get_parser(fmt, year)
    except ValueError as exc:  # an unknown format
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    status = 0
    out = sys.stdout.buffer
    for name in files:
        try:
            _parse_one(name, fmt, year, jobs, out.write, serialize, stats)
        except BrokenPipeError:  # our output was closed (`| head`): not this file's fault
            raise
        except OSError as exc:  # gzip.BadGzipFile is one, without a strerror
            print(f"sentinel: {name}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
        except (RuntimeError, UnsupportedCompression, *DECOMPRESSION_ERRORS) as exc:  # RuntimeError: JournalError
            print(f"sentinel: {name}: {exc or 'the compressed data ends early'}", file=sys.stderr)
            status = 1
    out.flush()
    if show_stats:
        counts = ", ".join(f"{f.name}={getattr(stats, f.name)}" for f in fields(stats))
        print(f"sentinel parse: {counts}", file=sys.stderr)
    return status
