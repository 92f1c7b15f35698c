"""The disk spool in front of Elasticsearch: ordered, acknowledged, crash-safe, bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sentinel.store.spool import SUFFIX, Spool

MIB = 1024 * 1024


def docs(n: int, start: int = 0, size: int = 100) -> list[bytes]:
    return [f"{i:08d}".encode() + b"x" * (size - 8) for i in range(start, start + n)]


def drain(spool: Spool, max_docs: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while True:
        lines, end = spool.read(max_docs, 1 << 20, timeout=0)
        if not lines:
            return out
        out.extend(lines)
        spool.ack(end)


def test_reads_in_order_across_segments_and_frees_acknowledged_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 8 * MIB)  # segments of 1 MiB
    written = docs(30_000)
    for i in range(0, len(written), 1000):
        spool.append(written[i : i + 1000])
    assert len(list(tmp_path.glob("*" + SUFFIX))) > 2
    assert drain(spool, 777) == written
    assert spool.pending_bytes == 0
    assert len(list(tmp_path.glob("*" + SUFFIX))) == 1  # only the segment being written
    spool.close()


def test_unacknowledged_documents_are_read_again_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 8 * MIB)
    spool.append(docs(100))
    lines, end = spool.read(40, 1 << 20, timeout=0)
    spool.ack(end)
    lines, _ = spool.read(40, 1 << 20, timeout=0)  # sent, never acknowledged: a crash now
    assert lines == docs(40, 40)
    spool.close()
    again = Spool(tmp_path, 8 * MIB)
    assert drain(again) == docs(60, 40)
    again.close()


def resending(spool: Spool) -> bool:
    """``spool.resending`` read afresh (mypy would narrow the property after a first assert)."""
    return spool.resending


def test_documents_sent_but_not_acknowledged_are_flagged_as_a_resend_even_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 8 * MIB)
    spool.append(docs(300))
    assert not resending(spool)
    lines, end = spool.read(100, 1 << 20, timeout=0)
    spool.mark_sent(end)
    spool.ack(end)
    assert not resending(spool)  # sent and acknowledged: the next documents are new to the receiver
    lines, end = spool.read(100, 1 << 20, timeout=0)
    spool.mark_sent(end)  # sent, then the answer is lost (or the process dies)
    assert resending(spool)
    spool.close()
    again = Spool(tmp_path, 8 * MIB)
    assert resending(again)
    resent, end = again.read(100, 1 << 20, timeout=0)
    assert resent == lines
    again.mark_sent(end)
    again.ack(end)
    assert not resending(again)
    assert drain(again) == docs(100, start=200)
    again.close()
    final = Spool(tmp_path, 8 * MIB)
    assert not resending(final)
    final.close()


def test_a_torn_last_line_is_cut_off_on_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 8 * MIB)
    spool.append(docs(3))
    spool.close()
    segment = next(tmp_path.glob("*" + SUFFIX))
    with open(segment, "ab") as fh:
        fh.write(b'{"half a docu')  # a crash in the middle of a write
    again = Spool(tmp_path, 8 * MIB)
    again.append(docs(1, 3))
    assert drain(again) == docs(4)
    again.close()


def test_block_policy_waits_for_the_reader_and_loses_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 * MIB, "block")
    written = docs(30_000)  # ~3 MB through a 1 MiB spool
    received: list[bytes] = []

    def writer() -> None:
        for i in range(0, len(written), 500):
            spool.append(written[i : i + 500])

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 2
    while spool.blocked_since is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.blocked_since is not None, "the writer should wait once the spool is full"
    assert spool.pending_bytes <= 1 * MIB
    while t.is_alive() or spool.pending_bytes:
        lines, end = spool.read(1000, 1 << 20, timeout=0.1)
        received.extend(lines)
        spool.ack(end)
    t.join()
    assert received == written
    spool.close()


def test_drop_oldest_policy_counts_exactly_what_it_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 * MIB, "drop_oldest")  # segments of 128 KiB
    written = docs(30_000)
    dropped = 0
    for i in range(0, len(written), 500):
        gone = spool.append(written[i : i + 500])
        if gone is not None:
            assert gone.bytes == gone.documents * 101
            dropped += gone.documents
    assert dropped > 0
    assert spool.pending_bytes <= 1 * MIB
    kept = drain(spool)
    assert len(kept) + dropped == len(written)
    assert kept == written[dropped:]  # the oldest went, in order
    spool.close()


def test_a_blocked_writer_is_released_by_close(tmp_path: Path) -> None:
    from sentinel.store.spool import SpoolClosed

    spool = Spool(tmp_path, 1 * MIB, "block")
    spool.append(docs(9000))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            spool.append(docs(3000))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.2)
    spool.close()
    t.join(3)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SpoolClosed)


def test_the_spool_refuses_a_bound_below_one_mebibyte(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 MiB"):
        Spool(tmp_path, 1000)


def test_another_process_can_read_how_much_is_pending(tmp_path: Path) -> None:
    from sentinel.store.spool import pending_on_disk

    assert pending_on_disk(tmp_path / "none") == 0
    spool = Spool(tmp_path, 8 * MIB)
    spool.append(docs(30_000))  # several segments
    _lines, end = spool.read(1234, 1 << 20, timeout=0)
    spool.ack(end)
    assert pending_on_disk(tmp_path) == spool.pending_bytes == (30_000 - 1234) * 101
    drain(spool)
    assert pending_on_disk(tmp_path) == 0
    spool.close()
