"""A new user's path through the CLI: data, train, models list, evaluate, report show (real Dagster runs)."""

from __future__ import annotations

import json

import pytest
import yaml

from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle_tests.cli_helpers import run_cli

pytestmark = pytest.mark.slow


def test_train_list_evaluate_and_show_a_report(rl_env, tmp_path, capsys, monkeypatch):
    fields = {**load_model_spec("ppo_small").model_dump(mode="json"), "total_timesteps": 128,
              "hyperparameters": {"n_steps": 64, "batch_size": 32, "n_epochs": 1}}
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(fields))

    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    assert cli("market", "add", "BTC/USDT", "1h", "--synthetic-seed", "7")[0] == 0
    code, out, err = cli("materialize", "candles", "feature_snapshots",
                         "--market", "BTCUSDT-1h", "--windows", "2024-01-01..2024-03-01")
    assert code == 0, out + err

    # no dataset yet: the run builds it, then refuses to evaluate a challenger nobody trained
    code, out, err = cli("evaluate", "--market", "BTCUSDT-1h", "--window", "2024-03-01")
    assert "no training dataset yet: the run builds it first, over the market's span of 3 window(s)" in out
    assert "materialized training_dataset; checks" in out
    assert code == 1 and "materialize challenger_model first" in out + err

    code, out, err = cli("train", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--spec", str(spec))
    assert code == 0, out + err
    assert "registered as version 1" in out and "no training dataset yet" not in out
    assert "1 episode (longest " in out and ", 0 gaps)" in out  # synthetic 24/7 candles: one unbroken episode

    code, out, _ = cli("models", "list", "--market", "BTCUSDT-1h", "--json")
    (version,) = json.loads(out)
    assert version["version"] == 1 and version["aliases"] == ["challenger"] and version["feature_set"] == "ta_v2"
    assert set(version) == {"version", "aliases", "weights_hash", "dataset_hash", "feature_set", "fingerprint", "created"}

    code, out, err = cli("evaluate", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--folds", "2", "--workers", "2")
    assert code == 0, out + err
    assert "fold" in out and "buy&hold" in out

    _assert_one_step_per_fold(["challenger_0", "challenger_1"])

    code, out, _ = cli("report", "show", "--market", "BTCUSDT-1h", "--json")
    report = json.loads(out)
    assert report["status"] == "ok" and report["purge_bars"] >= report["label_horizon"] == 1
    assert {"psr", "dsr"} <= set(report["aggregate"])
    assert [f["index"] for f in report["folds"]] == [0, 1]
    fold = report["folds"][0]
    assert fold["test_range"][0].endswith("Z") and len(fold["train_ranges"][0]) == 2
    assert {"total_return", "sharpe", "max_drawdown", "trades"} <= set(fold["metrics"])
    assert "total_return" in fold["baselines"]["flat"] and "total_return" in fold["baselines"]["buy_and_hold"]

    # --span-windows: a dataset of another span first, in a run of its own, then the model on it
    code, out, err = cli("train", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--spec", str(spec),
                         "--span-windows", "2")
    assert code == 0, out + err
    assert "no training dataset yet" not in out and "registered as version 2" in out
    code, out, _ = cli("models", "list", "--market", "BTCUSDT-1h", "--json")
    first, second = sorted(json.loads(out), key=lambda v: v["version"])
    assert first["dataset_hash"] != second["dataset_hash"]

    code, _, err = cli("evaluate", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--folds", "0")
    assert code == 2 and "--folds 0 is invalid" in err
    code, _, err = cli("report", "show", "--market", "ETHUSDT-1h")
    assert code == 2 and "no evaluation report" in err


def _assert_one_step_per_fold(mapping_keys: list[str]) -> None:
    """The evaluation's folds ran as Dagster steps of their own (the executor spreads them)."""
    from dagster import DagsterEventType

    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.orchestration.instance import get_instance
    from rl_lifecycle.settings import load_settings

    settings = load_settings()
    with get_instance(settings, resolve_database_url(settings)) as instance:
        (run,) = [r for r in instance.get_runs(limit=1)]
        steps = {e.step_key for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert {f"fold_report.run_fold[{key}]" for key in mapping_keys} <= steps, steps
