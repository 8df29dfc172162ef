"""Fold metrics from an equity curve, the flat and buy-and-hold baselines, and aggregates over folds.

Conventions (see docs/evaluation.md):
* The equity curve holds one value per bar: the account marked at that bar's close, before that
  bar's order; returns are simple per-bar returns E[i] / E[i-1] - 1.
* Annualisation uses bars per year = 365.25 days / interval, for every calendar. A market with
  closed hours (FX weekends, exchange sessions) has fewer bars a year, so its annualised figures are
  overstated by sqrt(calendar bars / open bars) for Sharpe and Sortino; compare such markets with each
  other, not with 24/7 ones.
* Undefined ratios never raise: a zero-variance series has Sharpe (and Sortino) 0.0 when its mean
  return is 0 (flat: no risk, no return) and NaN otherwise; fewer than two returns give NaN; Calmar is
  NaN without a drawdown; win rate is NaN without trades; PSR and DSR are NaN for returns without
  variation. Aggregates ignore NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from rl_lifecycle.markets.keys import INTERVALS
from rl_lifecycle.trading import cost_fraction
from rl_lifecycle.windows import DAY_US

YEAR_US = 365.25 * DAY_US
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def bars_per_year(interval: str) -> float:
    return YEAR_US / INTERVALS[interval]


def simple_returns(equity: np.ndarray) -> np.ndarray:
    equity = np.asarray(equity, dtype=np.float64)
    return equity[1:] / equity[:-1] - 1.0


def _ratio(mean: float, scale: float, n: int) -> float:
    if n < 2 or not (math.isfinite(mean) and math.isfinite(scale)):
        return math.nan
    if scale <= 0.0:
        return 0.0 if mean == 0.0 else math.nan
    return mean / scale


def sharpe_per_bar(returns: np.ndarray) -> float:
    returns = np.asarray(returns, dtype=np.float64)
    if len(returns) < 2:
        return math.nan
    return _ratio(float(returns.mean()), float(returns.std(ddof=1)), len(returns))


def sortino_per_bar(returns: np.ndarray) -> float:
    returns = np.asarray(returns, dtype=np.float64)
    if len(returns) < 2:
        return math.nan
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
    return _ratio(float(returns.mean()), downside, len(returns))


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from a running peak, as a positive fraction of that peak (0 when never below it)."""
    equity = np.asarray(equity, dtype=np.float64)
    if len(equity) == 0:
        return 0.0
    return float(np.max(1.0 - equity / np.maximum.accumulate(equity)))


def fold_metrics(
    equity: np.ndarray,
    positions: np.ndarray,
    traded_notional: np.ndarray,
    fees: float,
    trade_pnls: Sequence[float],
    periods_per_year: float,
) -> dict[str, float]:
    """Metrics of one fold.

    equity: per bar, marked at the close before that bar's order; positions: the position held after
    each bar's order (target exposure in {-1, 0, 1}); traded_notional: notional traded at each bar;
    fees: total fees paid (quote currency); trade_pnls: each trade's P&L after fees (an open one
    marked at the last close).
    """
    equity = np.asarray(equity, dtype=np.float64)
    positions = np.asarray(positions)
    returns = simple_returns(equity)
    n = len(returns)
    growth = float(equity[-1] / equity[0]) if len(equity) else 1.0
    log_growth = math.log(growth) if growth > 0 else -math.inf
    root = math.sqrt(periods_per_year)
    sharpe, sortino = sharpe_per_bar(returns), sortino_per_bar(returns)
    drawdown = max_drawdown(equity)
    with np.errstate(over="ignore"):
        annual = float(np.expm1(log_growth * periods_per_year / n)) if n else math.nan
    pnls = np.asarray(list(trade_pnls), dtype=np.float64)
    held = positions[:-1] if len(positions) else positions  # the last bar's position is held past the fold
    return {
        "total_return": growth - 1.0,
        "log_return": log_growth,
        "annual_return": annual,
        "sharpe": sharpe * root,
        "sortino": sortino * root,
        "max_drawdown": drawdown,
        "calmar": annual / drawdown if drawdown > 0 and math.isfinite(annual) else math.nan,
        "turnover": float(np.sum(np.asarray(traded_notional, dtype=np.float64) / equity)) if len(equity) else 0.0,
        "trades": int(len(pnls)),
        "win_rate": float(np.mean(pnls > 0)) if len(pnls) else math.nan,
        "exposure": float(np.mean(held != 0)) if len(held) else 0.0,
        "fees_paid": float(fees),
        "fees_fraction": float(fees) / float(equity[0]) if len(equity) else 0.0,
        "bars": int(len(equity)),
    }


def flat_baseline(close: np.ndarray, starting_balance: float, periods_per_year: float) -> dict[str, float]:
    n = len(close)
    return fold_metrics(np.full(n, float(starting_balance)), np.zeros(n, np.int8), np.zeros(n), 0.0, [], periods_per_year)


