"""The probability of backtest overfitting (CSCV): calibration on skill-less and planted-edge trials,
a hand-enumerated case, and properties.

No maintained PBO implementation is installed (pypbo is not; skfolio 1.12.2 and arch 8.0.0 have
none), so the reference value is the hand-checkable case below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.overfitting import probability_of_backtest_overfitting


def test_skill_less_trials_overfit_half_the_time():
    """50 trials of iid noise, T = 1000, S = 16 (12,870 combinations), seeds 0..15.

    Without skill the in-sample winner's out-of-sample rank is uniform on 1..N, so each combination
    has P(λ <= 0) = P(rank <= 25) = 25/50 = 0.5 and E[PBO] = 0.5. One data set's PBO is widely
    dispersed (the combinations share their rows: seeds 0..19 give 0.08..0.70), so the band is on the
    mean over 16 seeds, [0.40, 0.60] (observed 0.47; its standard error is about 0.04)."""
    values = []
    for seed in range(16):
        noise = np.random.default_rng(seed).normal(0.0, 0.01, (1000, 50))
        result = probability_of_backtest_overfitting(noise, n_partitions=16)
        assert result.n_combinations == math.comb(16, 8) == len(result.logits)
        assert 0.0 < result.pbo < 1.0
        values.append(result.pbo)
    assert 0.40 <= np.mean(values) <= 0.60


def test_a_planted_edge_among_noise_is_not_overfit():
    """Trial 17 earns 0.3 standard deviations a bar more than 49 noise trials (seeded): it wins in
    sample and stays in the top half out of sample in (almost) every combination."""
    for seed in range(3):
        returns = np.random.default_rng(seed).normal(0.0, 0.01, (1000, 50))
        returns[:, 17] += 0.003
        result = probability_of_backtest_overfitting(returns)
        assert result.pbo <= 0.01
        assert result.prob_oos_loss <= 0.01  # the selected trial's out-of-sample Sharpe is positive


# rows = blocks b0..b3 (S = 4, one row each), columns = trials A, B, C, D
HAND = np.array([
    [-3, 2, -2, -1],
    [3, 0, 3, -2],
    [2, 3, -3, -2],
    [-2, -2, -1, -3],
], dtype=float)


def test_hand_enumerated_case_with_four_partitions():
    """S = 4, metric = mean (the ranking of a mean over two rows is the ranking of their sum).

    IS blocks  IS sums A B C D   n*   OOS blocks  OOS sums A B C D   n*'s OOS rank   ω     λ
    {0, 1}      0  2  1 -3       B    {2, 3}       0  1 -4 -5        4               4/5   ln 4
    {0, 2}     -1  5 -5 -3       B    {1, 3}       1 -2  2 -5        2               2/5   ln(2/3)
    {0, 3}     -5  0 -3 -4       B    {1, 2}       5  3  0 -4        3               3/5   ln(3/2)
    {1, 2}      5  3  0 -4       A    {0, 3}      -5  0 -3 -4        1               1/5   ln(1/4)
    {1, 3}      1 -2  2 -5       C    {0, 2}      -1  5 -5 -3        1               1/5   ln(1/4)
    {2, 3}      0  1 -4 -5       B    {0, 1}       0  2  1 -3        4               4/5   ln 4

    (rank 1 = worst of N = 4, ω = rank / (N + 1), λ = ln(ω / (1 - ω))). λ <= 0 in combinations 2, 4
    and 5: PBO = 3/6. n*'s in-sample means 1, 2.5, 0, 2.5, 1, 0.5; out-of-sample means 0.5, -1, 1.5,
    -2.5, -2.5, 1; three of six below zero."""
    result = probability_of_backtest_overfitting(HAND, n_partitions=4, metric="mean")
    assert result.n_combinations == 6 and result.n_rows_used == 4
    np.testing.assert_allclose(result.logits, np.log([4, 2 / 3, 3 / 2, 1 / 4, 1 / 4, 4]))
    assert result.pbo == 0.5
    np.testing.assert_allclose(result.is_performance, [1, 2.5, 0, 2.5, 1, 0.5])
    np.testing.assert_allclose(result.oos_performance, [0.5, -1, 1.5, -2.5, -2.5, 1])
    assert result.prob_oos_loss == pytest.approx(3 / 6)
    slope, intercept = np.polyfit(result.is_performance, result.oos_performance, 1)
    assert result.degradation_slope == pytest.approx(slope) and result.degradation_intercept == pytest.approx(intercept)
    assert result.degradation_slope < 0  # the better it looked in sample, the worse out of sample


def test_ties_share_ranks_and_an_in_sample_tie_goes_against_the_selection():
    """Two rows, S = 2: combinations IS {0} / OOS {1} and IS {1} / OOS {0}.

    IS {0}: A and B tie for best (1, 1, 0); out of sample A = 0, B = 2, C = 2. The tie goes against
    the selection: n* = A, rank 1 of 3, ω = 1/4. IS {1}: B and C tie (0, 2, 2); out of sample B = 1,
    C = 0: n* = C, its OOS score 0 ties C with... nobody but itself, rank 1, ω = 1/4. Both overfit."""
    values = np.array([[1, 1, 0], [0, 2, 2]], dtype=float)
    result = probability_of_backtest_overfitting(values, n_partitions=2, metric="mean")
    np.testing.assert_allclose(result.logits, [math.log(1 / 3)] * 2)
    # out-of-sample ties share their average rank: all three equal out of sample -> rank 2, ω = 1/2
    flat = np.array([[3, 1, 2], [5, 5, 5]], dtype=float)
    result = probability_of_backtest_overfitting(flat, n_partitions=2, metric="mean")
    assert result.logits[0] == 0.0  # IS {0}: A wins, OOS all 5: rank 2 of 3, ω = 2/4, λ = 0 (counted as overfit)


def test_the_sharpe_shortcut_equals_the_metric_applied_to_the_rows():
    """The built-in Sharpe ratio (from per-block moments) against the definition applied to each half."""
    returns = np.random.default_rng(5).normal(0.0005, 0.01, (203, 7))  # 203 = 8 * 25 + 3: 3 oldest rows dropped

    def sharpe(rows: np.ndarray) -> np.ndarray:
        return rows.mean(axis=0) / rows.std(axis=0, ddof=1)

    fast = probability_of_backtest_overfitting(returns, n_partitions=8)
    direct = probability_of_backtest_overfitting(returns, n_partitions=8, metric=sharpe)
    assert fast.n_rows_used == direct.n_rows_used == 200
    np.testing.assert_array_equal(fast.logits, direct.logits)
    np.testing.assert_allclose(fast.is_performance, direct.is_performance, rtol=1e-10)
    np.testing.assert_allclose(fast.oos_performance, direct.oos_performance, rtol=1e-10)
    # and dropping the oldest rows is what happens: the same as passing only the newest 200
    assert np.array_equal(probability_of_backtest_overfitting(returns[3:], n_partitions=8).logits, fast.logits)


@st.composite
def performance_matrices(draw):
    n_partitions = draw(st.sampled_from([2, 4, 6]))
    rows = draw(st.integers(2 * n_partitions, 8 * n_partitions + 5))
    trials = draw(st.integers(2, 6))
    values = draw(hnp.arrays(np.float64, (rows, trials), elements=st.integers(-6, 6).map(float)))
    permutation = draw(st.permutations(range(trials)))
    shift = draw(st.integers(-20, 20))
    return values, n_partitions, list(permutation), float(shift)


@settings(max_examples=200, deadline=None)
@given(performance_matrices())
def test_pbo_properties(setup):
    """PBO is in [0, 1]; it depends on ranks only, so it does not change when the trial columns are
    permuted, when a constant is added to every trial (metric = mean; a Sharpe ratio is not
    shift-invariant) or when every trial is scaled by a positive factor (metric = Sharpe).
    Integer-valued data keep these exact: distinct sums stay ordered after rounding."""
    values, n_partitions, permutation, shift = setup
    for metric in ("mean", "sharpe"):
        result = probability_of_backtest_overfitting(values, n_partitions, metric)
        assert 0.0 <= result.pbo <= 1.0
        assert result.n_combinations == math.comb(n_partitions, n_partitions // 2) == len(result.logits)
        assert np.isfinite(result.logits).all()
        permuted = probability_of_backtest_overfitting(values[:, permutation], n_partitions, metric)
        np.testing.assert_array_equal(permuted.logits, result.logits)
    mean = probability_of_backtest_overfitting(values, n_partitions, "mean")
    shifted = probability_of_backtest_overfitting(values + shift, n_partitions, "mean")
    np.testing.assert_array_equal(shifted.logits, mean.logits)
    sharpe = probability_of_backtest_overfitting(values, n_partitions, "sharpe")
    for factor in (2.0, 0.25):
        scaled = probability_of_backtest_overfitting(values * factor, n_partitions, "sharpe")
        np.testing.assert_array_equal(scaled.logits, sharpe.logits)


def test_bad_input_is_refused_naming_the_problem():
    noise = np.zeros((40, 3))
    with pytest.raises(UserInputError, match=r"n_partitions=5: must be an even integer"):
        probability_of_backtest_overfitting(noise, n_partitions=5)
    with pytest.raises(UserInputError, match=r"1 trial\(s\)"):
        probability_of_backtest_overfitting(noise[:, :1])
    with pytest.raises(UserInputError, match=r"40 rows: too few for n_partitions=64"):
        probability_of_backtest_overfitting(noise, n_partitions=64)
    with pytest.raises(UserInputError, match=r"shape \(40,\)"):
        probability_of_backtest_overfitting(noise[:, 0])
    with pytest.raises(UserInputError, match=r"non-finite"):
        probability_of_backtest_overfitting(np.full((40, 3), np.nan))
    with pytest.raises(UserInputError, match=r"metric='sortino'"):
        probability_of_backtest_overfitting(noise, n_partitions=4, metric="sortino")
