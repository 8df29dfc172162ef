"""Fold metrics from an equity curve, the flat and buy-and-hold baselines, and aggregates over folds.

Conventions (see docs/evaluation.md):
* The equity curve holds one value per bar: the account marked at that bar's close, before that
  bar's order; returns are simple per-bar returns E[i] / E[i-1] - 1.
* Annualisation (Sharpe, Sortino, annual return, Calmar) uses the market's trading calendar: bars per
  year = the calendar's expected bars over the whole UTC years the evaluated bars touch, per year
  (`TradingCalendar.bars_per_year`): about 252 for XNYS daily bars, 7 a session for XNYS hourly, 120 a
  week for fx hourly, 24 a day for crypto hourly. PSR and DSR work per bar and need none.
* Undefined ratios never raise: a zero-variance series has Sharpe (and Sortino) 0.0 when its mean
  return is 0 (flat: no risk, no return) and NaN otherwise; fewer than two returns give NaN; Calmar is
  NaN without a drawdown; win rate is NaN without trades; PSR and DSR are NaN for returns without
  variation. Aggregates ignore NaN.
* PSR and DSR (Bailey & Lopez de Prado 2012, 2014) work on per-bar figures: the per-bar Sharpe of the
  returns, their number, skewness and non-excess kurtosis (`SharpeMoments`); the DSR deflates against
  the variance of the per-bar Sharpe ratios of the market's trials (`Trials`). Reports store these
  summary statistics, so a decision can recompute the DSR against the trials known at that time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from rl_lifecycle.markets.calendars import TradingCalendar, get_calendar
from rl_lifecycle.markets.keys import INTERVALS
from rl_lifecycle.trading import cost_fraction

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def bars_per_year(interval: str, calendar: TradingCalendar | str | None, ts: np.ndarray) -> float:
    """The annualisation of bars of `interval` at open times `ts` (sorted epoch us) on `calendar` (a name,
    None: crypto): the calendar's expected bars a year over the UTC years from the first bar's open to the
    last bar's close (`TradingCalendar.bars_per_year`)."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) == 0:
        raise ValueError("no bars: nothing to annualise")
    cal = calendar if isinstance(calendar, TradingCalendar) else get_calendar(calendar)
    interval_us = INTERVALS[interval]
    return cal.bars_per_year(interval_us, int(ts[0]), int(ts[-1]) + interval_us)


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


def chained_equity(returns: np.ndarray) -> np.ndarray:
    """Equity from 1 compounding `returns` bar by bar (one point more than the returns)."""
    return np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(returns, dtype=np.float64))])


