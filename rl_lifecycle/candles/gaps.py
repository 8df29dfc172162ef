"""Gaps: runs of interval-grid bars with no candle. Reported everywhere, never filled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gap:
    start_us: int  # first missing bar
    end_us: int  # first bar present again
    missing_bars: int

    @property
    def last_missing_us(self) -> int:
        return self.end_us - (self.end_us - self.start_us) // self.missing_bars


def find_gaps(ts_us: np.ndarray, interval_us: int, start_us: int | None = None, end_us: int | None = None) -> list[Gap]:
    """Runs of missing interval-grid bars between consecutive timestamps (and, if given, at the edges)."""
    ts = np.asarray(ts_us, dtype=np.int64)
    points = ts
    if start_us is not None:
        points = np.concatenate(([start_us - interval_us], points))
    if end_us is not None:
        points = np.concatenate((points, [end_us]))
    if len(points) < 2:
        return []
    steps = np.diff(points)
    where = np.nonzero(steps > interval_us)[0]
    return [
        Gap(int(points[i] + interval_us), int(points[i + 1]), int(steps[i] // interval_us - 1)) for i in where
    ]
