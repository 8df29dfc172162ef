"""Evaluation reports: fold backtests summarised, stored in one transaction, idempotent, read back."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.evaluation.backtest import FoldJob, run_folds
from rl_lifecycle.evaluation.curves import file_curve_writer
from rl_lifecycle.evaluation.folds import FoldConfig, make_folds, verify_folds
from rl_lifecycle.evaluation.metrics import Trials, deflated_sharpe_at_decision
from rl_lifecycle.evaluation.policies import FeatureSignPolicy
from rl_lifecycle.evaluation.report import summarise
from rl_lifecycle.evaluation.store import (
    EvaluationReport,
    latest_report,
    market_trials,
    read_report,
    specs_evaluated,
    write_report,
)
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import to_us
from rl_lifecycle_tests.test_backtest import RaisingPolicy

MARKET = Market("ETHUSDT", "1h")


@pytest.fixture
def evaluated(conn, tmp_path):
    start = to_us("2024-02-01")
    ingest_synthetic(conn, MARKET, start, start + 10 * 24 * MARKET.interval_us, seed=4)
    candles = load_candles(conn, MARKET, start, start + 10 * 24 * MARKET.interval_us)
    vectors = np.sin(np.arange(len(candles)) / 5.0)[:, None]
    config = FoldConfig.create(n_folds=3, test_size=40, purge_bars=2, embargo_bars=1, min_train_size=50)
    folds = make_folds(len(candles), config, label_horizon=2)
    policies = [FeatureSignPolicy(), RaisingPolicy(), FeatureSignPolicy(allow_short=True)]
    jobs = [FoldJob(MARKET.key, f.index, candles.slice(*f.test_range), vectors[slice(*f.test_range)], policy, 10.0)
            for f, policy in zip(folds, policies, strict=True)]
    results = run_folds(jobs, workers=2)
    return candles, config, folds, results, tmp_path


# Issue 16: summarise takes the market's other trials (Trials) instead of a count of specs; one other
# trial here, so the report's aggregates say n_trials == 2 as before.
ONE_OTHER = Trials.of(1, [0.01])


def _report(candles, config, folds, results, curves, strict=True, spec_hash="spec-a", dataset_hash="dataset-1",
            trials=ONE_OTHER):
    records, aggregates, status = summarise(MARKET, folds, results, candles.ts, 10.0, other_trials=trials,
                                            strict=strict, calendar="crypto",
                                            write_curve=None if curves is None else file_curve_writer(curves))
    return EvaluationReport(MARKET.key, {"algorithm": "rule"}, spec_hash, dataset_hash, config, 2, strict, status,
                            aggregates, {"wall_s": 1.5}, records)


def test_strict_report_keeps_the_failure_and_round_trips(conn, evaluated):
    candles, config, folds, results, tmp_path = evaluated
    report = _report(candles, config, folds, results, tmp_path / "curves")
    assert report.status == "failed" and report.aggregates["missing_folds"] == [1]
    report_id = write_report(conn, report)
    stored = read_report(conn, report_id)
    assert stored.id == report_id and stored.status == "failed" and stored.fold_config == config
    assert [f.status for f in stored.folds] == ["ok", "failed", "ok"]
    assert "policy exploded on purpose" in stored.folds[1].error and stored.folds[1].metrics is None
    assert [(f.train_ranges, f.test_range) for f in stored.folds] == [(f.train_ranges, f.test_range) for f in folds]
    # stored ranges re-verify against the label horizon (what the folds_leak_free check does)
    from rl_lifecycle.evaluation.folds import Fold

    assert verify_folds([Fold(f.index, f.train_ranges, f.test_range) for f in stored.folds],
                        len(candles), stored.label_horizon, stored.fold_config) == []
    first = stored.folds[0]
    assert first.test_span == (int(candles.ts[folds[0].test_range[0]]),
                               int(candles.ts[folds[0].test_range[1] - 1]) + MARKET.interval_us)
    assert set(first.metrics) >= {"total_return", "sharpe", "max_drawdown", "trades", "fees_paid"}
    assert set(first.baselines) == {"flat", "buy_and_hold"} and first.baselines["flat"]["total_return"] == 0.0
    assert first.metrics["total_return"] == pytest.approx(results[0].account_equity / 100_000.0 - 1)
    curve = pl.read_parquet(first.equity_curve_uri.removeprefix("file://"))
    assert curve.columns == ["ts", "close", "equity", "position", "buy_and_hold", "flat"] and curve.height == 40
    # aggregates cover the two completed folds; NaN comes back as null
    assert stored.aggregates["folds"] == 2 and stored.aggregates["n_trials"] == 2
    # the summary statistics a decision recomputes the DSR from survive the round trip
    assert stored.aggregates["n_returns"] == 2 * 39 and math.isfinite(stored.aggregates["sharpe_per_bar"])
    assert deflated_sharpe_at_decision(stored.aggregates, ONE_OTHER.plus(stored.aggregates["sharpe_per_bar"])) \
        == pytest.approx(report.aggregates["dsr"], rel=1e-12, nan_ok=True)
    assert stored.aggregates["total_return"]["mean"] == pytest.approx(
        np.mean([results[0].account_equity / 1e5 - 1, results[2].account_equity / 1e5 - 1]))
    assert all(v is None or math.isfinite(v) for v in stored.aggregates["win_rate"].values())
    assert latest_report(conn, MARKET).id == report_id


def test_rewriting_an_evaluation_is_idempotent(conn, evaluated):
    candles, config, folds, results, tmp_path = evaluated
    report = _report(candles, config, folds, results, None, strict=False)
    assert report.status == "partial"
    first_id = write_report(conn, report)
    again = write_report(conn, report)
    assert again == first_id
    assert conn.execute("SELECT count(*) FROM evaluation_reports").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM evaluation_folds WHERE report_id = %s", (first_id,)).fetchone() == (3,)
    # another fold config or spec is another evaluation
    other_config = config.model_copy(update={"embargo_bars": 3})
    other = _report(candles, other_config, make_folds(len(candles), other_config, 2), results, None, strict=False)
    assert write_report(conn, other) != first_id
    write_report(conn, _report(candles, config, folds, results, None, spec_hash="spec-b"))
    assert specs_evaluated(conn, MARKET) == 2
    # ... and each evaluation is a trial: spec-a under two fold configs, spec-b (a rerun counts once)
    assert market_trials(conn, MARKET).n_trials == 3


def test_market_trials_count_every_evaluation_of_a_spec(conn, evaluated):
    """Fold configs, seeds (another spec hash) and feature sets (another dataset) of one spec are
    separate trials; a rerun of one evaluation is the same trial; other markets do not count."""
    candles, config, folds, results, _ = evaluated
    assert market_trials(conn, MARKET).n_trials == 0
    other_config = config.model_copy(update={"test_size": 30})
    variants = [
        _report(candles, config, folds, results, None, strict=False),
        _report(candles, other_config, make_folds(len(candles), other_config, 2), results, None, strict=False),
        _report(candles, config, folds, results, None, strict=False, spec_hash="spec-a-seed-1"),
        _report(candles, config, folds, results, None, strict=False, dataset_hash="dataset-ta-v2"),
        _report(candles, config, folds, results[:1], None, dataset_hash="dataset-2"),  # failed: still a trial
    ]
    ids = [write_report(conn, r) for r in variants]
    write_report(conn, variants[0])  # a rerun rewrites its row
    assert len(set(ids)) == 5 and specs_evaluated(conn, MARKET) == 2
    trials = market_trials(conn, MARKET)
    assert trials.n_trials == 5
    expected = [r.aggregates["sharpe_per_bar"] for r in variants]
    assert trials.sharpes == pytest.approx(expected)
    assert trials.variance == pytest.approx(np.var(expected, ddof=1))
    # while assembling an evaluation, it leaves itself out (it counts itself once more)
    assert market_trials(conn, MARKET, excluding=variants[0].evaluation_key).n_trials == 4
    # a report stored before reports kept sharpe_per_bar counts, without a Sharpe
    legacy = EvaluationReport(**{**variants[0].__dict__, "dataset_hash": "dataset-old",
                                 "aggregates": {"folds": 0, "psr": None, "dsr": None}})
    write_report(conn, legacy)
    assert market_trials(conn, MARKET).n_trials == 6 and len(market_trials(conn, MARKET).sharpes) == 5
    assert market_trials(conn, Market("BTCUSDT", "1h")).n_trials == 0
    assert market_trials(conn, Market("ETHUSDT", "4h")).n_trials == 0


def test_a_failed_write_leaves_the_stored_report_untouched(conn, evaluated):
    candles, config, folds, results, _ = evaluated
    report = _report(candles, config, folds, results, None)
    report_id = write_report(conn, report)
    broken = EvaluationReport(**{**report.__dict__, "status": "ok",
                                 "folds": [*report.folds, report.folds[0]]})  # duplicate fold index
    with pytest.raises(Exception, match="duplicate key"):
        write_report(conn, broken)
    stored = read_report(conn, report_id)
    assert stored.status == "failed" and len(stored.folds) == 3
    with pytest.raises(ValueError, match="status='done'"):
        write_report(conn, EvaluationReport(**{**report.__dict__, "status": "done"}))
