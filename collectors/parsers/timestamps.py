"""Timestamps in logs → ECS ``@timestamp`` (ISO 8601, UTC, ``Z`` suffix).

Syslog's RFC 3164 stamps (``Mar  1 00:00:01``) carry neither year nor zone: they are local
time, and get the year that puts them in the recent past relative to when they are read,
unless a year is given (replaying old files).  Conversion is cached per minute, which is
what makes it cheap on the hot path: a UTC offset is always whole minutes, so the seconds
carry over unchanged.  RFC 3339 stamps are cached the same way (per second and zone), the
fraction being carried over as written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MONTHS = {
    m: i for i, m in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)
}

#: A year-less stamp up to this far in the future is clock skew, not last year.
FUTURE_TOLERANCE = timedelta(days=2)
_CACHE_LIMIT = 200_000


class SyslogClock:
    """Converts RFC 3164 stamps to ISO UTC, inferring the year when the log omits it."""

    __slots__ = ("_last_minute", "_last_prefix", "_minutes", "now", "year")

    def __init__(self, year: int | None = None, now: datetime | None = None) -> None:
        self.year = year
        self.now = now
        self._minutes: dict[str, str] = {}
        self._last_minute = ""
        self._last_prefix = ""

    def minute_prefix(self, minute: str, year: str | None = None) -> str | None:
        """``"Mar  1 00:00"`` (or ``"Mar  1 2026 00:00"``) → ``"2026-03-01T00:00:"`` in UTC."""
        key = minute if year is None else f"{minute} {year}"
        prefix = self._minutes.get(key)
        if prefix is None:
            prefix = self._convert(minute, int(year) if year else None)
            if prefix is None:
                return None
            if len(self._minutes) >= _CACHE_LIMIT:
                self._minutes.clear()
            self._minutes[key] = prefix
        return prefix

    def stamp(self, text: str) -> str | None:
        """A fixed-width ``"Mar  1 00:00:01"`` → ``"2026-03-01T00:00:01Z"``.

        Consecutive lines nearly always share their minute, so the last one is remembered
        before the per-minute cache is consulted.
        """
        minute = text[:12]
        if minute == self._last_minute:
            prefix = self._last_prefix
        else:
            found = self.minute_prefix(minute)
            if found is None:
                return None
            prefix = self._last_prefix = found
            self._last_minute = minute
        sec = text[13:15]
        if not (sec.isdigit() and sec.isascii()):
            return None
        return prefix + sec + "Z"

    def _convert(self, minute: str, year: int | None) -> str | None:
        try:
            parts = minute.split()
            if len(parts) == 4:  # "Mar  1 2024 00:00": the year stands before the time
                year = int(parts.pop(2))
            mon_name, day, hhmm = parts
            month = MONTHS[mon_name]
            if len(hhmm) != 5 or hhmm[2] != ":":
                return None
            hour, mins = int(hhmm[:2]), int(hhmm[3:5])
            if year is None:
                year = self.year if self.year is not None else self._infer_year(month, int(day))
            local = datetime(year, month, int(day), hour, mins).astimezone()
        except (ValueError, KeyError, OverflowError, OSError):
            return None
        return f"{local.astimezone(UTC):%Y-%m-%dT%H:%M}:"

    def _infer_year(self, month: int, day: int) -> int:
        now = self.now or datetime.now()
        for year in (now.year, now.year - 1, now.year - 2, now.year - 3, now.year - 4):
            try:
                candidate = datetime(year, month, day)
            except ValueError:  # 29 February outside a leap year
                continue
            if candidate <= now + FUTURE_TOLERANCE:
                return year
        return now.year


_iso_seconds: dict[str, str | None] = {}


def iso_to_utc(stamp: str) -> str | None:
    """An RFC 3339 / ISO 8601 stamp with or without zone → ISO UTC with ``Z`` (naive = local).

    ``2015-04-16T18:02:50.321974+02:00`` → ``2015-04-16T16:02:50.321974Z``.  The conversion of
    the whole-second part and zone is cached, the fraction (up to microseconds) carried over.
    """
    if len(stamp) >= 20 and stamp[19] in ".,":
        end = 20
        while end < len(stamp) and stamp[end].isdigit():
            end += 1
        digits = stamp[20:end]
        key = stamp[:19] + stamp[end:]
    else:
        digits = ""
        key = stamp
    base = _iso_seconds.get(key, "")
    if base == "":
        base = _iso_base(key)
        if len(_iso_seconds) >= _CACHE_LIMIT:
            _iso_seconds.clear()
        _iso_seconds[key] = base
    if base is None:
        return None
    if digits:
        frac = (digits + "00000")[:6]
        if frac != "000000":
            return f"{base}.{frac}Z"
    return f"{base}Z"


def _iso_base(stamp: str) -> str | None:
    """A whole-second ISO stamp → ``YYYY-MM-DDTHH:MM:SS`` in UTC, or ``None`` if invalid."""
    try:
        value = datetime.fromisoformat(stamp)
        return f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%S}"
    except (ValueError, OverflowError, OSError):
        return None


def epoch_to_utc(seconds: float) -> str:
    """Seconds since the epoch → ISO UTC with ``Z``."""
    value = datetime.fromtimestamp(seconds, UTC)
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds").replace("+00:00", "Z")


def now_utc() -> str:
    """The current time as ISO UTC, for records that carry no time of their own."""
    return epoch_to_utc(datetime.now(UTC).timestamp())
