"""Newline-aligned chunks of one large file, processed by forked workers, results in file order.

Used by ``sentinel parse`` and ``sentinel replay``: parsing is the expensive part and every
chunk can be parsed on its own.  Two ways to deliver results:

* ``direct_fd``: each worker writes its chunk's bytes straight to that descriptor when its
  turn comes (a token passed round a ring of pipes) — no copy through the parent;
* otherwise each worker sends its results through its own pipe and the parent hands them to
  ``emit`` in chunk order; a chunk's result may be several messages (a list of ``bytes``), so
  chunks can be large (little warm-up per byte) while the parent holds one message at a time.

A worker starts parsing ``WARMUP`` bytes before its chunk and discards what that yields, so
parsers that remember a connection across lines (sshd names the peer only in some of them)
see the same context they would in one sequential pass.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import struct
import traceback
from collections.abc import Callable

CHUNK = 8 << 20
WARMUP = 512 << 10
_LEN = struct.Struct("<Q")
#: A worker's exit status when its output was closed (``sentinel parse big.log | head``).
_BROKEN_PIPE = 32

#: ``work(start, end, warmup_start)`` parses bytes [start, end) after warming up on
#: [warmup_start, start); it returns the chunk's result as bytes, or (with ``emit``) as a list
#: of messages, each handed to ``emit`` on its own.
Work = Callable[[int, int, int], bytes | list[bytes]]


def boundaries(fd: int, size: int, chunk: int = CHUNK) -> list[int]:
    """Offsets cutting the file into ~``chunk``-byte pieces, each just after a newline."""
    cuts = [0]
    pos = chunk
    while pos < size:
        probe = os.pread(fd, 1 << 16, pos)
        nl = probe.find(b"\n")
        while nl < 0 and probe:  # a very long line: look further
            pos += len(probe)
            probe = os.pread(fd, 1 << 16, pos)
            nl = probe.find(b"\n")
        if nl < 0:
            break
        cut = pos + nl + 1
        if cut >= size:
            break
        cuts.append(cut)
        pos = cut + chunk
    cuts.append(size)
    return cuts


def warmup_start(fd: int, start: int) -> int:
    """A line start about ``WARMUP`` bytes before ``start`` (0 for the first chunk)."""
    if start == 0:
        return 0
    pos = max(0, start - WARMUP)
    if pos == 0:
        return 0
    probe = os.pread(fd, start - pos, pos)
    nl = probe.find(b"\n")
    return start if nl < 0 else pos + nl + 1


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, min(n, 1 << 20))
        if not part:
            raise EOFError("a worker exited early")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _send(fd: int, data: bytes) -> None:
    _write_all(fd, _LEN.pack(len(data)))
    _write_all(fd, data)


def _receive(fd: int) -> bytes:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size))
    return _read_exact(fd, n)


def map_chunks(
    fd: int,
    size: int,
    jobs: int,
    work: Work,
    finish: Callable[[], bytes],
    emit: Callable[[bytes], None] | None = None,
    direct_fd: int | None = None,
    chunk: int = CHUNK,
) -> list[bytes]:
    """Run ``work`` over the chunks of ``fd`` in ``jobs`` forked workers.

    Results reach ``emit`` (or ``direct_fd``) in file order.  Returns each worker's
    ``finish()`` bytes (e.g. its counters).  Raises ``RuntimeError`` if a worker failed.
    """
    cuts = boundaries(fd, size, chunk)
    ranges = list(itertools.pairwise(cuts))
    jobs = max(1, min(jobs, len(ranges)))
    tokens = [os.pipe() for _ in range(jobs)] if direct_fd is not None else []
    results = [os.pipe() for _ in range(jobs)]
    pids = []
    for w in range(jobs):
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 0
            try:
                for _, write_end in results[:w] + results[w + 1 :]:
                    os.close(write_end)
                out = results[w][1]
                for k in range(w, len(ranges), jobs):
                    start, end = ranges[k]
                    data = work(start, end, warmup_start(fd, start))
                    if direct_fd is None:
                        messages = [data] if isinstance(data, bytes) else data
                        _write_all(out, _LEN.pack(len(messages)))
                        for message in messages:
                            _send(out, message)
                    else:
                        assert isinstance(data, bytes)
                        if k > 0:
                            os.read(tokens[w][0], 1)  # wait for our turn
                        _write_all(direct_fd, data)
                        os.write(tokens[(w + 1) % jobs][1], b"t")
                _send(out, finish())
            except BrokenPipeError:
                code = _BROKEN_PIPE
            except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
                code = 130
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    for _, write_end in results:
        os.close(write_end)
    trailers: list[bytes] = []
    finished = False
    statuses: list[int] = []
    try:
        if direct_fd is None and emit is not None:
            for k in range(len(ranges)):
                fd_k = results[k % jobs][0]
                (count,) = _LEN.unpack(_read_exact(fd_k, _LEN.size))
                for _ in range(count):
                    emit(_receive(fd_k))
        trailers = [_receive(r) for r, _ in results]
        finished = True
    except EOFError:  # a worker ended early: failed, or its output was closed
        pass
    finally:
        if not finished:  # the others would wait for ever: for their turn, or for the parent to read
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
        for r, _ in results:
            os.close(r)
        for r, w_end in tokens:
            os.close(r)
            os.close(w_end)
    if any(os.WIFEXITED(s) and os.WEXITSTATUS(s) == _BROKEN_PIPE for s in statuses):
        raise BrokenPipeError("the output was closed")
    if not finished or any(s != 0 for s in statuses):
        raise RuntimeError("a parallel worker failed (see its error above)")
    return trailers
