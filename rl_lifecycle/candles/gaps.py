"""Gaps: runs of expected bars with no candle. Reported everywhere, never filled.

Which bars are expected is the market's trading calendar's call (`rl_lifecycle.markets.calendars`): a weekend
is no gap for fx, a holiday none for an exchange. The one implementation is `TradingCalendar.gaps`.
"""

from __future__ import annotations

import numpy as np

from rl_lifecycle.markets.calendars import Gap, TradingCalendar, get_calendar

__all__ = ["Gap", "find_gaps"]


def find_gaps(
    ts_us: np.ndarray,
    interval_us: int,
    start_us: int | None = None,
    end_us: int | None = None,
    calendar: TradingCalendar | None = None,
) -> list[Gap]:
    """Runs of missing expected bars between the stored ones (and, if given, at the edges); default 24/7."""
    return (calendar or get_calendar()).gaps(ts_us, interval_us, start_us, end_us)
