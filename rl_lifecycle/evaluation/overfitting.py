"""The probability of backtest overfitting (PBO) by combinatorially symmetric cross-validation (CSCV).

Bailey, Borwein, López de Prado & Zhu (2015), "The probability of backtest overfitting", J. of
Computational Finance 20(4). `performance` is a T x N matrix: T observations (per-bar returns on
common bars) of N trials (strategies, configurations, model specs).

1. Cut the rows into S (`n_partitions`, even) blocks of T // S rows; the T mod S oldest rows are
   dropped, so every block, and both halves of every combination, have the same length.
2. For each of the C(S, S/2) combinations of S/2 blocks as the in-sample set J (the complement J̄
   out of sample), score every trial on J and on J̄ with `metric`.
3. n* = the trial best in sample; ω = its out-of-sample rank / (N + 1), ranks 1 (worst) .. N
   (best); λ = ln(ω / (1 - ω)).
4. PBO = the share of combinations with λ <= 0: the in-sample winner is at or below the
   out-of-sample median.

Conventions the paper leaves open: out-of-sample ties share their average rank; an in-sample tie for
best is resolved against the selection (the tied trial with the worst out-of-sample score), so the
result does not depend on the order of the columns. Performance degradation: the least-squares line
of n*'s out-of-sample score on its in-sample score across combinations (slope < 0: the better it
looked in sample, the worse it did out of sample), and `prob_oos_loss`, the share of combinations in
which n* scored below zero out of sample.

The built-in metrics ("sharpe": per-observation mean / sample standard deviation, not annualised;
"mean") are computed from per-block moments, so that S = 16 (12,870 combinations) stays cheap; any
callable `metric(rows: T' x N array) -> N scores` is applied to the rows of each half directly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rl_lifecycle.errors import UserInputError

Metric = Literal["sharpe", "mean"] | Callable[[np.ndarray], np.ndarray]
_CHUNK = 1024  # combinations scored at once


@dataclass(frozen=True)
class PboResult:
    pbo: float
    logits: np.ndarray  # λ per combination, in itertools.combinations(range(S), S // 2) order
    n_combinations: int
    n_partitions: int
    n_rows_used: int  # T - T mod S
    is_performance: np.ndarray  # n*'s in-sample score per combination
    oos_performance: np.ndarray  # n*'s out-of-sample score per combination
    degradation_slope: float  # least-squares slope of oos_performance on is_performance (nan if constant)
    degradation_intercept: float
    prob_oos_loss: float  # share of combinations with n*'s out-of-sample score < 0


def _block_moments(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block (S x N): the sum and the sum of squared deviations from the block's mean."""
    sums = blocks.sum(axis=1)
    return sums, ((blocks - (sums / blocks.shape[1])[:, None, :]) ** 2).sum(axis=1)


