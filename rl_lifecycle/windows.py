"""Time: the one clock, bar arithmetic, and windows (the `window` partition dimension and the anchor of
the canonical feature rule).

Timestamps in the core are int64 microseconds since the Unix epoch, UTC, candle open time.
A bar opened at t is closed at t + interval. A window is the half-open range [start, end);
`anchor(t)` is the start of the window holding t.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from rl_lifecycle.errors import UserInputError

CADENCES = ("monthly", "weekly", "daily")
DAY_US = 86_400_000_000
_EPOCH = date(1970, 1, 1)


def to_us(moment: datetime | date | str) -> int:
    """A date, an aware/naive (UTC) datetime, or an ISO string -> epoch microseconds."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.strip())
        except ValueError as exc:
            raise UserInputError(f"timestamp {moment!r} is not an ISO date or datetime") from exc
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (moment - _EPOCH).days * DAY_US


def utc_now_us() -> int:
    """The wall clock, epoch microseconds UTC: the one clock of the core."""
    return time.time_ns() // 1000


def closed_bars_end(at_us: int, interval_us: int) -> int:
    """Exclusive end of the bars closed by `at`: every bar opened before it has closed (open + interval <= at)."""
    return (int(at_us) // interval_us) * interval_us


def newest_closed_bar(at_us: int, interval_us: int) -> int:
    """Open time of the newest bar closed by `at` (its close, open + interval, is <= at)."""
    return closed_bars_end(at_us, interval_us) - interval_us


def from_us(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))


def iso(value: int) -> str:
    return from_us(value).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    start: int  # epoch microseconds, inclusive
    end: int  # epoch microseconds, exclusive
    key: str  # partition key, e.g. "2024-03-01"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class WindowScheme:
    cadence: str = "monthly"

    def __post_init__(self) -> None:
        if self.cadence not in CADENCES:
            raise UserInputError(f"window cadence {self.cadence!r} is invalid; expected one of {CADENCES}")

    # -- scalar helpers -------------------------------------------------
    def _start_date(self, day: date) -> date:
        if self.cadence == "monthly":
            return day.replace(day=1)
        if self.cadence == "weekly":
            return day - timedelta(days=day.weekday())  # Monday
        return day

    def _next_date(self, start: date) -> date:
        if self.cadence == "monthly":
            return date(start.year + start.month // 12, start.month % 12 + 1, 1)
        return start + timedelta(days=7 if self.cadence == "weekly" else 1)

    def _window_from_date(self, start: date) -> Window:
        return Window(to_us(start), to_us(self._next_date(start)), start.isoformat())

    def containing(self, ts_us: int) -> Window:
        return self._window_from_date(self._start_date(from_us(ts_us).date()))

    def parse(self, key: str) -> Window:
        """Parse a window partition key (`2024-03-01`); it must be the start of a window."""
        try:
            day = date.fromisoformat((key or "").strip())
        except ValueError as exc:
            raise UserInputError(f"window {key!r} is not a date such as 2024-03-01") from exc
        if self._start_date(day) != day:
            raise UserInputError(
                f"window {key!r} is not the start of a {self.cadence} window "
                f"(did you mean {self._start_date(day).isoformat()}?)"
            )
        return self._window_from_date(day)

    def next(self, window: Window) -> Window:
        return self.containing(window.end)

    def previous(self, window: Window) -> Window:
        return self.containing(window.start - 1)

    def latest_ended(self, at_us: int) -> Window:
        """The newest window that has ended by `at` (end <= at): never the current, still-open one."""
        return self.previous(self.containing(at_us))

    def range(self, first: str, last: str) -> list[Window]:
        """Windows from key `first` to key `last`, both included."""
        start, stop = self.parse(first), self.parse(last)
        if stop.start < start.start:
            raise UserInputError(f"window range {first}..{last} is empty: {last} is before {first}")
        out = [start]
        while out[-1].start < stop.start:
            out.append(self.next(out[-1]))
        return out

    def windows_for_bars(self, bars: int, interval_us: int) -> int:
        """How many windows `bars` bars of `interval_us` can span at most (the shortest window counts)."""
        shortest = {"monthly": 28, "weekly": 7, "daily": 1}[self.cadence] * DAY_US
        return -(-bars * interval_us // shortest)

    # -- vectorised ------------------------------------------------------
    def anchors(self, ts_us: np.ndarray) -> np.ndarray:
        """anchor(t) for every t: the start (epoch us) of the window containing it."""
        ts = np.asarray(ts_us, dtype=np.int64)
        days = ts // DAY_US  # floor division: correct before 1970 too
        if self.cadence == "daily":
            start_days = days
        elif self.cadence == "weekly":
            start_days = days - (days + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
        else:
            months = days.astype("datetime64[D]").astype("datetime64[M]")
            start_days = months.astype("datetime64[D]").astype(np.int64)
        return start_days * DAY_US
