"""CPCV through the report and the gates, and the PBO over a market's stored trials.

Backtests here are booked by the exact accountant (`accountant.fold_result`, what Nautilus books to the
bit: test_accountant.py), so the report, its paths, the stored trials and the gates run their production
code on many backtests in milliseconds. The paths are checked against skfolio's own recombination
(`cross_val_predict` over `CombinatorialPurgedCV`), and a path's growth against its backtests' reported
total returns.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from skfolio.model_selection import CombinatorialPurgedCV, cross_val_predict
from skfolio.optimization import InverseVolatility

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.synthetic import synthetic_candles
from rl_lifecycle.evaluation.accountant import fold_result
from rl_lifecycle.evaluation.curves import file_curve_writer
from rl_lifecycle.evaluation.folds import FoldConfig, backtests, cpcv_paths, make_folds
from rl_lifecycle.evaluation.metrics import Trials, sharpe_per_bar, simple_returns
from rl_lifecycle.evaluation.overfitting import probability_of_backtest_overfitting
from rl_lifecycle.evaluation.report import path_returns, summarise
from rl_lifecycle.evaluation.service import check_leak_free, cpcv_paths_png, report_json
from rl_lifecycle.evaluation.store import EvaluationReport, read_report, write_report
from rl_lifecycle.evaluation.trials import TrialMatrix, pbo_of, report_pbo, stored_trial_matrix
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.promotion.calibration import Bars, calibrate
from rl_lifecycle.promotion.gates import PBO_ABOVE_MAX, ReportSummary, evaluate, paired_folds, paired_returns
from rl_lifecycle.promotion.policy import GatePolicy
from rl_lifecycle.windows import to_us

MARKET = Market("CPCUSDT", "1h")
CPCV = FoldConfig.create(scheme="cpcv", n_groups=4, n_test_groups=2, purge_bars=2, embargo_bars=1, min_train_size=50)


@pytest.fixture(scope="module")
def candles() -> CandleArrays:
    return CandleArrays.from_frame(synthetic_candles(MARKET, to_us("2024-02-01"), to_us("2024-03-01"), seed=3))


def _results(candles, folds, positions_of_split):
    """Each backtest booked by the accountant with the positions of the split that trades it."""
    out = []
    for test in backtests(folds):
        start, end = test.test_range
        out.append(fold_result(test.index, candles.ts[start:end] + MARKET.interval_us, candles.close[start:end],
                               positions_of_split(test.split)[start:end], 10.0))
    return out


def _report(candles, config, positions_of_split, curves=None, spec_hash="spec", trials=Trials.of(0, [])):
    folds = make_folds(len(candles), config, label_horizon=2)
    results = _results(candles, folds, positions_of_split)
    records, aggregates, status = summarise(MARKET, folds, results, candles.ts, 10.0, trials, True,
                                            None if curves is None else file_curve_writer(curves),
                                            calendar="crypto")
    report = EvaluationReport(MARKET.key, {"algorithm": "rule"}, spec_hash, "dataset-1", config, 2, True, status,
                              aggregates, {}, records)
    return report, folds, results


def _random_positions(seed: int, n: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < 0.5).astype(np.int8)


def test_paths_recombine_the_splits_as_skfolio_does():
    rng = np.random.default_rng(0)
    n_rows = 120
    assets = pd.DataFrame(rng.normal(0, 0.01, (n_rows, 2)) * [1, 2], columns=["a", "b"],
                          index=pd.date_range("2024-01-01", periods=n_rows))
    cv = CombinatorialPurgedCV(n_folds=4, n_test_folds=2, purged_size=1, embargo_size=1)
    theirs = cross_val_predict(InverseVolatility(), assets, cv=cv)  # one MultiPeriodPortfolio per path
    config = FoldConfig.create(scheme="cpcv", n_groups=4, n_test_groups=2, purge_bars=1, embargo_bars=1,
                               min_train_size=1)
    folds = make_folds(n_rows, config, label_horizon=1)
    returns = {}
    for test in backtests(folds):  # the split's model: inverse volatility fitted on the split's train rows
        fold = folds[test.split]
        train = np.concatenate([np.arange(s, e) for s, e in fold.train_ranges])
        weights = InverseVolatility().fit(assets.iloc[train]).weights_
        returns[test.index] = assets.iloc[slice(*test.test_range)].to_numpy() @ weights
    records = [type("Row", (), {"backtest": b, "test_group": b.test_group, "index": b.index})() for b in backtests(folds)]
    ours = path_returns(folds, records, returns)
    assert len(ours) == len(theirs) == cv.n_test_paths
    for path, reference in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(path, reference.returns, rtol=0, atol=1e-15)


def test_a_cpcv_report_keeps_a_row_per_tested_group_and_its_paths(candles, tmp_path):
    positions = {split: _random_positions(split, len(candles)) for split in range(6)}
    report, folds, results = _report(candles, CPCV, positions.__getitem__, tmp_path / "curves")
    assert report.status == "ok" and len(folds) == 6 and len(report.folds) == 12  # C(4, 2) splits x 2 groups
    assert [(f.split, f.test_group) for f in report.folds] == [(s, g) for s, fold in enumerate(folds)
                                                               for g in fold.test_groups]
    paths = report.aggregates["paths"]
    assert paths["count"] == paths["complete"] == 3  # phi(4, 2) = 2/4 * C(4, 2)
    # a path's growth is the product of its backtests' growth, as each backtest reported it
    by_step = {(f.split, f.test_group): f.metrics["total_return"] for f in report.folds}
    for figures, steps in zip(paths["per_path"], cpcv_paths(4, 2), strict=True):
        assert figures["total_return"] == pytest.approx(math.prod(1 + by_step[s] for s in steps) - 1, rel=1e-12)
    assert paths["total_return"]["worst"] == min(p["total_return"] for p in paths["per_path"])
    # the pooled statistics count each tested bar once (its 3 paths averaged), not three times
    groups = sorted({f.test_range for f in report.folds})
    assert report.aggregates["n_returns"] == sum(end - start - 1 for start, end in groups)


def test_a_contender_that_trades_the_same_whatever_it_trained_on_has_one_path(candles):
    same = _random_positions(9, len(candles))
    report, folds, results = _report(candles, CPCV, lambda split: same)
    per_path = report.aggregates["paths"]["per_path"]
    assert all(p == per_path[0] for p in per_path)
    (path, *_) = path_returns(folds, report.folds, {r.fold_index: simple_returns(r.equity) for r in results})
    assert report.aggregates["sharpe_per_bar"] == pytest.approx(sharpe_per_bar(path), rel=1e-12)


def test_cpcv_reports_round_trip_re_verify_and_show_their_paths(conn, candles, tmp_path):
    positions = {split: _random_positions(split, len(candles)) for split in range(6)}
    report, _, _ = _report(candles, CPCV, positions.__getitem__, tmp_path / "curves")
    stored = read_report(conn, write_report(conn, report))
    assert [(f.split, f.test_group, f.test_range) for f in stored.folds] == \
        [(f.split, f.test_group, f.test_range) for f in report.folds]
    assert check_leak_free(stored, len(candles)) == []
    shown = report_json(stored)
    assert shown["scheme"] == "cpcv" and shown["paths"] == 3
    assert [(f["split"], f["test_group"]) for f in shown["folds"]][:2] == [(0, 0), (0, 1)]
    assert cpcv_paths_png(conn, stored).startswith(b"\x89PNG")
    # a split's train range moved into a test group it does not train on: the leak check says so
    first = stored.folds[0]
    leaky_train = ((first.test_range[0], first.train_ranges[0][1]),) + first.train_ranges[1:]
    one_row = [replace(first, train_ranges=leaky_train), *stored.folds[1:]]
    assert any("different train ranges" in p for p in check_leak_free(replace(stored, folds=one_row), len(candles)))
    whole_split = [replace(f, train_ranges=leaky_train) if f.split == 0 else f for f in stored.folds]
    assert any("overlaps test block" in p for p in check_leak_free(replace(stored, folds=whole_split), len(candles)))


def test_the_paired_test_sees_each_tested_bar_once(candles):
    def summary(seed):
        report, _, results = _report(candles, CPCV, lambda s: _random_positions(seed + s, len(candles)))
        return ReportSummary.from_stored(replace(report, id=seed),
                                         {r.fold_index: simple_returns(r.equity) for r in results}), report

    (ours, report), (theirs, _) = summary(0), summary(100)
    challenger, champion = paired_returns(ours, theirs, paired_folds(ours, theirs))
    assert len(challenger) == len(champion) == report.aggregates["n_returns"]
    # a bar's return is the mean over the paths through it
    first = [ours.returns[f.index] for f in report.folds if f.test_group == 0]
    np.testing.assert_array_equal(challenger[:len(first[0])], np.mean(first, axis=0))


def _oracle(candles) -> np.ndarray:
    ahead = np.zeros(len(candles), dtype=np.int8)
    ahead[:-1] = candles.close[1:] > candles.close[:-1]
    return ahead


def test_the_pbo_over_stored_trials_on_the_same_bars(conn, candles, tmp_path):
    config = FoldConfig.create(n_folds=3, test_size=150, purge_bars=2, min_train_size=50)
    reports = []
    for name, positions in (("noise-1", _random_positions(1, len(candles))), ("noise-2", _random_positions(2, len(candles))),
                            ("oracle", _oracle(candles))):
        report, _, _ = _report(candles, config, lambda s, p=positions: p, tmp_path / name, spec_hash=name)
        reports.append(replace(report, id=write_report(conn, report)))
    other_bars = FoldConfig.create(n_folds=3, test_size=100, purge_bars=2, min_train_size=50)  # other test bars: not a column of these trials' matrix
    elsewhere, _, _ = _report(candles, other_bars, lambda s: _oracle(candles), tmp_path / "elsewhere", spec_hash="x")
    write_report(conn, elsewhere)
    spans = tuple(sorted({f.test_span for f in reports[0].folds}))
    matrix = stored_trial_matrix(conn, MARKET, spans)
    assert matrix.report_ids == tuple(r.id for r in reports)
    # the oracle is best in sample and out of sample in every combination: no overfitting
    detail = report_pbo(conn, MARKET, reports[2].folds, excluding_key=reports[2].evaluation_key)
    assert detail["pbo"] == 0.0 and detail["n_trials"] == 3 and detail["n_partitions"] == 16
    assert pbo_of(matrix)["pbo"] == probability_of_backtest_overfitting(matrix.returns, 16).pbo
    # a trial whose curve files are gone is left out, not guessed
    for f in reports[0].folds:
        (tmp_path / "noise-1" / f"fold-{f.index}.parquet").unlink()
    assert stored_trial_matrix(conn, MARKET, spans).report_ids == tuple(r.id for r in reports[1:])


def _mirror_trials(rows_per_block=10, blocks=16) -> np.ndarray:
    """Two trials of the PBO's worst case: A gains in the first half of the blocks, B in the second, by
    the same amounts. Whichever wins in sample holds more of its good blocks there, so fewer out of sample;
    a tie in sample is a tie out of sample too (λ = 0, counted as overfit)."""
    good, bad = np.full(rows_per_block, 2.0 ** -7), np.full(rows_per_block, -(2.0 ** -7))  # exact sums: exact ties
    a = np.concatenate([good if b < blocks // 2 else bad for b in range(blocks)])
    return np.column_stack([a, a[::-1]])


def test_the_pbo_gate_fails_a_choice_that_always_overfits_and_passes_when_nothing_was_chosen():
    report = ReportSummary(1, (), {})
    worst = _mirror_trials()
    pbo, _ = replace(report, trial_returns=worst).overfitting()
    assert pbo == 1.0
    gate = next(g for g in evaluate(replace(report, trial_returns=worst), None, GatePolicy(), True).gates
                if g.code == PBO_ABOVE_MAX)
    assert not gate.passed and gate.value == 1.0 and gate.details["n_trials"] == 2
    alone = next(g for g in evaluate(replace(report, trial_returns=worst[:, :1]), None, GatePolicy(), True).gates
                 if g.code == PBO_ABOVE_MAX)
    assert alone.passed and math.isnan(alone.value) and "needs two" in alone.description
    off = evaluate(replace(report, trial_returns=worst), None, GatePolicy(max_pbo=None), True)
    assert PBO_ABOVE_MAX not in {g.code for g in off.gates}
    assert TrialMatrix(worst, (1, 2)).n_trials == 2


def test_calibration_runs_the_whole_policy_on_cpcv_folds(candles):
    bars = Bars(MARKET, candles.ts, candles.close)
    result = calibrate(bars, GatePolicy(), nulls=10, edge=0.8, edge_trials=10, n_trials=4,
                       fold_config=FoldConfig.create(scheme="cpcv", n_groups=5, n_test_groups=2, purge_bars=1,
                                                     min_train_size=50))
    assert result.folds == 10 and result.false_promotions <= 1
    assert result.edge_promotions >= 8  # an edge that strong is promoted on CPCV folds too