def _moment_scores(sums: np.ndarray, m2: np.ndarray, chosen: np.ndarray, rows_per_block: int,
                   metric: str) -> np.ndarray:
    """Scores (C x N) of the union of the `chosen` blocks (C x S/2 indices), from block moments
    (the pooled variance of Chan, Golub & LeVeque). The mean is the pooled sum over the row count,
    so trials with equal sums score exactly equal."""
    n = rows_per_block * chosen.shape[1]
    mean = sums[chosen].sum(axis=1) / n
    if metric == "mean":
        return mean
    spread = ((sums[chosen] / rows_per_block - mean[:, None, :]) ** 2).sum(axis=1)
    std = np.sqrt((m2[chosen].sum(axis=1) + rows_per_block * spread) / (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):  # no dispersion: +-inf by the sign of the mean, 0 at 0
        return np.where(std > 0, mean / std, np.where(mean == 0, 0.0, np.sign(mean) * np.inf))


def _callable_scores(blocks: np.ndarray, chosen: np.ndarray, metric: Callable) -> np.ndarray:
    n_trials = blocks.shape[2]
    scores = np.empty((len(chosen), n_trials))
    for row, blocks_in in enumerate(chosen):
        values = np.asarray(metric(blocks[blocks_in].reshape(-1, n_trials)), dtype=float)
        if values.shape != (n_trials,) or np.isnan(values).any():
            raise UserInputError(f"metric returned {values!r}: expected one score per trial, shape ({n_trials},), "
                                 "none NaN")
        scores[row] = values
    return scores


def _selected(is_scores: np.ndarray, oos_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n*'s in-sample score, out-of-sample score and relative rank ω, per combination."""
    best_is = is_scores.max(axis=1)
    tied = is_scores == best_is[:, None]
    oos_star = np.where(tied, oos_scores, np.inf).min(axis=1)  # ties in sample go against the selection
    less = (oos_scores < oos_star[:, None]).sum(axis=1)
    equal = (oos_scores == oos_star[:, None]).sum(axis=1)
    rank = less + (equal + 1) / 2  # average rank, 1 = worst
    return best_is, oos_star, rank / (is_scores.shape[1] + 1)


def probability_of_backtest_overfitting(performance: np.ndarray, n_partitions: int = 16,
                                        metric: Metric = "sharpe") -> PboResult:
    """PBO of selecting the in-sample best of N trials, by CSCV over `n_partitions` blocks (see module)."""
    values = np.ascontiguousarray(performance, dtype=float)  # one memory layout: one summation order
    if values.ndim != 2:
        raise UserInputError(f"performance has shape {values.shape}: expected T observations x N trials")
    n_rows, n_trials = values.shape
    if n_trials < 2:
        raise UserInputError(f"performance has {n_trials} trial(s): PBO compares at least 2")
    if isinstance(n_partitions, bool) or not isinstance(n_partitions, int) or n_partitions < 2 or n_partitions % 2:
        raise UserInputError(f"n_partitions={n_partitions!r}: must be an even integer >= 2")
    rows_per_block = n_rows // n_partitions
    min_rows = 2 if metric == "sharpe" else 1  # a Sharpe ratio needs two observations per half
    if rows_per_block * n_partitions // 2 < min_rows:
        raise UserInputError(f"performance has {n_rows} rows: too few for n_partitions={n_partitions} "
                             f"(each half needs >= {min_rows} rows)")
    if not np.isfinite(values).all():
        raise UserInputError("performance has non-finite values: align the trials on common bars first")
    if not (callable(metric) or metric in ("sharpe", "mean")):
        raise UserInputError(f"metric={metric!r}: expected 'sharpe', 'mean' or a callable")

    used = rows_per_block * n_partitions
    blocks = values[n_rows - used:].reshape(n_partitions, rows_per_block, n_trials)
    half = n_partitions // 2
    in_sample = np.array(list(itertools.combinations(range(n_partitions), half)), dtype=np.intp)
    out_of_sample = np.array([sorted(set(range(n_partitions)) - set(c)) for c in in_sample], dtype=np.intp)
    moments = None if callable(metric) else _block_moments(blocks)

    is_star, oos_star, omega = [], [], []
    for start in range(0, len(in_sample), _CHUNK):
        scores = []
        for chosen in (in_sample[start:start + _CHUNK], out_of_sample[start:start + _CHUNK]):
            scores.append(_callable_scores(blocks, chosen, metric) if moments is None
                          else _moment_scores(*moments, chosen, rows_per_block, metric))
        chunk = _selected(*scores)
        is_star.append(chunk[0])
        oos_star.append(chunk[1])
        omega.append(chunk[2])
    is_perf, oos_perf, omega = np.concatenate(is_star), np.concatenate(oos_star), np.concatenate(omega)
    logits = np.log(omega / (1 - omega))
    slope, intercept = math.nan, math.nan
    finite = np.isfinite(is_perf) & np.isfinite(oos_perf)
    x, y = is_perf[finite], oos_perf[finite]
    spread = float(((x - x.mean()) ** 2).sum()) if len(x) else 0.0
    if spread > 0:  # least squares of y on x
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / spread)
        intercept = float(y.mean() - slope * x.mean())
    return PboResult(
        pbo=float((logits <= 0).mean()), logits=logits, n_combinations=len(in_sample), n_partitions=n_partitions,
        n_rows_used=used, is_performance=is_perf, oos_performance=oos_perf, degradation_slope=slope,
        degradation_intercept=intercept, prob_oos_loss=float((oos_perf < 0).mean()),
    )
