"""Erasure and the spool: the ids ``audit erase`` withholds, and how the shipper's view follows them."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from sentinel.state_lock import daemon_running, lock_state_dir
from sentinel.store.spool import Spool, document_line
from sentinel.store.withhold import WITHHELD, Withheld, spooled_naming, wait_for_in_flight, withhold
from tests.conftest import require_root

MIB = 1024 * 1024


def spool_with(directory: Path, docs: dict[str, dict[str, object]]) -> Spool:
    spool = Spool(directory, 8 * MIB)
    spool.append([document_line(eid, orjson.dumps(doc)) for eid, doc in docs.items()])
    return spool


DOCS: dict[str, dict[str, object]] = {
    "a": {"user.name": "alice", "message": "Failed password for alice"},
    "b": {"user.name": "bob", "message": "alice was mentioned, not named"},
    "c": {"related.user": ["carol", "alice"]},
    "d": {"user.target.name": "alice"},
    "e": {"user.name": "alice2"},
}


def test_the_documents_naming_the_person_are_those_the_delete_by_query_matches(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, DOCS)
    assert spooled_naming(tmp_path, "alice") == ["a", "c", "d"]
    _lines, end = spool.read(2, MIB, timeout=0)
    spool.ack(end)  # a and b are shipped: only what still waits counts
    assert spooled_naming(tmp_path, "alice") == ["c", "d"]
    assert spooled_naming(tmp_path / "missing", "alice") == []
    spool.close()


def test_withheld_ids_are_seen_by_the_shipper_and_forgotten_once_the_spool_is_empty(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, DOCS)
    view = Withheld(tmp_path)
    assert view.refresh() == frozenset()
    assert withhold(tmp_path, "alice") == 3
    assert view.refresh() == {"a", "c", "d"}
    assert withhold(tmp_path, "bob") == 1
    assert view.refresh() == {"a", "b", "c", "d"}
    view.clear(lambda: spool.pending_bytes == 0)
    assert view.refresh() == {"a", "b", "c", "d"}  # the spool still holds them: kept
    _lines, end = spool.read(100, MIB, timeout=0)
    spool.ack(end)
    view.clear(lambda: spool.pending_bytes == 0)
    assert view.ids == frozenset()
    assert (tmp_path / WITHHELD).read_bytes() == b""
    spool.close()


@pytest.mark.root
def test_a_file_root_creates_belongs_to_the_spools_owner(tmp_path: Path) -> None:
    require_root("to hand the file to another owner")
    spool = spool_with(tmp_path / "spool", DOCS)
    os.chown(tmp_path / "spool", 65534, 65534)  # as the daemon's user owns its spool
    withhold(tmp_path / "spool", "alice")
    st = os.stat(tmp_path / "spool" / WITHHELD)
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert st.st_mode & 0o777 == 0o640
    spool.close()


def test_the_erasure_waits_for_the_bulk_request_in_flight(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, DOCS)
    assert wait_for_in_flight(tmp_path, daemon_running=True, timeout=0.1)  # nothing sent
    _lines, end = spool.read(100, MIB, timeout=0)
    spool.mark_sent(end)
    assert not wait_for_in_flight(tmp_path, daemon_running=True, timeout=0.2)  # no answer yet
    assert wait_for_in_flight(tmp_path, daemon_running=False, timeout=0.2)  # no daemon: nothing in flight
    answered = threading.Timer(0.3, spool.ack, args=(end,))
    answered.start()
    started = time.monotonic()
    assert wait_for_in_flight(tmp_path, daemon_running=True, timeout=10)
    assert time.monotonic() - started >= 0.25
    answered.join()
    spool.close()


def test_a_running_daemon_is_recognised_by_its_lock(tmp_path: Path) -> None:
    assert not daemon_running(tmp_path)
    fd = lock_state_dir(tmp_path)
    assert fd is not None
    assert daemon_running(tmp_path)
    os.close(fd)
    assert not daemon_running(tmp_path)
