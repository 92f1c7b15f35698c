"""The one small interface every source implements.

A source runs in its own thread: it reads raw records, parses them, and hands
:class:`Batch` es to ``emit``.  A batch carries the source's checkpoint *after* its events, so
the consumer commits both in one transaction and a restart resumes exactly there: no record
lost, none read twice.  ``emit`` may block (back-pressure); a source never drops data itself
(the daemon's queue applies its configured overflow policy).

A source that reads on a clock rather than following its input (the listening-port audit) is a
:class:`PolledSource`: the daemon's scheduler calls its :meth:`~PolledSource.poll`, so it needs no
thread of its own.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sentinel.collectors.parsers.lines import ParseStats
from sentinel.event import Event

Checkpoint = Mapping[str, Any]
#: Where a source stands (any comparable value) and how much input waits beyond it (bytes, entries).
Progress = tuple[Hashable, int]


@dataclass(slots=True)
class Batch:
    """Events read by one source, and where that source stands after them."""

    source: str
    events: list[Event]
    checkpoint: Checkpoint


@dataclass(slots=True)
class SourceStatus:
    """What ``sentinel status`` and the metrics show about a source."""

    name: str
    kind: str
    stats: ParseStats = field(default_factory=ParseStats)
    last_error: str | None = None
    last_read: float | None = None


class Source(ABC):
    """A producer of :class:`Batch` es; one thread each."""

    def __init__(self, name: str, checkpoint: Checkpoint | None) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.status = SourceStatus(name=name, kind=type(self).__name__)

    @abstractmethod
    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Read until ``stop`` is set, calling ``emit`` for each batch (with its checkpoint)."""

    def progress(self) -> Progress | None:
        """Where reading stands and how much input is waiting past it; None if the source cannot tell.

        The daemon's self-check calls it (from another thread) now and then: a source whose
        input waits while its position does not move for several checks is reported stalled.
        It must be cheap and must not disturb the reading thread.
        """
        return None


class PolledSource(Source):
    """A source read every :attr:`interval` seconds: the daemon's scheduler calls :meth:`poll`."""

    #: Seconds between two polls.
    interval: float

    @abstractmethod
    def poll(self, emit: Callable[[Batch], None]) -> None:
        """Read once now and ``emit`` what was found (raises when reading fails)."""

    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Poll every :attr:`interval` in the caller's thread until ``stop`` is set (outside the daemon)."""
        while not stop.is_set():
            started = time.monotonic()
            self.poll(emit)
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
