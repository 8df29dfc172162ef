"""The pure hold rules: arrays and calendars in, reason codes and the figures behind them out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from rl_lifecycle.markets.calendars import TradingCalendar
from rl_lifecycle.models.statistics import FeatureStatistics
from rl_lifecycle.windows import newest_closed_bar

MISSING_CRITICAL_FEATURES = "MISSING_CRITICAL_FEATURES"
OOD = "OOD"
STALE_FEATURES = "STALE_FEATURES"
FEATURE_SET_MISMATCH = "FEATURE_SET_MISMATCH"
FILL_MISMATCH = "FILL_MISMATCH"
NO_CHAMPION = "NO_CHAMPION"
# The order reasons are listed in (every applicable one is).
REASON_CODES = (NO_CHAMPION, FEATURE_SET_MISMATCH, FILL_MISMATCH, STALE_FEATURES, MISSING_CRITICAL_FEATURES, OOD)


def missed_bars(calendar: TradingCalendar, interval_us: int, newest_ts: int | None, at_us: int) -> int | None:
    """Bars the calendar expects that closed by `at` after the newest stored one (None: no candle at all).

    A weekend of an FX market or a night of an exchange's is no missed bar.
    """
    if newest_ts is None:
        return None
    last_open = newest_closed_bar(at_us, interval_us)
    if last_open <= newest_ts:
        return 0
    return len(calendar.expected_bar_opens(newest_ts + interval_us, last_open + 1, interval_us))


def is_stale(missed: int | None, stale_after_bars: int) -> bool:
    return missed is None or missed > stale_after_bars


def vector_sha256(vector: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float64).tobytes()).hexdigest()


def missing_critical(missing: np.ndarray, feature_names: tuple[str, ...], critical: tuple[str, ...]) -> list[str]:
    return [name for j, name in enumerate(feature_names) if missing[j] and name in critical]


@dataclass(frozen=True)
class OodModel:
    """A champion's training distribution, ready to judge single vectors (pseudo-inverse computed once)."""

    statistics: FeatureStatistics
    precision: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, statistics: FeatureStatistics) -> OodModel:
        cov = np.asarray(statistics.covariance, dtype=np.float64)
        precision = np.linalg.pinv(cov, rcond=1e-10, hermitian=True)
        mean, std = np.asarray(statistics.mean, dtype=np.float64), np.asarray(statistics.std, dtype=np.float64)
        # a constant training feature: any other value is out of range (relative tolerance, never a zero divisor)
        scale = np.maximum(std, 1e-12 * np.maximum(1.0, np.abs(mean)))
        return cls(statistics, precision, scale)

    def judge(self, vector: np.ndarray, max_abs_z: float, max_mahalanobis: float) -> OodResult:
        x = np.asarray(vector, dtype=np.float64)
        if not np.isfinite(x).all():
            return OodResult(True, float("inf"), float("inf"), [])
        delta = x - self.statistics.mean
        z = np.abs(delta) / self.scale
        distance = float(np.sqrt(max(0.0, float(delta @ self.precision @ delta))))
        worst = [name for j, name in enumerate(self.statistics.feature_names) if z[j] > max_abs_z]
        return OodResult(bool(worst) or distance > max_mahalanobis, float(z.max()), distance, worst)


@dataclass(frozen=True)
class OodResult:
    out_of_distribution: bool
    max_abs_z: float
    mahalanobis: float
    features_beyond_bound: list[str]

    def to_json(self) -> dict:
        finite = lambda v: v if np.isfinite(v) else None  # noqa: E731
        return {"max_abs_z": finite(round(self.max_abs_z, 4)), "mahalanobis": finite(round(self.mahalanobis, 4)),
                "features_beyond_bound": self.features_beyond_bound}


def impute(vector: np.ndarray, missing: np.ndarray, statistics: FeatureStatistics | None) -> np.ndarray:
    """Missing (non-critical) features replaced by their training mean, so the policy and the OOD gate see numbers."""
    out = np.array(vector, dtype=np.float64)
    if missing.any():
        out[missing] = statistics.mean[missing] if statistics is not None else 0.0
    return out
