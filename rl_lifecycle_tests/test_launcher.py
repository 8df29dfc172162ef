"""Runs launched through the code location, and backfill runs over a range of windows."""

from __future__ import annotations

import pytest
from dagster import AssetKey

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.launcher import PlannedRun, jobs_for, materialize, plan_runs, windows_per_run
from rl_lifecycle.orchestration.partitions import sync_market_partitions

DATA_ASSETS = ["candles", "feature_snapshots", "training_dataset"]


def test_runs_are_planned_per_market_over_consecutive_windows():
    keys = ["ETHUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01",
            "BTCUSDT-1h|2024-05-01", "ETHUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-01-01"]
    lanes = plan_runs("market_data_job", ["candles"], keys, windows_per_run=2)
    assert [[run.partition_keys for run in lane] for lane in lanes] == [
        # a range never skips a window (April is missing) and holds at most two windows
        [("BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01"), ("BTCUSDT-1h|2024-03-01",), ("BTCUSDT-1h|2024-05-01",)],
        [("ETHUSDT-1h|2024-01-01", "ETHUSDT-1h|2024-02-01")],
    ]
    assert PlannedRun("market_data_job", ("candles",), ("BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01")).tags(defs) == {
        "dagster/asset_partition_range_start": "BTCUSDT-1h|2024-01-01",
        "dagster/asset_partition_range_end": "BTCUSDT-1h|2024-02-01",
    }
    assert PlannedRun("market_data_job", ("candles",), ("BTCUSDT-1h|2024-01-01",)).tags(defs).items() >= {
        "dagster/partition": "BTCUSDT-1h|2024-01-01",
        "dagster/partition/market": "BTCUSDT-1h", "dagster/partition/window": "2024-01-01",
    }.items()
    # decisions for one market queue behind each other (dagster.yaml's tag concurrency limit)
    assert PlannedRun("lifecycle_job", ("fold_report",), ("BTCUSDT-1h|2024-01-01",)).tags(defs)["promotion/market"] == "BTCUSDT-1h"


def test_ranges_follow_each_assets_backfill_policy_and_each_job_runs_after_the_one_it_needs():
    assert windows_per_run(defs, DATA_ASSETS) > 1
    assert windows_per_run(defs, ["challenger_model", "fold_report"]) == 1  # models train per window
    assert jobs_for(defs, ["fold_report", "candles", "challenger_model"]) == [
        ("market_data_job", ["candles"]), ("lifecycle_job", ["challenger_model", "fold_report"]),
    ]
    with pytest.raises(UserInputError, match="unknown asset.*nope"):
        jobs_for(defs, ["candles", "nope"])


@pytest.mark.slow
def test_a_backfill_range_is_one_code_location_run_with_every_window_recorded(conn, rl_env, dagster_instance):
    add_market(conn, Market("BTCUSDT", "1h"), source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, ["BTCUSDT-1h"])
    keys = ["BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]
    runs = materialize(dagster_instance, defs, DATA_ASSETS, keys)
    assert [r.partition_key for r in runs] == keys
    assert all(r.ok for r in runs), [r.errors for r in runs]
    assert len({r.run_id for r in runs}) == 1
    # each window's own figures, not the range's
    assert [r.metadata["candles"]["rows"] for r in runs] == [31 * 24, 29 * 24, 31 * 24]
    assert [r.metadata["feature_snapshots"]["rows"] for r in runs] == [31 * 24, 29 * 24, 31 * 24]
    assert len({r.metadata["training_dataset"]["dataset_hash"] for r in runs}) == 3
    assert {c.check for c in runs[0].checks} == {
        "features_deterministic", "features_no_lookahead", "warmup_flagged", "dataset_reproducible", "dataset_no_unwarm_rows",
    }
    for asset in DATA_ASSETS:
        assert dagster_instance.get_materialized_partitions(AssetKey(asset)) == set(keys)
    # launched like the UI launches: from the workspace's code location, so the UI lists it as such
    stored = dagster_instance.get_run_by_id(runs[0].run_id)
    assert stored.remote_job_origin is not None
    assert stored.remote_job_origin.location_name == "rl_lifecycle"
    assert stored.job_code_origin is not None
    assert stored.tags["dagster/asset_partition_range_start"] == keys[0]


def test_processes_started_in_dagster_home_share_the_state_dir(tmp_path, monkeypatch):
    """Code servers, the daemon and run workers start in DAGSTER_HOME: a relative RL_HOME must not name
    another state dir (and another embedded database) there."""
    import os

    from rl_lifecycle.orchestration.instance import prepare_dagster_env
    from rl_lifecycle.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RL_HOME", ".rl_state")  # relative, like the default `.rl_lifecycle`
    for name in ("DAGSTER_HOME", "RL_DAGSTER_STORAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    dagster_home = prepare_dagster_env(settings, "postgresql://u@localhost/db")
    assert os.environ["RL_HOME"] == str(tmp_path / ".rl_state")
    monkeypatch.chdir(dagster_home)  # where a child process starts
    assert load_settings().pgdata == settings.pgdata == tmp_path / ".rl_state" / "pgdata"
