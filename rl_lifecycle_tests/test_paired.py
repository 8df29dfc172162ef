"""The paired test: HAC standard errors against statsmodels, its size under the null and power with an edge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl_lifecycle.promotion.paired import _hac_covariance, block_length, paired_test


def _ar1(rng, n: int, phi: float, scale: float = 0.01) -> np.ndarray:
    noise = rng.normal(0.0, scale, n)
    out = np.empty(n)
    out[0] = noise[0]
    for t in range(1, n):
        out[t] = phi * out[t - 1] + noise[t]
    return out


def test_the_hac_standard_error_of_a_mean_is_newey_wests_as_statsmodels_computes_it():
    import statsmodels.api as sm

    d = _ar1(np.random.default_rng(3), 2000, 0.4)
    for lags in (1, 5, 12):
        fit = sm.OLS(d, np.ones(len(d))).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False})
        ours = math.sqrt(_hac_covariance(d[:, None], lags)[0, 0] / len(d))
        assert ours == pytest.approx(float(fit.bse[0]), rel=1e-9)


def test_a_challenger_with_an_edge_is_significant_and_the_mirror_is_not():
    rng = np.random.default_rng(11)
    champion = _ar1(rng, 2000, 0.2)
    challenger = champion * 0.5 + _ar1(rng, 2000, 0.2) + 0.0015  # ~0.15% a bar better on average
    better = paired_test(challenger, champion)
    assert better.mean_p_value < 0.01 and better.sharpe_p_value < 0.01
    worse = paired_test(champion, challenger)
    assert worse.mean_p_value > 0.9 and worse.sharpe_p_value > 0.9
    assert better.n_bars == 2000 and 1 <= better.block_size <= 200


def test_under_the_null_the_test_rejects_about_alpha_of_the_time_with_serial_dependence():
    """Two skill-less contenders with serially dependent returns (AR(1), phi 0.5) and equal means: a test
    of size 5% should reject about 5% of the time; an iid test would reject far more often."""
    rng = np.random.default_rng(2024)
    p_mean, p_sharpe = [], []
    for _ in range(200):
        a, b = _ar1(rng, 600, 0.5), _ar1(rng, 600, 0.5)
        result = paired_test(a, b, replications=299, seed=int(rng.integers(1 << 31)))
        p_mean.append(result.mean_p_value)
        p_sharpe.append(result.sharpe_p_value)
    for p in (np.array(p_mean), np.array(p_sharpe)):
        rate = float(np.mean(p < 0.05))
        assert 0.01 <= rate <= 0.10, rate  # 200 draws: a 5% test lands here with > 99% probability
        assert 0.35 <= float(np.median(p)) <= 0.65  # roughly uniform


def test_undefined_inputs_give_nan_and_mismatched_lengths_are_refused():
    assert math.isnan(paired_test(np.zeros(5), np.zeros(5)).sharpe_p_value)
    flat = paired_test(np.zeros(100), np.zeros(100))
    assert math.isnan(flat.sharpe_p_value) and math.isnan(flat.mean_p_value)
    with pytest.raises(ValueError, match="one length"):
        paired_test(np.zeros(10), np.zeros(11))
    assert block_length(np.zeros(50)) == 1
