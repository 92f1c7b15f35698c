"""Per-key rule state on event time, bounded in memory.

Each structure maps a group key to the little it must remember: a count window keeps at most
``threshold - 1`` entries per key, each packed into one int (milliseconds << 64 | event id), so
a million attacking addresses cost about 150 bytes each.  State expires with its window
(:meth:`expire`), and a hard cap on keys evicts the oldest, counting every eviction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ID_BITS = 64
_ID_MASK = (1 << _ID_BITS) - 1


def pack(t: float, eid: int) -> int:
    """One int for (event time, event id)."""
    return (int(t * 1000) << _ID_BITS) | eid


def unpack_id(entry: int) -> str:
    return f"{entry & _ID_MASK:016x}"


@dataclass(slots=True)
class WindowStats:
    keys: int = 0
    evicted: int = 0
    expired: int = 0


class CountWindows:
    """Fires when ``threshold`` attempts of one key fall within ``window`` seconds."""

    __slots__ = ("_state", "max_keys", "stats", "threshold", "window_ms")

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window_ms = int(window * 1000)
        self.max_keys = max_keys
        self.stats = WindowStats()
        self._state: dict[Any, int | list[int]] = {}

    def add(self, key: Any, entry: int, n: int = 1) -> list[int] | None:
        """Record ``n`` attempts; return the entries of the window that fired, or ``None``."""
        th = self.threshold
        state = self._state
        cur = state.get(key)
        if cur is None:
            if n >= th:
                return [entry] * th
            if len(state) >= self.max_keys:
                del state[next(iter(state))]
                self.stats.evicted += 1
            state[key] = entry if n == 1 else [entry] * n
            return None
        entries = [cur] if isinstance(cur, int) else cur
        entries.extend([entry] * min(n, th))
        entries.sort()
        win = self.window_ms
        count = len(entries)
        for i in range(count - th + 1):
            if (entries[i + th - 1] >> _ID_BITS) - (entries[i] >> _ID_BITS) <= win:
                del state[key]
                return entries[i : i + th]
        # Keep the newest th-1 entries that can still share a window with a future entry.
        newest = entries[-1] >> _ID_BITS
        kept = [e for e in entries[-(th - 1) :] if newest - (e >> _ID_BITS) <= win]
        del state[key]  # re-insert: active keys move to the young end, away from eviction
        state[key] = kept
        return None

    def expire(self, now: float) -> None:
        """Forget keys whose newest entry can no longer share a window with an event at ``now``."""
        limit = (int(now * 1000) - self.window_ms) << _ID_BITS
        state = self._state
        stale = [k for k, v in state.items() if (v if isinstance(v, int) else v[-1]) < limit]
        for k in stale:
            del state[k]
        self.stats.expired += len(stale)

    def __len__(self) -> int:
        return len(self._state)


class DistinctWindows:
    """Fires when one key shows ``threshold`` distinct values of a field within ``window``."""

    __slots__ = ("_newest", "_state", "max_keys", "stats", "threshold", "window_ms")

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window_ms = int(window * 1000)
        self.max_keys = max_keys
        self.stats = WindowStats()
        self._state: dict[Any, dict[Any, int]] = {}  # key -> {value: newest entry with it}
        self._newest: dict[Any, int] = {}  # key -> newest entry of any value

    def add(self, key: Any, value: Any, entry: int) -> list[int] | None:
        state = self._state
        values = state.get(key)
        if values is None:
            if len(state) >= self.max_keys:
                oldest = next(iter(state))
                del state[oldest], self._newest[oldest]
                self.stats.evicted += 1
            values = state[key] = {}
            newest = entry
        else:
            newest = max(entry, self._newest[key])
        self._newest[key] = newest
        if entry > values.get(value, 0):
            values[value] = entry
        if len(values) >= self.threshold:
            limit = ((newest >> _ID_BITS) - self.window_ms) << _ID_BITS
            for v in [v for v, e in values.items() if e < limit]:
                del values[v]
            if len(values) >= self.threshold:
                del state[key], self._newest[key]
                return sorted(values.values())
        return None

    def expire(self, now: float) -> None:
        limit = (int(now * 1000) - self.window_ms) << _ID_BITS
        stale = [k for k, newest in self._newest.items() if newest < limit]
        for k in stale:
            del self._state[k], self._newest[k]
        self.stats.expired += len(stale)

    def __len__(self) -> int:
        return len(self._state)


class NewValues:
    """Remembers, per key, the values seen and when; a value unseen within ``remember`` is new.

    This is the one piece of rule state worth keeping across restarts (the countries each
    account logs in from): :meth:`dump` and :meth:`load` give it a JSON-able form.
    """

    __slots__ = ("_state", "learn_first", "max_keys", "remember", "stats")

    def __init__(self, remember: float, max_keys: int, learn_first: bool = True) -> None:
        self.remember = remember
        self.max_keys = max_keys
        self.learn_first = learn_first
        self.stats = WindowStats()
        self._state: dict[str, dict[str, float]] = {}

    def add(self, key: str, value: str, t: float) -> tuple[bool, list[str]]:
        """Record ``value`` for ``key`` at ``t``; return (is it new, the values known before)."""
        seen = self._state.get(key)
        if seen is None:
            if len(self._state) >= self.max_keys:
                del self._state[next(iter(self._state))]
                self.stats.evicted += 1
            self._state[key] = {value: t}
            return (not self.learn_first, [])
        known = [v for v, last in seen.items() if t - last <= self.remember]
        last = seen.get(value)
        seen[value] = max(t, last or t)
        return (last is None or t - last > self.remember, known)

    def expire(self, now: float) -> None:
        """Forget values not seen within ``remember``.

        The key itself stays (with no values): an account idle for months whose next login
        comes from a new country is exactly the takeover to report, not one to learn silently.
        """
        for seen in self._state.values():
            stale = [v for v, last in seen.items() if now - last > self.remember]
            for v in stale:
                del seen[v]
            self.stats.expired += len(stale)

    def dump(self) -> dict[str, dict[str, float]]:
        return self._state

    def load(self, state: dict[str, dict[str, float]]) -> None:
        self._state = {str(k): {str(v): float(t) for v, t in vals.items()} for k, vals in state.items()}

    def __len__(self) -> int:
        return len(self._state)
