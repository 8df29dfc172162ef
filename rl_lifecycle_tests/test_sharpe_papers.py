"""PSR and DSR reproduce the numerical examples of their papers, through the production functions.

Conventions both papers use, and so does `rl_lifecycle.evaluation.metrics`:
* Sharpe ratios are per observation (not annualised) in the formulas; kurtosis is the non-excess
  one (3 for normal returns); the PSR's denominator is sqrt(n - 1), n the number of returns.
* The expected maximum Sharpe of N trials (2014) is sqrt(V) ((1 - g) Phi^-1(1 - 1/N)
  + g Phi^-1(1 - 1/(N e))), g the Euler-Mascheroni constant 0.5772..., V the variance of the
  trials' Sharpe ratios in the same (per-observation) units.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl_lifecycle.evaluation.metrics import (
    EULER_GAMMA,
    Trials,
    aggregate_folds,
    deflated_sharpe_at_decision,
    deflated_sharpe_ratio,
    deflated_sharpe_ratio_from_moments,
    expected_max_sharpe,
    fold_metrics,
    probabilistic_sharpe_ratio,
    probabilistic_sharpe_ratio_from_moments,
    sharpe_moments,
    sharpe_variance,
)

# Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest
# Overfitting and Non-Normality", numerical example: N = 100 trials, T = 1250 daily returns (five years),
# annualised SR = 2.5, annualised V[SR_n] = 1/2, skewness -3, kurtosis 10. The paper de-annualises with
# 250 days a year: SR = 2.5 / sqrt(250), V = 0.5 / 250.
DAYS = 250
DSR_EXAMPLE = {"sharpe": 2.5 / math.sqrt(DAYS), "n_returns": 1250, "skew": -3.0, "kurtosis": 10.0,
               "n_trials": 100, "trial_sharpe_variance": 0.5 / DAYS}


def test_euler_mascheroni_constant():
    assert EULER_GAMMA == pytest.approx(0.5772156649015329, abs=1e-16)


def test_dsr_paper_example():
    """DSR = 0.9004 (the paper's figure, to four places), with E[max SR] = 0.1132 per day, i.e. 1.7894
    annualised. The paper's n in sqrt(n - 1) is T = 1250; with sqrt(T) instead the DSR would be 0.9005
    (within the tolerance as well: T is large here)."""
    x = DSR_EXAMPLE
    benchmark = expected_max_sharpe(x["n_trials"], x["trial_sharpe_variance"])
    assert benchmark == pytest.approx(0.1132, abs=5e-5)
    assert benchmark * math.sqrt(DAYS) == pytest.approx(1.7894, abs=5e-5)
    dsr = deflated_sharpe_ratio_from_moments(**x)
    assert dsr == pytest.approx(0.9004, abs=1e-3)
    assert dsr == pytest.approx(0.9004, abs=1e-4)  # the paper rounds to four places
    # the DSR is the PSR against the expected maximum Sharpe
    assert dsr == probabilistic_sharpe_ratio_from_moments(x["sharpe"], x["n_returns"], x["skew"], x["kurtosis"],
                                                          benchmark)


def test_dsr_paper_example_at_decision_time():
    """The decision path: a report's stored summary statistics against `Trials` whose 100 Sharpe ratios
    have the example's variance (sample variance, ddof 1) give the paper's DSR."""
    rng = np.random.default_rng(7)
    draws = rng.standard_normal(100)
    sharpes = (draws - draws.mean()) / draws.std(ddof=1) * math.sqrt(DSR_EXAMPLE["trial_sharpe_variance"])
    trials = Trials.of(100, sharpes)
    assert trials.n_trials == 100 and trials.variance == pytest.approx(0.5 / DAYS, rel=1e-12)
    aggregates = {"sharpe_per_bar": DSR_EXAMPLE["sharpe"], "n_returns": 1250, "skew": -3.0, "kurtosis": 10.0}
    assert deflated_sharpe_at_decision(aggregates, trials) == pytest.approx(0.9004, abs=1e-3)


def test_dsr_counts_the_trials_variance_not_the_candidates_sampling_variance():
    """The old production path deflated by the candidate's own sampling variance of its Sharpe
    ((1 - g3 SR + (g4 - 1)/4 SR^2) / (T - 1) = 0.00123 per day here) instead of V[SR]; on the
    example that gave 0.9765 rather than 0.9004. The DSR now moves with V[SR] only."""
    x = DSR_EXAMPLE
    own = sharpe_variance(x["sharpe"], x["n_returns"], x["skew"], x["kurtosis"])
    assert own == pytest.approx(0.0012255, abs=1e-7)
    wrong = deflated_sharpe_ratio_from_moments(**{**x, "trial_sharpe_variance": own})
    assert wrong == pytest.approx(0.977, abs=1e-3)
    assert deflated_sharpe_ratio_from_moments(**x) < wrong


# Bailey & Lopez de Prado (2012), "The Sharpe Ratio Efficient Frontier", Journal of Risk 15(2): a fund
# with n = 24 monthly returns and a monthly (not annualised) Sharpe of 0.458, benchmark SR* = 0.
@pytest.mark.parametrize(("skew", "kurtosis", "psr"), [
    (0.0, 3.0, 0.982),       # normal returns
    (-2.448, 10.164, 0.913),  # the same Sharpe with the paper's skewed, fat-tailed returns
])
def test_psr_paper_examples(skew, kurtosis, psr):
    """The paper quotes three decimals (0.982, 0.913); computed: 0.98167 and 0.91336. The paper's
    sqrt(n - 1) is what reproduces them: sqrt(n) would give 0.9836 and 0.9179."""
    value = probabilistic_sharpe_ratio_from_moments(0.458, 24, skew, kurtosis, 0.0)
    assert value == pytest.approx(psr, abs=1e-3)
    with_n = probabilistic_sharpe_ratio_from_moments(0.458, 25, skew, kurtosis, 0.0)  # sqrt(n) convention
    assert abs(with_n - psr) > 1e-3


def test_returns_based_functions_are_the_moments_functions():
    """`probabilistic_sharpe_ratio` / `deflated_sharpe_ratio` on returns, and the aggregates a report
    stores, go through the same moments functions the paper examples test."""
    rng = np.random.default_rng(3)
    returns = 0.002 + 0.01 * rng.standard_t(4, size=800)
    m = sharpe_moments(returns)
    assert m.n_returns == 800
    assert probabilistic_sharpe_ratio(returns) == probabilistic_sharpe_ratio_from_moments(
        m.sharpe, m.n_returns, m.skew, m.kurtosis)
    assert deflated_sharpe_ratio(returns, 100, 0.002) == deflated_sharpe_ratio_from_moments(
        m.sharpe, m.n_returns, m.skew, m.kurtosis, 100, 0.002)

    equity = 100.0 * np.cumprod(np.concatenate([[1.0], 1.0 + returns]))
    metrics = fold_metrics(equity, np.ones(len(equity)), np.zeros(len(equity)), 0.0, [], 365.25)
    others = Trials.of(9, [0.01, -0.02, 0.03, 0.0, 0.05, -0.01, 0.02])  # two of them without a Sharpe
    aggregates = aggregate_folds({0: metrics}, {0: returns}, others)
    trials = others.plus(m.sharpe)
    assert aggregates["n_trials"] == 10 and aggregates["trial_sharpe_variance"] == pytest.approx(trials.variance)
    assert aggregates["sharpe_per_bar"] == pytest.approx(m.sharpe, rel=1e-12)
    assert aggregates["dsr"] == deflated_sharpe_at_decision(aggregates, trials)
    assert aggregates["dsr"] == pytest.approx(deflated_sharpe_ratio(returns, 10, trials.variance), rel=1e-9)
    assert aggregates["psr"] == pytest.approx(probabilistic_sharpe_ratio(returns), rel=1e-9)


def test_one_trial_or_no_spread_gives_the_psr_against_zero():
    x = {k: v for k, v in DSR_EXAMPLE.items() if k not in ("n_trials", "trial_sharpe_variance")}
    psr = probabilistic_sharpe_ratio_from_moments(**x)
    assert deflated_sharpe_ratio_from_moments(**x, n_trials=1, trial_sharpe_variance=0.5 / DAYS) == psr
    assert deflated_sharpe_ratio_from_moments(**x, n_trials=100, trial_sharpe_variance=0.0) == psr
    aggregates = {"sharpe_per_bar": x["sharpe"], "n_returns": 1250, "skew": -3.0, "kurtosis": 10.0}
    assert deflated_sharpe_at_decision(aggregates, Trials.of(1, [x["sharpe"]])) == psr
    # a report stored before the summary statistics were kept (or without variation): no evidence
    assert math.isnan(deflated_sharpe_at_decision({"psr": 0.99, "dsr": 0.9}, Trials.of(1, [0.1])))
    assert math.isnan(deflated_sharpe_at_decision({**aggregates, "skew": None}, Trials.of(1, [0.1])))
