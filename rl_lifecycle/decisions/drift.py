"""Drift of the live inputs away from what the champion was trained on: the pure measures, and the signal the
online-learning sensor acts on (`rl_lifecycle.online.planner.plan_drift_requests`).

**The OOD share** (what the sensor watches): of the champion in force's paper decisions, one per decided bar
(its last decision), the share held for OOD (`decisions.safety.OOD` in `reason_codes`: the vector was beyond
the champion's training statistics) over a trailing window of `bars` bars. The market **drifts** when that
share has stayed at or above `threshold` (RL_DRIFT_OOD_SHARE, default 0.5) for `bars` consecutive bars
(RL_DRIFT_BARS, default 12): so 2 x bars - 1 decided bars at least. A drift is one **episode**, named by
the bar at which the share first reached the threshold in the current run (`DriftSignal.since_us`): every
tick during the episode plans the same run key, so it is retrained once.

**PSI** (population stability index) of live vectors against the champion's `FeatureStatistics`: each
feature's training quantiles (`models.statistics.QUANTILES`) cut the line into bins whose training shares
are known exactly (0.1%, 0.9%, 4%, 20%, 25%, 25%, 20%, 4%, 0.9%, 0.1%); the live vectors' shares in the
same bins give `psi(expected, actual) = sum((a - e) * ln(a / e))` per feature. A common reading: < 0.1
stable, 0.1..0.25 moderate shift, > 0.25 large shift. `sustained` applies to a PSI series like to the OOD
share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rl_lifecycle.decisions.safety import OOD
from rl_lifecycle.decisions.store import DecisionRecord
from rl_lifecycle.models.statistics import QUANTILES, FeatureStatistics
from rl_lifecycle.windows import iso

PSI_EPSILON = 1e-6  # an empty bin's share, so that ln(a / e) stays finite


# -- PSI -------------------------------------------------------------------------------------------------
def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """The population stability index of `actual` against `expected`, two histograms over the same bins
    (counts or shares: each is normalised to sum 1; an empty bin counts as `epsilon`)."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) < 2:
        raise ValueError(f"psi needs two histograms over the same bins (>= 2), got {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs non-negative histograms with something in them")
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of `values` in the bins (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(1, len(values))


TRAINING_SHARES = np.diff(np.concatenate(([0.0], QUANTILES, [1.0])))  # what training put in each quantile bin


def feature_psi(statistics: FeatureStatistics, vectors: np.ndarray) -> dict[str, float]:
    """Per feature, the PSI of the live `vectors` ([n, k], the champion's feature order) against its training
    distribution's quantile bins."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    if vectors.shape[1] != len(statistics.feature_names):
        raise ValueError(f"{vectors.shape[1]} features in the vectors, {len(statistics.feature_names)} in the statistics")
    out = {}
    for j, name in enumerate(statistics.feature_names):
        out[name] = psi(TRAINING_SHARES, bin_shares(vectors[:, j], statistics.quantiles[:, j]))
    return out


# -- staying above a threshold -------------------------------------------------------------------------
def rolling_share(flags: Sequence[bool], window: int) -> np.ndarray:
    """At each bar from the `window`-th on, the share of True among the `window` bars ending there."""
    x = np.asarray(flags, dtype=np.float64)
    if len(x) < window:
        return np.empty(0)
    cumulative = np.concatenate(([0.0], np.cumsum(x)))
    return (cumulative[window:] - cumulative[:-window]) / window


def sustained(values: Sequence[float], threshold: float, bars: int) -> int | None:
    """The index where the final run of values >= `threshold` began, when that run is at least `bars` long
    (and reaches the last value); None otherwise."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x) or not x[-1] >= threshold:
        return None
    below = np.flatnonzero(~(x >= threshold))
    start = int(below[-1]) + 1 if len(below) else 0
    return start if len(x) - start >= bars else None


# -- the signal ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftSignal:
    market: str
    champion_version: int
    measure: str  # "ood_share"
    value: float  # the measure at the newest bar
    threshold: float
    bars: int  # how many bars it has stayed at or above the threshold
    since_us: int  # the bar the episode began at: names it (one retraining per episode)
    last_bar_us: int  # the newest decided bar

    @property
    def reason(self) -> str:
        return (f"drift: OOD holds {self.value:.0%} of champion v{self.champion_version}'s last decided bars, "
                f">= {self.threshold:.0%} for {self.bars} bars since {iso(self.since_us)}")

    def to_json(self) -> dict:
        return {"market": self.market, "champion_version": self.champion_version, "measure": self.measure,
                "value": self.value, "threshold": self.threshold, "bars": self.bars, "since": iso(self.since_us),
                "last_bar": iso(self.last_bar_us), "reason": self.reason}


def ood_drift(records: Sequence[DecisionRecord], champion_version: int | None, threshold: float,
              bars: int) -> DriftSignal | None:
    """The OOD-share drift of the champion in force over its newest decisions (`records`, any order), or None."""
    if champion_version is None:
        return None
    made = sorted((r for r in records if r.bar_ts_us is not None), key=lambda r: (r.as_of_us, r.id or 0))
    reign: list[DecisionRecord] = []
    for record in reversed(made):  # the newest run of decisions by the champion in force
        if record.champion_version != champion_version:
            break
        reign.append(record)
    last: dict[int, bool] = {}
    for record in reversed(reign):  # in the order made: a bar decided again keeps its last decision
        last[int(record.bar_ts_us)] = OOD in record.reason_codes
    decided = sorted(last)
    shares = rolling_share([last[b] for b in decided], bars)
    start = sustained(shares, threshold, bars)
    if start is None:
        return None
    run = len(shares) - start
    offset = bars - 1  # shares[i] is the window ending at decided bar i + bars - 1
    return DriftSignal(records[0].market if records else "", int(champion_version), "ood_share", float(shares[-1]),
                       float(threshold), int(run), decided[start + offset], decided[-1])


def market_drift(conn, market: str, champion_version: int | None, threshold: float, bars: int) -> DriftSignal | None:
    """`ood_drift` over the reign of the champion in force (all of it: the episode's first bar stays put)."""
    from rl_lifecycle.decisions.store import reign_decisions

    if champion_version is None:
        return None
    return ood_drift(reign_decisions(conn, market, champion_version), champion_version, threshold, bars)
