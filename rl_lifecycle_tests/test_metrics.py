"""Fold metrics, baselines and aggregates against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rl_lifecycle.evaluation.metrics import (
    NO_TRIALS,
    Trials,
    aggregate_folds,
    bars_per_year,
    buy_and_hold_baseline,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    flat_baseline,
    fold_metrics,
    max_drawdown,
    probabilistic_sharpe_ratio,
)
from rl_lifecycle.windows import to_us


def test_bars_per_year_follow_the_interval_and_the_calendar():
    # 24/7: the days of the UTC years the bars touch, times the bars a day (2023: 365 days; 2024: 366)
    year_2023 = np.array([to_us("2023-03-01"), to_us("2023-06-01")], dtype=np.int64)
    assert bars_per_year("1d", "crypto", year_2023) == 365
    assert bars_per_year("1h", None, year_2023) == 365 * 24
    assert bars_per_year("15m", "crypto", year_2023) == 365 * 96
    across = np.array([to_us("2023-12-01"), to_us("2024-02-01")], dtype=np.int64)
    assert bars_per_year("1h", "crypto", across) == (365 + 366) * 24 / 2
    # the calendar's sessions: XNYS daily 2023 = its 250 sessions (test_calendar_trading: every calendar)
    assert bars_per_year("1d", "XNYS", year_2023) == 250
    with pytest.raises(ValueError, match="no bars"):
        bars_per_year("1d", "XNYS", np.array([], dtype=np.int64))


def test_fold_metrics_by_hand():
    # returns +10%, -10%, +10%; 4 bars a year so annualising multiplies per-bar ratios by 2
    equity = np.array([100.0, 110.0, 99.0, 108.9])
    positions = np.array([1, 1, 0, 0], dtype=np.int8)
    notional = np.array([100.0, 0.0, 99.0, 0.0])
    m = fold_metrics(equity, positions, notional, fees=0.3, trade_pnls=[-1.0, 2.0, 0.5], periods_per_year=4)
    mean, std = 0.1 / 3, math.sqrt((2 * (0.2 / 3) ** 2 + (0.4 / 3) ** 2) / 2)
    assert m["total_return"] == pytest.approx(0.089)
    assert m["log_return"] == pytest.approx(math.log(1.089))
    assert m["sharpe"] == pytest.approx(2 * mean / std)
    assert m["sortino"] == pytest.approx(2 * mean / math.sqrt(0.01 / 3))
    assert m["max_drawdown"] == pytest.approx(0.1)  # 110 -> 99
    assert m["annual_return"] == pytest.approx(1.089 ** (4 / 3) - 1)
    assert m["calmar"] == pytest.approx((1.089 ** (4 / 3) - 1) / 0.1)
    assert m["turnover"] == pytest.approx(100 / 100 + 99 / 99)
    assert m["trades"] == 3 and m["win_rate"] == pytest.approx(2 / 3)
    assert m["exposure"] == pytest.approx(2 / 3)  # held over bars 1 and 2, flat over bar 3
    assert m["fees_paid"] == 0.3 and m["fees_fraction"] == pytest.approx(0.003)


def test_flat_returns_never_crash():
    flat = flat_baseline(np.array([10.0, 11.0, 12.0, 9.0]), 1000.0, 365.25)
    assert flat["total_return"] == 0.0 and flat["sharpe"] == 0.0 and flat["sortino"] == 0.0
    assert flat["max_drawdown"] == 0.0 and math.isnan(flat["calmar"]) and math.isnan(flat["win_rate"])
    assert flat["trades"] == 0 and flat["turnover"] == 0.0
    # a riskless positive drift has no finite Sharpe: NaN, not an exception
    drift = fold_metrics(np.array([1.0, 1.01, 1.0201]), np.ones(3), np.zeros(3), 0.0, [], 365.25)
    assert math.isnan(drift["sharpe"]) and math.isnan(drift["sortino"])
    single = fold_metrics(np.array([1.0]), np.zeros(1), np.zeros(1), 0.0, [], 365.25)
    assert math.isnan(single["sharpe"]) and single["total_return"] == 0.0


def test_buy_and_hold_pays_the_same_fee():
    close = np.array([100.0, 105.0, 95.0, 110.0])
    m = buy_and_hold_baseline(close, cost_bps=10.0, starting_balance=1000.0, periods_per_year=365.25)
    # 10 units bought at 100 with a 1.0 fee; marked at 110: 1100 - 1
    assert m["total_return"] == pytest.approx(1099 / 1000 - 1)
    assert m["fees_paid"] == pytest.approx(1.0) and m["trades"] == 1 and m["win_rate"] == 1.0
    assert m["max_drawdown"] == pytest.approx(1 - 949 / 1049)
    assert m["exposure"] == 1.0 and m["turnover"] == pytest.approx(1.0)


def test_buy_and_hold_under_next_open_buys_at_the_second_bars_open():
    close, opens = np.array([100.0, 105.0, 95.0, 110.0]), np.array([99.0, 104.0, 96.0, 108.0])
    m = buy_and_hold_baseline(close, cost_bps=10.0, starting_balance=1040.0, periods_per_year=365.25, opens=opens)
    # the first close's decision fills at 104: 10 units for 1040 and a 1.04 fee; marked at 110: 1100 - 1.04
    assert m["total_return"] == pytest.approx((1100 - 1.04) / 1040 - 1)
    assert m["fees_paid"] == pytest.approx(1.04) and m["trades"] == 1
    assert m["max_drawdown"] == pytest.approx(1 - (950 - 1.04) / (1050 - 1.04))
    with pytest.raises(ValueError, match="no next open"):
        buy_and_hold_baseline(close[:1], 10.0, 1040.0, 365.25, opens=opens[:1])


def test_max_drawdown_ignores_rises():
    assert max_drawdown(np.array([1.0, 2.0, 3.0])) == 0.0
    assert max_drawdown(np.array([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.5)


def _returns(seed: int, n: int = 500, drift: float = 0.002) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return drift + 0.01 * rng.standard_t(5, size=n)


def test_probabilistic_sharpe_ratio_matches_the_formula_with_independent_moments():
    returns = _returns(1)
    sr = returns.mean() / returns.std(ddof=1)
    skew, kurt = stats.skew(returns), stats.kurtosis(returns, fisher=False)
    expected = stats.norm.cdf(sr * math.sqrt(len(returns) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert probabilistic_sharpe_ratio(returns) == pytest.approx(expected, rel=1e-12)
    # against a benchmark Sharpe
    expected_vs = stats.norm.cdf((sr - 0.05) * math.sqrt(len(returns) - 1)
                                 / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert probabilistic_sharpe_ratio(returns, 0.05) == pytest.approx(expected_vs, rel=1e-12)


def test_deflated_sharpe_ratio_deflates_with_more_trials():
    # Issue 16: the DSR's variance is V[SR] across the trials, now a required argument; it no longer
    # falls back on this series' own sampling variance (which is not the trials' spread). The paper's
    # example is in test_sharpe_papers.py.
    returns = _returns(2)
    variance = 0.002
    assert deflated_sharpe_ratio(returns, 1, variance) == pytest.approx(probabilistic_sharpe_ratio(returns))
    values = [deflated_sharpe_ratio(returns, n, variance) for n in (1, 2, 10, 100)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0]
    # ... and with a wider spread of the trials' Sharpe ratios
    spread = [deflated_sharpe_ratio(returns, 10, v) for v in (0.0, 0.001, 0.002, 0.004)]
    assert spread == sorted(spread, reverse=True) and spread[0] == pytest.approx(probabilistic_sharpe_ratio(returns))
    # expected maximum Sharpe of N trials, Bailey & Lopez de Prado (2014), by hand for N=10, V=0.01
    gamma = 0.5772156649015329
    by_hand = 0.1 * ((1 - gamma) * stats.norm.ppf(1 - 1 / 10) + gamma * stats.norm.ppf(1 - 1 / (10 * math.e)))
    assert expected_max_sharpe(10, 0.01) == pytest.approx(by_hand, rel=1e-12)
    assert deflated_sharpe_ratio(returns, 10, trial_sharpe_variance=0.01) == pytest.approx(
        probabilistic_sharpe_ratio(returns, by_hand), rel=1e-12)
    assert math.isnan(probabilistic_sharpe_ratio(np.zeros(10)))


def test_aggregates_over_completed_folds():
    close = np.array([100.0, 101.0, 102.0])
    good = fold_metrics(np.array([100.0, 110.0, 121.0]), np.ones(3), np.zeros(3), 0.0, [21.0], 4)
    bad = fold_metrics(np.array([100.0, 90.0, 81.0]), np.ones(3), np.zeros(3), 0.0, [-19.0], 4)
    flat = flat_baseline(close, 100.0, 4)
    # Issue 16: aggregate_folds takes the market's other trials (Trials) instead of a count; the report
    # counts itself as one more, and its pooled per-bar Sharpe joins the trials' Sharpe ratios.
    others = Trials.of(2, [0.05, -0.05])
    agg = aggregate_folds({0: good, 2: bad, 3: flat},
                          {0: np.array([0.1, 0.1]), 2: np.array([-0.1, -0.1]), 3: np.zeros(2)}, others)
    assert agg["folds"] == 3 and agg["n_trials"] == 3
    assert agg["sharpe_per_bar"] == 0.0 and agg["n_returns"] == 6  # pooled: +0.1, +0.1, -0.1, -0.1, 0, 0
    assert agg["trial_sharpe_variance"] == pytest.approx(np.var([0.05, -0.05, 0.0], ddof=1))
    assert agg["total_return"]["mean"] == pytest.approx((0.21 - 0.19 + 0) / 3)
    assert agg["total_return"]["median"] == pytest.approx(0.0)
    assert agg["total_return"]["std"] == pytest.approx(np.std([0.21, -0.19, 0.0], ddof=1))
    assert agg["total_return"]["worst"] == pytest.approx(-0.19) and agg["worst_fold"] == 2
    assert agg["max_drawdown"]["worst"] == pytest.approx(0.19)
    assert agg["positive_share"] == pytest.approx(1 / 3)
    assert agg["win_rate"]["mean"] == pytest.approx(0.5)  # the flat fold's NaN is left out
    assert 0.0 <= agg["psr"] <= 1.0 and agg["dsr"] <= agg["psr"]
    # no completed fold: still a trial (the evaluation was run), without a Sharpe
    assert aggregate_folds({}, {}, NO_TRIALS) == {"folds": 0, "n_trials": 1, "trial_sharpe_variance": 0.0}


def test_trials_count_every_evaluation_and_vary_over_the_sharpes_they_have():
    trials = Trials.of(4, [0.1, None, 0.3, math.nan])
    assert trials.n_trials == 4 and list(trials.sharpes) == [0.1, 0.3]
    assert trials.variance == pytest.approx(0.02)  # ddof 1
    more = trials.plus(0.2)
    assert more.n_trials == 5 and more.variance == pytest.approx(0.01)
    assert Trials.of(1, [0.4]).variance == 0.0 and NO_TRIALS.n_trials == 0
    with pytest.raises(ValueError, match="n_trials=1"):
        Trials.of(1, [0.1, 0.2])
