"""Walk-forward evaluation of a trained spec: fresh model per fold, Nautilus backtests, stored report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.service import check_backtest_parity, check_leak_free, evaluate_spec, report_json
from rl_lifecycle.evaluation.store import read_report
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.windows import WindowScheme, to_us

pytestmark = pytest.mark.slow

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")
WINDOW = SCHEME.parse("2024-03-01")


@pytest.fixture
def dataset(conn, tmp_path):
    ingest_synthetic(conn, BTC, to_us("2023-12-01"), to_us("2024-04-01"), seed=7)
    build_dataset(conn, spec_ending_at(BTC, WINDOW, SCHEME, "ta_v2", 3), tmp_path / "datasets", load_feature_set("ta_v2"))
    return conn


def _tiny_spec(tmp_path: Path):
    fields = {**load_model_spec("ppo_small").model_dump(mode="json"), "total_timesteps": 128,
              "hyperparameters": {"n_steps": 64, "batch_size": 32, "n_epochs": 1}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(fields))
    return load_model_spec(str(path))


def test_each_fold_trains_its_own_model_and_is_backtested_then_the_report_is_stored(dataset, tmp_path):
    config = FoldConfig.create(n_folds=2, test_size=240, purge_bars=2, embargo_bars=2)
    spec = _tiny_spec(tmp_path)
    report = evaluate_spec(dataset, BTC, WINDOW, spec, config, workdir=tmp_path / "evals", workers=2, log=lambda _: None)
    assert report.status == "ok", [f.error for f in report.folds]
    assert [f.status for f in report.folds] == ["ok", "ok"]
    assert all(f.metrics["trades"] >= 0 and "sharpe" in f.metrics for f in report.folds)
    assert {"flat", "buy_and_hold"} <= set(report.folds[0].baselines)
    assert "psr" in report.aggregates and "dsr" in report.aggregates
    # the accountant books every fold's positions beside Nautilus, to the last bit
    assert check_backtest_parity(report) == []
    assert all(f.baselines["accountant"]["max_equity_difference"] == 0.0 for f in report.folds)
    shown = report_json(report)
    assert shown["scheme"] == "expanding" and shown["aggregate"]["pbo"] is None
    assert shown["aggregate"]["n_trials"] >= 1 and "trial_sharpe_variance" in shown["aggregate"]
    assert report_json(report)["folds"][0]["accountant"]["total_return"] == pytest.approx(
        report.folds[0].metrics["total_return"], abs=1e-12)
    stored = read_report(dataset, report.id)
    assert stored.dataset_hash == report.dataset_hash and len(stored.folds) == 2
    n_rows = (31 + 29 + 31) * 24  # Jan..Mar, all warm (December is the warmup)
    assert check_leak_free(stored, n_rows) == []
    again = evaluate_spec(dataset, BTC, WINDOW, spec, config, workdir=tmp_path / "evals", workers=1, log=lambda _: None)
    assert again.id == report.id  # the same evaluation is rewritten, not duplicated
    assert dataset.execute("SELECT count(*) FROM evaluation_reports").fetchone()[0] == 1


def test_strict_mode_fails_an_evaluation_with_a_broken_fold_and_keeps_its_report(dataset, tmp_path):
    config = FoldConfig.create(n_folds=2, test_size=240, purge_bars=1)
    report = evaluate_spec(dataset, BTC, WINDOW, _tiny_spec(tmp_path), config, workdir=tmp_path / "evals",
                           fold_timeout_s=0.01, log=lambda _: None)  # no backtest finishes in 10 ms
    assert report.status == "failed"
    stored = read_report(dataset, report.id)
    assert stored.status == "failed" and all(f.status == "failed" and "timed out" in f.error for f in stored.folds)
    lenient = evaluate_spec(dataset, BTC, WINDOW, _tiny_spec(tmp_path), config, workdir=tmp_path / "evals",
                            strict=False, fold_timeout_s=0.01, log=lambda _: None)
    assert lenient.status == "failed"  # non-strict still fails when no fold completed at all
    assert lenient.aggregates["missing_folds"] == [0, 1]


def test_a_cpcv_evaluation_backtests_each_tested_group_in_nautilus_and_recombines_its_paths(dataset, tmp_path):
    config = FoldConfig.create(scheme="cpcv", n_groups=3, n_test_groups=2, purge_bars=2, embargo_bars=2)
    spec = _tiny_spec(tmp_path)
    report = evaluate_spec(dataset, BTC, WINDOW, spec, config, workdir=tmp_path / "evals", workers=2, log=lambda _: None)
    assert report.status == "ok", [f.error for f in report.folds]
    # C(3, 2) = 3 splits, each trading its 2 test groups in a backtest of its own: 6 rows, phi(3, 2) = 2 paths
    assert [(f.split, f.test_group) for f in report.folds] == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 2)]
    assert report.aggregates["paths"]["count"] == report.aggregates["paths"]["complete"] == 2
    assert check_backtest_parity(report) == []
    stored = read_report(dataset, report.id)
    assert check_leak_free(stored, (31 + 29 + 31) * 24) == []
    shown = report_json(stored)
    assert shown["scheme"] == "cpcv" and shown["paths"] == 2
    assert shown["aggregate"]["pbo"] is None  # one trial on these bars: nothing chosen among yet
    # a second trial on the same folds (another seed): the PBO of choosing between them is computed
    reseeded = spec.model_copy(update={"seed": spec.seed + 1})
    second = evaluate_spec(dataset, BTC, WINDOW, reseeded, config, workdir=tmp_path / "evals", workers=2,
                           log=lambda _: None)
    assert second.aggregates["pbo_detail"]["n_trials"] == 2 and 0.0 <= second.aggregates["pbo"] <= 1.0