def path_metrics(returns: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """A CPCV backtest path's figures from its per-bar returns (its groups' backtests chained)."""
    returns = np.asarray(returns, dtype=np.float64)
    equity = chained_equity(returns)
    return {"total_return": float(equity[-1] - 1.0), "sharpe": sharpe_per_bar(returns) * math.sqrt(periods_per_year),
            "max_drawdown": max_drawdown(equity), "bars": int(len(returns))}


def returns_by_bar(spans_and_returns: Iterable[tuple[tuple[int, int], np.ndarray]]) -> np.ndarray:
    """One return per tested bar: the returns of backtests over the same span (the CPCV paths through a
    group) averaged bar by bar, the spans in time order, concatenated. Walk-forward folds test each span
    once: their returns, fold after fold."""
    by_span: dict[tuple[int, int], list[np.ndarray]] = {}
    for span, returns in spans_and_returns:
        by_span.setdefault(tuple(span), []).append(np.asarray(returns, dtype=np.float64))
    series = []
    for span in sorted(by_span):
        lengths = {len(r) for r in by_span[span]}
        if len(lengths) != 1:
            raise ValueError(f"backtests of span {span} have {sorted(lengths)} returns: the same span must have "
                             "the same bars")
        series.append(np.mean(by_span[span], axis=0))
    return np.concatenate(series) if series else np.empty(0)


def flat_baseline(close: np.ndarray, starting_balance: float, periods_per_year: float) -> dict[str, float]:
    n = len(close)
    return fold_metrics(np.full(n, float(starting_balance)), np.zeros(n, np.int8), np.zeros(n), 0.0, [], periods_per_year)


def buy_and_hold_equity(close: np.ndarray, cost_bps: float, starting_balance: float,
                        opens: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Buy the whole balance (paying the fee) when the fill convention lets the first decision trade, hold to
    the last close: the curve, marked at each close, and the fee. Fill `close` (no `opens`): at the first
    close. Fill `next_open` (`opens`, each bar's open): the first close's decision fills at the second bar's
    open, so the gap from the first close to it is not the baseline's, as it is no strategy's."""
    close = np.asarray(close, dtype=np.float64)
    if opens is not None and len(close) < 2:
        raise ValueError(f"fill next_open: {len(close)} bar(s) have no next open to buy at")
    entry = float(close[0]) if opens is None else float(np.asarray(opens, dtype=np.float64)[1])
    quantity = starting_balance / entry
    fee = cost_fraction(cost_bps) * starting_balance
    equity = quantity * close - fee
    equity[0] = starting_balance  # marked before the first order fills
    return equity, fee


def buy_and_hold_baseline(close: np.ndarray, cost_bps: float, starting_balance: float,
                          periods_per_year: float, opens: np.ndarray | None = None) -> dict[str, float]:
    """`fold_metrics` of `buy_and_hold_equity` (`opens`: fill next_open)."""
    equity, fee = buy_and_hold_equity(close, cost_bps, starting_balance, opens)
    n = len(close)
    notional = np.zeros(n)
    notional[0 if opens is None else 1] = starting_balance
    return fold_metrics(equity, np.ones(n, np.int8), notional, fee, [equity[-1] - starting_balance], periods_per_year)


def moments(returns: np.ndarray) -> tuple[float, float]:
    """Skewness and (non-excess) kurtosis, population estimators; (0, 3) for a constant series."""
    returns = np.asarray(returns, dtype=np.float64)
    centred = returns - returns.mean()
    m2 = float(np.mean(centred**2))
    if m2 <= 0.0:
        return 0.0, 3.0
    return float(np.mean(centred**3)) / m2**1.5, float(np.mean(centred**4)) / m2**2


@dataclass(frozen=True)
class SharpeMoments:
    """What the PSR and DSR need of a return series: its per-bar Sharpe, number of returns, skewness and
    non-excess kurtosis (NaN when there are fewer than three returns or they do not vary)."""

    sharpe: float
    n_returns: int
    skew: float
    kurtosis: float


def sharpe_moments(returns: np.ndarray) -> SharpeMoments:
    returns = np.asarray(returns, dtype=np.float64)
    sharpe = sharpe_per_bar(returns)
    if len(returns) < 3 or not returns.std() > 0:
        return SharpeMoments(sharpe, len(returns), math.nan, math.nan)  # no variation: no evidence either way
    skew, kurtosis = moments(returns)
    return SharpeMoments(sharpe, len(returns), skew, kurtosis)


def sharpe_variance(sharpe: float, n_returns: int, skew: float, kurtosis: float) -> float:
    """Variance of a per-bar Sharpe estimate (Mertens; Bailey & Lopez de Prado 2012, eq. for PSR)."""
    return (1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2) / (n_returns - 1)


def probabilistic_sharpe_ratio_from_moments(
    sharpe: float, n_returns: int, skew: float, kurtosis: float, benchmark_sharpe: float = 0.0
) -> float:
    """PSR (Bailey & Lopez de Prado 2012): P(true per-bar Sharpe > benchmark) =
    Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2)), kurtosis non-excess.

    NaN when an input is not finite, with fewer than three returns, or when the variance term is not
    positive."""
    values = (sharpe, skew, kurtosis, benchmark_sharpe)
    if n_returns < 3 or not all(math.isfinite(v) for v in values):
        return math.nan
    variance = sharpe_variance(sharpe, n_returns, skew, kurtosis)
    if not variance > 0.0:
        return math.nan
    return _NORMAL.cdf((sharpe - benchmark_sharpe) / math.sqrt(variance))


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sharpe: float = 0.0) -> float:
    """P(true per-bar Sharpe > benchmark) given the sample's Sharpe, length, skewness and kurtosis."""
    m = sharpe_moments(returns)
    return probabilistic_sharpe_ratio_from_moments(m.sharpe, m.n_returns, m.skew, m.kurtosis, benchmark_sharpe)


def expected_max_sharpe(n_trials: int, trial_sharpe_variance: float) -> float:
    """Expected maximum Sharpe of `n_trials` unskilled trials whose Sharpe ratios have variance
    `trial_sharpe_variance` (Bailey & Lopez de Prado 2014): sqrt(V) ((1 - g) Phi^-1(1 - 1/N)
    + g Phi^-1(1 - 1/(N e))), g the Euler-Mascheroni constant. In the units of V (here per bar).
    0 for one trial (or none) and for no variance: nothing to deflate by."""
    if n_trials <= 1 or not trial_sharpe_variance > 0.0:
        return 0.0
    return math.sqrt(trial_sharpe_variance) * (
        (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
        + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    )


def deflated_sharpe_ratio_from_moments(
    sharpe: float, n_returns: int, skew: float, kurtosis: float, n_trials: int, trial_sharpe_variance: float
) -> float:
    """DSR (Bailey & Lopez de Prado 2014): the PSR of this Sharpe against the expected maximum Sharpe of
    `n_trials` trials whose Sharpe ratios have variance `trial_sharpe_variance` (V[SR], across the
    trials, in the same units as `sharpe`). One trial, or V = 0, gives the PSR against 0."""
    benchmark = expected_max_sharpe(n_trials, trial_sharpe_variance)
    return probabilistic_sharpe_ratio_from_moments(sharpe, n_returns, skew, kurtosis, benchmark)


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int, trial_sharpe_variance: float) -> float:
    """The DSR of a per-bar return series among `n_trials` trials whose per-bar Sharpe ratios have
    variance `trial_sharpe_variance` (see `deflated_sharpe_ratio_from_moments`)."""
    m = sharpe_moments(returns)
    return deflated_sharpe_ratio_from_moments(m.sharpe, m.n_returns, m.skew, m.kurtosis, n_trials,
                                              trial_sharpe_variance)


@dataclass(frozen=True, eq=False)
class Trials:
    """The trials a DSR deflates by: how many evaluations were made (`n_trials`), the per-bar Sharpe of
    each that has one (`sharpes`: an evaluation without completed folds, or stored before reports kept
    `sharpe_per_bar`, counts but has none), and the variance of those Sharpe ratios (ddof 1; 0 with
    fewer than two). Build it with `Trials.of`."""

    n_trials: int
    sharpes: np.ndarray
    variance: float

    @classmethod
    def of(cls, n_trials: int, sharpes: Iterable[float | None]) -> Trials:
        values = np.array([math.nan if s is None else float(s) for s in sharpes], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if n_trials < len(finite):
            raise ValueError(f"n_trials={n_trials}: fewer than the {len(finite)} Sharpe ratios given")
        variance = float(finite.var(ddof=1)) if len(finite) > 1 else 0.0
        return cls(int(n_trials), finite, variance)

    def plus(self, sharpe: float | None) -> Trials:
        """These trials and one more, with this per-bar Sharpe (None or NaN: a trial without one)."""
        return Trials.of(self.n_trials + 1, [*self.sharpes, sharpe])


NO_TRIALS = Trials.of(0, [])


def deflated_sharpe_at_decision(aggregates: dict, trials: Trials) -> float:
    """The DSR of a stored report, from the summary statistics its aggregates keep (`sharpe_per_bar`,
    `n_returns`, `skew`, `kurtosis`), against the market's trials as they are now
    (`store.market_trials`, which counts the report itself). With one trial, or trials whose Sharpe
    ratios do not vary, it is the PSR against 0. NaN when the report lacks the statistics (no completed
    fold, returns without variation, or a report stored before they were kept)."""
    values = [aggregates.get(key) for key in ("sharpe_per_bar", "n_returns", "skew", "kurtosis")]
    if any(v is None for v in values):
        return math.nan
    sharpe, n_returns, skew, kurtosis = values
    return deflated_sharpe_ratio_from_moments(float(sharpe), int(n_returns), float(skew), float(kurtosis),
                                              trials.n_trials, trials.variance)


# For these a lower value is the worse fold; for the others (drawdown, turnover, fees...) a higher one.
_LOWER_IS_WORSE = {"total_return", "log_return", "annual_return", "sharpe", "sortino", "calmar", "win_rate", "bars"}


def aggregate_folds(metrics_by_fold: dict[int, dict], returns_by_fold: dict[int, np.ndarray],
                    other_trials: Trials, pooled_returns: np.ndarray | None = None) -> dict:
    """Over the folds given (the completed ones): mean/median/std/worst of every metric, the share of
    positive folds, the worst fold, and over the folds' per-bar returns taken together their summary
    statistics (`sharpe_per_bar`, `n_returns`, `skew`, `kurtosis`), PSR against 0 and DSR.

    `other_trials` are the market's trials known now, this evaluation excluded: it counts as one more
    (`n_trials`), and its pooled Sharpe joins the Sharpe ratios whose variance
    (`trial_sharpe_variance`) the DSR deflates by. A decision recomputes the DSR against the trials of
    its time with `deflated_sharpe_at_decision`. `pooled_returns`: the returns the pooled statistics
    are taken over, when not the folds' returns one after another (CPCV: `returns_by_bar`, so a bar
    tested by several paths counts once)."""
    if not metrics_by_fold:
        trials = other_trials.plus(None)
        return {"folds": 0, "n_trials": trials.n_trials, "trial_sharpe_variance": trials.variance}
    indices = sorted(metrics_by_fold)
    pooled = (np.concatenate([np.asarray(returns_by_fold[i], dtype=np.float64) for i in indices])
              if pooled_returns is None else np.asarray(pooled_returns, dtype=np.float64))
    summary = sharpe_moments(pooled)
    trials = other_trials.plus(summary.sharpe)
    result: dict = {"folds": len(metrics_by_fold), "n_trials": trials.n_trials,
                    "trial_sharpe_variance": trials.variance}
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
    result.update({"sharpe_per_bar": summary.sharpe, "n_returns": summary.n_returns, "skew": summary.skew,
                   "kurtosis": summary.kurtosis})
    result["psr"] = probabilistic_sharpe_ratio_from_moments(summary.sharpe, summary.n_returns, summary.skew,
                                                            summary.kurtosis)
    result["expected_max_sharpe"] = expected_max_sharpe(trials.n_trials, trials.variance)
    result["dsr"] = deflated_sharpe_at_decision(result, trials)  # what a decision recomputes, same code
    return result
