"""`rl-lifecycle backfill`: a Dagster backfill record on the instance, for the daemon and the UI."""

from __future__ import annotations

import pytest
from dagster import AssetKey
from dagster._core.execution.backfill import BulkActionStatus

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.orchestration.backfills import submit_backfill
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.launcher import asset_selection
from rl_lifecycle.orchestration.partitions import sync_market_partitions
from rl_lifecycle_tests.cli_helpers import run_cli

KEYS = ["BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]


def _targets(backfill) -> dict[str, list[str]]:
    subset = backfill.asset_backfill_data.target_subset
    return {key.to_user_string(): sorted(subset.get_partitions_subset(key).get_partition_keys())
            for key in subset.asset_keys}


def test_the_backfill_link_follows_the_ui_address(monkeypatch):
    from rl_lifecycle.orchestration.backfills import SubmittedBackfill

    submitted = SubmittedBackfill("abc123", ("candles",), ("BTCUSDT-1h|2024-01-01",))
    monkeypatch.delenv("RL_DAGSTER_UI_URL", raising=False)
    assert submitted.url == "http://127.0.0.1:3000/runs/b/abc123"
    monkeypatch.setenv("RL_DAGSTER_UI_URL", "https://dagster.example/")
    assert submitted.url == "https://dagster.example/runs/b/abc123"


def test_unknown_assets_are_refused_by_name():
    assert asset_selection(defs, ["training_dataset", "candles"]) == ["candles", "training_dataset"]  # dependency order
    with pytest.raises(UserInputError, match="unknown asset.*nope"):
        asset_selection(defs, ["candles", "nope"])


@pytest.mark.slow
def test_a_backfill_is_stored_on_the_instance_with_its_assets_and_partitions(conn, dagster_instance):
    add_market(conn, Market("BTCUSDT", "1h"), source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, ["BTCUSDT-1h"])
    submitted = submit_backfill(dagster_instance, defs, ["training_dataset", "feature_snapshots"], KEYS)
    assert submitted.url == f"http://127.0.0.1:3000/runs/b/{submitted.backfill_id}"
    backfill = dagster_instance.get_backfill(submitted.backfill_id)
    assert backfill.backfill_id in {b.backfill_id for b in dagster_instance.get_backfills()}
    assert backfill.status == BulkActionStatus.REQUESTED  # the daemon picks it up
    assert backfill.is_asset_backfill
    assert sorted(backfill.asset_selection) == [AssetKey("feature_snapshots"), AssetKey("training_dataset")]
    assert _targets(backfill) == {"feature_snapshots": KEYS, "training_dataset": KEYS}
    assert backfill.tags["promotion/market"] == "BTCUSDT-1h"


def test_a_market_without_a_partition_is_refused(dagster_instance):
    with pytest.raises(UserInputError, match="NOPEUSDT-1h is not a `market` partition"):
        submit_backfill(dagster_instance, defs, ["candles"], ["NOPEUSDT-1h|2024-01-01"])


@pytest.mark.slow
def test_the_cli_submits_a_backfill_and_refuses_bad_input_with_exit_2(rl_env, capsys, monkeypatch):
    from rl_lifecycle.orchestration.instance import STORAGE_URL_ENV, get_instance
    from rl_lifecycle.settings import load_settings

    # get_instance points these at the test's instance; let monkeypatch restore them afterwards
    monkeypatch.setenv("DAGSTER_HOME", "unset")
    monkeypatch.setenv(STORAGE_URL_ENV, "unset")

    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    assert cli("market", "add", "BTC/USDT", "1h", "--synthetic-seed", "7")[0] == 0
    code, _, err = cli("backfill", "candles", "nope", "--market", "BTCUSDT-1h", "--windows", "2024-01-01..2024-03-01")
    assert code == 2 and "unknown asset(s) nope" in err
    code, _, err = cli("backfill", "candles", "--market", "BTCUSDT-1h", "--windows", "1990-01-01..1990-03-01")
    assert code == 2 and "before the first window partition" in err
    code, _, err = cli("backfill", "candles", "--market", "BTCUSDT-1h", "--windows", "2090-01-01..2090-03-01")
    assert code == 2 and "after the current window" in err
    code, _, err = cli("backfill", "candles", "--market", "ETHUSDT-1h", "--windows", "2024-01-01..2024-03-01")
    assert code == 2 and "ETHUSDT-1h is not registered" in err
    code, _, err = cli("backfill", "candles", "--market", "BTCUSDT-1h", "--windows", "2024-03-01..2024-01-01")
    assert code == 2 and "is empty" in err

    code, out, err = cli("backfill", "candles", "feature_snapshots", "--market", "btc-usdt-1h", "--windows",
                         "2024-01-01..2024-03-01")
    assert code == 0, err
    backfill_id = out.split()[1].rstrip(":")
    assert f"http://127.0.0.1:3000/runs/b/{backfill_id}" in out
    assert "make dev" in out
    settings = load_settings()
    from rl_lifecycle.db import resolve_database_url

    instance = get_instance(settings, resolve_database_url(settings))
    backfill = instance.get_backfill(backfill_id)
    assert _targets(backfill) == {"candles": KEYS, "feature_snapshots": KEYS}


@pytest.mark.slow
def test_the_daemon_runs_the_backfill_through_the_code_location(conn, dagster_instance):
    """One iteration of Dagster's backfill daemon turns the record into a run of its range."""
    import logging

    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    from rl_lifecycle.orchestration.instance import REPO_ROOT

    add_market(conn, Market("BTCUSDT", "1h"), source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, ["BTCUSDT-1h"])
    submitted = submit_backfill(dagster_instance, defs, ["candles"], KEYS[:2])
    target = WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
    with WorkspaceProcessContext(dagster_instance, target) as context:
        list(execute_backfill_iteration(context, logging.getLogger("backfill")))
        runs = dagster_instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": submitted.backfill_id}))
        assert len(runs) == 1  # the data assets take a range of a market's windows per run
    run = runs[0]
    # queued: the daemon's run queue launches it (the instance's default run coordinator)
    assert run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                          DagsterRunStatus.SUCCESS)
    assert run.asset_selection == {AssetKey("candles")}
    assert run.tags["dagster/asset_partition_range_start"] == KEYS[0]
    assert run.tags["dagster/asset_partition_range_end"] == KEYS[1]
    dagster_instance.delete_run(run.run_id)  # nothing left queued in the shared instance