def buy_and_hold_equity(close: np.ndarray, cost_bps: float, starting_balance: float) -> tuple[np.ndarray, float]:
    """Buy the whole balance at the first close (paying the fee), hold to the last close: the curve and the fee."""
    close = np.asarray(close, dtype=np.float64)
    quantity = starting_balance / close[0]
    fee = cost_fraction(cost_bps) * starting_balance
    equity = quantity * close - fee
    equity[0] = starting_balance  # marked before the first order
    return equity, fee


def buy_and_hold_baseline(close: np.ndarray, cost_bps: float, starting_balance: float,
                          periods_per_year: float) -> dict[str, float]:
    equity, fee = buy_and_hold_equity(close, cost_bps, starting_balance)
    n = len(close)
    notional = np.zeros(n)
    notional[0] = starting_balance
    return fold_metrics(equity, np.ones(n, np.int8), notional, fee, [equity[-1] - starting_balance], periods_per_year)


def moments(returns: np.ndarray) -> tuple[float, float]:
    """Skewness and (non-excess) kurtosis, population estimators; (0, 3) for a constant series."""
    returns = np.asarray(returns, dtype=np.float64)
    centred = returns - returns.mean()
    m2 = float(np.mean(centred**2))
    if m2 <= 0.0:
        return 0.0, 3.0
    return float(np.mean(centred**3)) / m2**1.5, float(np.mean(centred**4)) / m2**2


def sharpe_variance(sharpe: float, n_returns: int, skew: float, kurtosis: float) -> float:
    """Variance of a per-bar Sharpe estimate (Mertens; Bailey & Lopez de Prado 2012, eq. for PSR)."""
    return (1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2) / (n_returns - 1)


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sharpe: float = 0.0) -> float:
    """P(true per-bar Sharpe > benchmark) given the sample's Sharpe, length, skewness and kurtosis."""
    returns = np.asarray(returns, dtype=np.float64)
    sharpe = sharpe_per_bar(returns)
    if not math.isfinite(sharpe) or len(returns) < 3 or not returns.std() > 0:
        return math.nan  # no variation (a flat fold): no evidence either way
    skew, kurtosis = moments(returns)
    variance = sharpe_variance(sharpe, len(returns), skew, kurtosis)
    if variance <= 0.0:
        return math.nan
    return _NORMAL.cdf((sharpe - benchmark_sharpe) / math.sqrt(variance))


def expected_max_sharpe(n_trials: int, trial_variance: float) -> float:
    """Expected maximum per-bar Sharpe of `n_trials` unskilled trials (Bailey & Lopez de Prado 2014)."""
    if n_trials <= 1 or trial_variance <= 0.0:
        return 0.0
    return math.sqrt(trial_variance) * (
        (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
        + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    )


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int, trial_variance: float | None = None) -> float:
    """PSR against the Sharpe the best of `n_trials` unskilled trials would show.

    `trial_variance` is the variance of the per-bar Sharpe across the trials; when unknown it is the
    sampling variance of this Sharpe estimate (what trials with no skill would scatter by).
    """
    returns = np.asarray(returns, dtype=np.float64)
    sharpe = sharpe_per_bar(returns)
    if not math.isfinite(sharpe) or len(returns) < 3:
        return math.nan
    if trial_variance is None:
        skew, kurtosis = moments(returns)
        trial_variance = sharpe_variance(sharpe, len(returns), skew, kurtosis)
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(n_trials, trial_variance))


# For these a lower value is the worse fold; for the others (drawdown, turnover, fees...) a higher one.
_LOWER_IS_WORSE = {"total_return", "log_return", "annual_return", "sharpe", "sortino", "calmar", "win_rate", "bars"}


def aggregate_folds(metrics_by_fold: dict[int, dict], returns_by_fold: dict[int, np.ndarray], n_trials: int) -> dict:
    """Over the folds given (the completed ones): mean/median/std/worst of every metric, the share of
    positive folds, the worst fold, and PSR/DSR of the folds' per-bar returns taken together."""
    result: dict = {"folds": len(metrics_by_fold), "n_trials": int(n_trials)}
    if not metrics_by_fold:
        return result
    indices = sorted(metrics_by_fold)
    for key in metrics_by_fold[indices[0]]:
        values = np.array([metrics_by_fold[i][key] for i in indices], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if not len(finite):
            result[key] = {"mean": math.nan, "median": math.nan, "std": math.nan, "worst": math.nan}
            continue
        result[key] = {
            "mean": float(finite.mean()),
            "median": float(np.median(finite)),
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "worst": float(finite.min() if key in _LOWER_IS_WORSE else finite.max()),
        }
    total = np.array([metrics_by_fold[i]["total_return"] for i in indices], dtype=np.float64)
    result["positive_share"] = float(np.mean(total > 0))
    result["worst_fold"] = indices[int(np.argmin(total))]
    pooled = np.concatenate([np.asarray(returns_by_fold[i], dtype=np.float64) for i in indices])
    result["psr"] = probabilistic_sharpe_ratio(pooled)
    result["dsr"] = deflated_sharpe_ratio(pooled, n_trials)
    return result
