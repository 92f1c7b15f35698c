"""Timestamps in logs → ECS ``@timestamp`` (ISO 8601, UTC, ``Z`` suffix).

Syslog's RFC 3164 stamps (``Mar  1 00:00:01``) carry neither year nor zone: they are local
time, and get the year that puts them in the recent past relative to when they are read,
unless a year is given (replaying old files).  Conversion is cached per minute, which is
what makes it cheap on the hot path: a UTC offset is always whole minutes, so the seconds
carry over unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}

#: A year-less stamp up to this far in the future is clock skew, not last year.
FUTURE_TOLERANCE = timedelta(days=2)
_CACHE_LIMIT = 200_000


class SyslogClock:
    """Converts RFC 3164 stamps to ISO UTC, inferring the year when the log omits it."""

    __slots__ = ("_minutes", "now", "year")

    def __init__(self, year: int | None = None, now: datetime | None = None) -> None:
        self.year = year
        self.now = now
        self._minutes: dict[str, str] = {}

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

    def _convert(self, minute: str, year: int | None) -> str | None:
        try:
            parts = minute.split()
            if len(parts) == 4:  # "Mar  1 2024 00:00": the year stands before the time
                year = int(parts.pop(2))
            mon_name, day, hhmm = parts
            month = MONTHS[mon_name]
            hour, mins = int(hhmm[:2]), int(hhmm[3:5])
            if year is None:
                year = self.year if self.year is not None else self._infer_year(month, int(day))
            local = datetime(year, month, int(day), hour, mins).astimezone()
        except (ValueError, KeyError, OverflowError):
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


def iso_to_utc(stamp: str) -> str | None:
    """An RFC 3339 / ISO 8601 stamp with or without zone → ISO UTC with ``Z`` (naive = local)."""
    try:
        value = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds").replace(
        "+00:00", "Z"
    )


def epoch_to_utc(seconds: float) -> str:
    """Seconds since the epoch → ISO UTC with ``Z``."""
    value = datetime.fromtimestamp(seconds, UTC)
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds").replace(
        "+00:00", "Z"
    )


def now_utc() -> str:
    """The current time as ISO UTC, for records that carry no time of their own."""
    return epoch_to_utc(datetime.now(UTC).timestamp())
