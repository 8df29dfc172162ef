"""Trading calendars: when a market is open, hence which bars are expected and which missing bars are gaps.

Three kinds, named per market (`markets.calendar`):

- `crypto` (the default): open 24/7, every bar of the interval grid is expected.
- `fx`: 24/5. The week opens Sunday 17:00 and closes Friday 17:00 America/New_York, so its UTC hours
  move with US daylight saving (21:00 UTC in summer, 22:00 UTC in winter). No holidays.
- an exchange code of the `exchange_calendars` library (`XNYS`, `XLON`, ...): its sessions, holidays,
  early closes and lunch breaks.

Timestamps are int64 epoch microseconds UTC, candle open time, on the interval grid (epoch us %
interval == 0; see `candles.validation`). Which bars are expected:

- daily (`1d`) bars: one per session, keyed by the session date at 00:00 UTC, as daily files are.
  crypto: every day; fx: Monday to Friday (the FX day ending at 17:00 New York that day);
  exchanges: the exchange's session dates (holidays excluded).
- intraday bars: every grid bar whose span [open, open + interval) overlaps trading time. For
  exchanges trading time is [session open, session close) minus any lunch break, in UTC, so early
  closes, daylight saving and half-hour opens are followed: with XNYS (09:30-16:00 New York) the 1h
  bar opening at 09:00 New York holds 09:30-10:00 and is expected; the 16:00 bar is not. When the
  session edges lie on the grid (1m bars) this is simply "the bar opens inside the session".

A missing expected bar is a gap. A stored bar the calendar does not expect (a Saturday FX bar, a
pre-market bar) is kept and never counted as a gap, and it does not break `continues`. A close of the
market (a night, a weekend, a holiday) between two bars is no gap either: episodes run across it, and a
position held over it earns the return from the last bar before it to the first bar after it.

Bars per year (`bars_per_year`, the annualisation of every figure a report gives a year's worth of) are
the calendar's own: its expected bars over the whole UTC calendar years a span touches, divided by the
number of those years. XNYS daily in 2023: its 250 sessions; XNYS hourly: 7 bars a session (the 09:00
bar holding 09:30-10:00 counts, as it is an expected row), fewer on early closes; fx hourly: 120 a week,
6,242 in 2023; crypto hourly: 8,760 in 2023, 8,784 in 2024.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.windows import DAY_US

CRYPTO = "crypto"
FX = "fx"
DEFAULT_CALENDAR = CRYPTO
# exchange_calendars' own "24/7" and "24/5" (UTC midnight weeks) would be confused with ours.
_AMBIGUOUS_EXCHANGE_NAMES = {"24/7": CRYPTO, "24/5": FX}
_YEAR_US = 365.25 * DAY_US  # only the fallback of `bars_per_year` uses it
# Default span of a cached exchange calendar; widened when a query reaches beyond it.
_EXCHANGE_SPAN = (date(1990, 1, 1), date(2040, 12, 31))


@dataclass(frozen=True)
class Gap:
    """A run of consecutive expected bars with no candle."""

    start_us: int  # first missing bar
    end_us: int  # first expected bar present again (or the end of the checked range)
    missing_bars: int
    # Last missing bar. Defaults to the 24/7 grid's (end - one bar), so callers may compare with 3-field gaps.
    last_missing_us: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.last_missing_us is None:
            object.__setattr__(self, "last_missing_us", self.end_us - (self.end_us - self.start_us) // self.missing_bars)


class TradingCalendar(ABC):
    """When a market trades. Subclasses say when it is open; bars, gaps and continuity follow from that."""

    name: str

    @abstractmethod
    def open_ranges(self, start_us: int, end_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted [open, close) UTC ranges of trading time that overlap [start, end), as two int64 arrays."""

    @abstractmethod
    def session_days(self, start_us: int, end_us: int) -> np.ndarray:
        """00:00 UTC of each session date in [start, end): the keys of daily bars."""

    def expected_bar_opens(self, start_us: int, end_us: int, interval_us: int) -> np.ndarray:
        """Open times (int64 us, sorted) of the bars in [start, end) that the calendar expects."""
        start_us, end_us, interval_us = int(start_us), int(end_us), int(interval_us)
        if end_us <= start_us:
            return np.empty(0, dtype=np.int64)
        if interval_us == DAY_US:
            return self.session_days(start_us, end_us)
        opens, closes = self.open_ranges(start_us, end_us)
        return _bars_overlapping(opens, closes, start_us, end_us, interval_us)

    def gaps(
        self, ts: np.ndarray, interval_us: int, start_us: int | None = None, end_us: int | None = None
    ) -> list[Gap]:
        """Runs of expected bars missing from sorted, unique `ts` within [start, end).

        Without `start_us` / `end_us` the range is the data's own (first .. last bar), so only gaps
        between stored bars count; with them, missing bars at the edges count too.
        """
        ts = np.asarray(ts, dtype=np.int64)
        if start_us is None or end_us is None:
            if len(ts) == 0:
                return []
            start_us = int(ts[0]) if start_us is None else start_us
            end_us = int(ts[-1]) + 1 if end_us is None else end_us
        grid = self.expected_bar_opens(start_us, end_us, interval_us)
        if len(grid) == 0:
            return []
        missing = np.flatnonzero(~_present(grid, ts))
        if len(missing) == 0:
            return []
        breaks = np.flatnonzero(np.diff(missing) > 1)
        first = np.concatenate((missing[:1], missing[breaks + 1]))
        last = np.concatenate((missing[breaks], missing[-1:]))
        after = last + 1
        resumes = np.where(after < len(grid), grid[np.minimum(after, len(grid) - 1)], end_us)
        return [
            Gap(int(grid[a]), int(r), int(b - a + 1), int(grid[b]))
            for a, b, r in zip(first.tolist(), last.tolist(), resumes.tolist(), strict=True)
        ]

    def continues(self, ts: np.ndarray, interval_us: int) -> np.ndarray:
        """Length n-1: True where no expected bar is missing between ts[i] and ts[i+1] (sorted, unique ts).

        A weekend or holiday between two bars is not a break; a missing expected bar is.
        """
        ts = np.asarray(ts, dtype=np.int64)
        if len(ts) < 2:
            return np.zeros(0, dtype=bool)
        grid = self.expected_bar_opens(int(ts[0]), int(ts[-1]) + 1, interval_us)
        between = np.searchsorted(grid, ts[1:], "left") - np.searchsorted(grid, ts[:-1], "right")
        return (between == 0) & (ts[1:] > ts[:-1])

    def bars_per_year(self, interval_us: int, start_us: int, end_us: int) -> float:
        """The calendar's bars a year around the span [start, end): its expected bars of `interval_us`
        over the whole UTC calendar years the span touches, divided by the number of those years.

        Whole years, not the span itself, so that neither a span's holidays (a quarter with Christmas)
        nor where it starts in the week (a span opening on a Monday and ending on a Friday) move it: a
        report on a quarter of XNYS daily bars in 2023 annualises by the 250 sessions of 2023. An exchange
        calendar that cannot cover those years (its holidays are not recorded that far) falls back to the
        span's own expected bars per 365.25 days."""
        start_us, end_us, interval_us = int(start_us), int(end_us), int(interval_us)
        if end_us <= start_us:
            raise ValueError(f"empty span [{start_us}, {end_us}): no bars to count")
        first, last = _utc_year(start_us), _utc_year(end_us - 1)
        try:
            counts = [_bars_in_year(self, interval_us, year) for year in range(first, last + 1)]
        except UserInputError:
            expected = len(self.expected_bar_opens(start_us, end_us, interval_us))
            return expected * _YEAR_US / (end_us - start_us)
        return sum(counts) / len(counts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class AlwaysOpenCalendar(TradingCalendar):
    """crypto: 24/7."""

    name = CRYPTO

    def open_ranges(self, start_us: int, end_us: int) -> tuple[np.ndarray, np.ndarray]:
        return np.array([start_us], dtype=np.int64), np.array([end_us], dtype=np.int64)

    def session_days(self, start_us: int, end_us: int) -> np.ndarray:
        return _day_grid(start_us, end_us)


class ForexCalendar(TradingCalendar):
    """fx: 24/5, from Sunday 17:00 to Friday 17:00 America/New_York."""

    name = FX
    _zone = ZoneInfo("America/New_York")

    def open_ranges(self, start_us: int, end_us: int) -> tuple[np.ndarray, np.ndarray]:
        # Sundays from the one before `start` (its week may still be open) up to `end`.
        first_day = (start_us // DAY_US) - 7
        first_sunday = first_day + (3 - first_day) % 7  # epoch day 3 (1970-01-04) was a Sunday
        sundays = range(first_sunday, end_us // DAY_US + 1, 7)
        opens = np.array([_ny_17h_us(day, self._zone) for day in sundays], dtype=np.int64)
        closes = np.array([_ny_17h_us(day + 5, self._zone) for day in sundays], dtype=np.int64)
        keep = (closes > start_us) & (opens < end_us)
        return opens[keep], closes[keep]

    def session_days(self, start_us: int, end_us: int) -> np.ndarray:
        days = _day_grid(start_us, end_us)
        return days[(days // DAY_US + 3) % 7 < 5]  # Monday..Friday (epoch day 0 was a Thursday)


@dataclass(frozen=True)
class _Sessions:
    """An exchange's sessions as int64 epoch us arrays (break times only meaningful where `has_break`)."""

    first_day: date
    last_day: date
    labels: np.ndarray
    opens: np.ndarray
    closes: np.ndarray
    break_starts: np.ndarray
    break_ends: np.ndarray
    has_break: np.ndarray

    def covers(self, start_us: int, end_us: int) -> bool:
        return _day_us(self.first_day) <= start_us and end_us <= _day_us(self.last_day) + DAY_US


class ExchangeCalendar(TradingCalendar):
    """An `exchange_calendars` calendar: sessions, holidays, early closes and breaks."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._sessions: _Sessions | None = None
        self._lock = threading.Lock()

    def _covering(self, start_us: int, end_us: int) -> _Sessions:
        with self._lock:
            if self._sessions is None or not self._sessions.covers(start_us, end_us):
                self._sessions = _load_sessions(self.name, start_us, end_us, self._sessions)
            return self._sessions

    def open_ranges(self, start_us: int, end_us: int) -> tuple[np.ndarray, np.ndarray]:
        s = self._covering(start_us - DAY_US, end_us + DAY_US)  # sessions may start the UTC day before
        lo = int(np.searchsorted(s.closes, start_us, "right"))
        hi = int(np.searchsorted(s.opens, end_us, "left"))
        opens, closes = s.opens[lo:hi], s.closes[lo:hi]
        break_starts, break_ends, has_break = s.break_starts[lo:hi], s.break_ends[lo:hi], s.has_break[lo:hi]
        if not has_break.any():
            return opens, closes
        # A session with a lunch break is two ranges: [open, break start) and [break end, close).
        range_opens = np.concatenate((opens, break_ends[has_break]))
        range_closes = np.concatenate((np.where(has_break, break_starts, closes), closes[has_break]))
        order = np.argsort(range_opens, kind="stable")
        return range_opens[order], range_closes[order]

    def session_days(self, start_us: int, end_us: int) -> np.ndarray:
        s = self._covering(start_us, end_us)
        lo, hi = np.searchsorted(s.labels, [start_us, end_us], "left")
        return s.labels[lo:hi]


# ----------------------------------------------------------------------------------- names, lookup


def calendar_names() -> list[str]:
    """Every accepted calendar name: crypto, fx and the exchange codes (aliases excluded)."""
    import exchange_calendars as xcals

    codes = [n for n in xcals.get_calendar_names(include_aliases=False) if n not in _AMBIGUOUS_EXCHANGE_NAMES]
    return [CRYPTO, FX, *codes]


@lru_cache(maxsize=256)
def normalize_calendar_name(raw: str | None) -> str:
    """`crypto`, `fx` (any case) or an exchange code or alias of exchange_calendars (`xnys` -> `XNYS`;
    `XNAS` stays `XNAS`, the user's name, though the library serves it with XNYS's sessions); else UserInputError."""
    text = (raw or "").strip()
    if text.lower() in (CRYPTO, FX):
        return text.lower()
    if text in _AMBIGUOUS_EXCHANGE_NAMES or text.upper() in _AMBIGUOUS_EXCHANGE_NAMES:
        raise UserInputError(
            f"calendar {raw!r} is ambiguous here; use {_AMBIGUOUS_EXCHANGE_NAMES[text.upper()]!r} "
            f"(crypto = 24/7, fx = 24/5 from Sunday 17:00 to Friday 17:00 New York time)"
        )
    import exchange_calendars as xcals

    known = set(xcals.get_calendar_names(include_aliases=True))
    for candidate in (text, text.upper()):
        if candidate in known:
            return candidate
    raise UserInputError(
        f"calendar {raw!r} is unknown; expected crypto (24/7), fx (24/5) or an exchange code of "
        f"exchange_calendars such as XNYS, XNAS, XLON, XETR, XTKS, XHKG "
        f"({len(known)} names: python -c 'import exchange_calendars; print(exchange_calendars.get_calendar_names())')"
    )


@cache
def _calendar(name: str) -> TradingCalendar:
    if name == CRYPTO:
        return AlwaysOpenCalendar()
    if name == FX:
        return ForexCalendar()
    return ExchangeCalendar(name)


def get_calendar(name: str | None = None) -> TradingCalendar:
    """The calendar of that name (default crypto); one shared, cached instance per name."""
    return _calendar(DEFAULT_CALENDAR if name is None else normalize_calendar_name(name))


# ------------------------------------------------------------------------------------------ helpers


def _day_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_US


def _utc_year(ts_us: int) -> int:
    return (datetime(1970, 1, 1) + timedelta(microseconds=ts_us)).year


@lru_cache(maxsize=1024)
def _bars_in_year(calendar: TradingCalendar, interval_us: int, year: int) -> int:
    """Expected bars of one UTC calendar year (calendars are cached singletons: hashable by identity)."""
    start, end = _day_us(date(year, 1, 1)), _day_us(date(year + 1, 1, 1))
    return len(calendar.expected_bar_opens(start, end, interval_us))


def _day_grid(start_us: int, end_us: int) -> np.ndarray:
    first = -(-start_us // DAY_US) * DAY_US
    return np.arange(first, end_us, DAY_US, dtype=np.int64)


@lru_cache(maxsize=8192)
def _ny_17h_us(epoch_day: int, zone: ZoneInfo) -> int:
    day = date(1970, 1, 1) + timedelta(days=epoch_day)
    local = datetime(day.year, day.month, day.day, 17, tzinfo=zone)
    return int(local.astimezone(UTC).timestamp()) * 1_000_000


def _bars_overlapping(opens: np.ndarray, closes: np.ndarray, start_us: int, end_us: int, interval_us: int) -> np.ndarray:
    """Grid bars in [start, end) whose span [t, t + interval) overlaps any [open, close)."""
    valid = closes > opens
    opens, closes = opens[valid], closes[valid]
    if len(opens) == 0:
        return np.empty(0, dtype=np.int64)
    first = (opens // interval_us) * interval_us  # the bar holding the open
    stop = -(-closes // interval_us) * interval_us  # past the bar holding the last open instant
    counts = (stop - first) // interval_us
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    bars = np.repeat(first, counts) + offsets * interval_us
    # Sorted, non-overlapping ranges give sorted bars; ranges sharing a bar (a lunch break inside one
    # hour) repeat it, and one linear pass drops the repeat (np.unique would sort again).
    if len(bars) > 1 and not (bars[1:] >= bars[:-1]).all():
        bars = np.sort(bars)
    keep = np.ones(len(bars), dtype=bool)
    keep[1:] = bars[1:] != bars[:-1]
    return bars[keep & (bars >= start_us) & (bars < end_us)]


def _present(grid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For each grid bar, whether sorted `ts` holds it."""
    if len(ts) == 0:
        return np.zeros(len(grid), dtype=bool)
    at = np.minimum(np.searchsorted(ts, grid), len(ts) - 1)
    return ts[at] == grid


def _load_sessions(name: str, start_us: int, end_us: int, previous: _Sessions | None) -> _Sessions:
    """Build the exchange calendar over the default span widened to the query (and what was cached).

    Some calendars cannot reach that far (XSES holidays end in 2026, XTKS starts in 1997): then only
    the query's years are built, and a query outside the library's data is refused by name.
    """
    import exchange_calendars as xcals

    query_first = (datetime(1970, 1, 1) + timedelta(microseconds=start_us)).date()
    query_last = (datetime(1970, 1, 1) + timedelta(microseconds=max(end_us - 1, start_us))).date()
    wide_first, wide_last = min(query_first, _EXCHANGE_SPAN[0]), max(query_last, _EXCHANGE_SPAN[1])
    if previous is not None:
        wide_first, wide_last = min(wide_first, previous.first_day), max(wide_last, previous.last_day)
    attempts = [(wide_first, wide_last), (date(query_first.year, 1, 1), date(query_last.year, 12, 31)),
                (query_first, query_last)]
    problem = None
    for first, last in attempts:
        try:
            cal = xcals.get_calendar(name, start=first.isoformat(), end=last.isoformat())
        except ValueError as exc:  # the library refuses ranges beyond its recorded holidays
            problem = exc
            continue
        return _Sessions(
            first_day=first,
            last_day=last,
            labels=_us(cal.sessions.values),
            opens=_us(cal.opens.values),
            closes=_us(cal.closes.values),
            break_starts=_us(cal.break_starts.values),
            break_ends=_us(cal.break_ends.values),
            has_break=~np.isnat(np.asarray(cal.break_starts.values)),
        )
    raise UserInputError(f"calendar {name!r} cannot cover {query_first} .. {query_last}: {problem}")


def _us(values: np.ndarray) -> np.ndarray:
    """datetime64 (naive UTC) -> int64 epoch us; NaT becomes 0 (callers mask it)."""
    raw = np.asarray(values).astype("datetime64[us]")
    return np.where(np.isnat(raw), np.datetime64(0, "us"), raw).astype(np.int64)
