"""The check status the Dagster UI shows, per partition, after range runs and single runs.

The webserver's `AssetCheck.partitionStatuses` resolver (dagster_graphql/schema/asset_checks.py) loads
`AssetCheckState` for (check key, partitions definition), i.e.
`instance.event_log_storage.get_asset_check_state`; the Partitions tab, the check's status and the
lineage node's "n / m Passed" are drawn from it. These tests read it the same way."""

from __future__ import annotations

import pytest
from dagster import AssetCheckKey, AssetKey, partition_loading_context
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus as Status

from rl_lifecycle.features.service import CheckReport
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.launcher import materialize
from rl_lifecycle.orchestration.partitions import market_window_partitions, sync_market_partitions

DATA_ASSETS = ["candles", "feature_snapshots", "training_dataset"]
FEATURE_CHECKS = ["features_deterministic", "features_no_lookahead", "warmup_flagged"]
DATASET_CHECKS = ["dataset_reproducible", "dataset_no_unwarm_rows"]
CHECKS = [("feature_snapshots", c) for c in FEATURE_CHECKS] + [("training_dataset", c) for c in DATASET_CHECKS]


def ui_check_status(instance, asset: str, check: str) -> dict[Status, set[str]]:
    """The partitions per status of one check, as the UI's partition status resolver loads them."""
    key = AssetCheckKey(AssetKey(asset), check)
    # the webserver's request context loads partitions from the instance
    with partition_loading_context(dynamic_partitions_store=instance):
        state = instance.event_log_storage.get_asset_check_state([(key, market_window_partitions)])[key]
        return {status: set(subset.subset_value.get_partition_keys())
                for status, subset in state.subsets.items() if not subset.is_empty}


def _market(conn, instance) -> None:
    add_market(conn, Market("BTCUSDT", "1h"), source="synthetic", seed=7)
    sync_market_partitions(instance, ["BTCUSDT-1h"])


@pytest.mark.slow
def test_range_and_single_runs_show_every_partitions_checks_passed_in_the_ui(conn, rl_env, dagster_instance):
    _market(conn, dagster_instance)
    keys = ["BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]
    runs = materialize(dagster_instance, defs, DATA_ASSETS, keys)  # one range run, through the code location
    assert len({r.run_id for r in runs}) == 1 and all(r.ok for r in runs), [r.errors for r in runs]
    for asset, check in CHECKS:
        assert ui_check_status(dagster_instance, asset, check) == {Status.SUCCEEDED: set(keys)}, (asset, check)
    # the CLI's per-partition results say the same: each window its own five passed checks
    assert all(sorted(c.check for c in r.checks if c.passed) == sorted(FEATURE_CHECKS + DATASET_CHECKS) for r in runs)

    (single,) = materialize(dagster_instance, defs, DATA_ASSETS, ["BTCUSDT-1h|2024-04-01"])
    assert single.ok, single.errors
    for asset, check in CHECKS:
        assert ui_check_status(dagster_instance, asset, check) == {Status.SUCCEEDED: {*keys, "BTCUSDT-1h|2024-04-01"}}


@pytest.mark.slow
def test_a_failing_window_of_a_range_shows_failed_for_that_partition_and_stops_downstream(
        conn, rl_env, dagster_instance, monkeypatch):
    import rl_lifecycle.orchestration.assets.features as features

    real = features.check_warmup_flagged
    planted = {"stored": 0}

    def fails_in_february(stored):
        planted["stored"] += 1
        if planted["stored"] == 2:  # the range's second window
            return CheckReport(False, "planted failure", [])
        return real(stored)

    monkeypatch.setattr(features, "check_warmup_flagged", fails_in_february)
    _market(conn, dagster_instance)
    keys = ["BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]
    runs = materialize(dagster_instance, defs, DATA_ASSETS, keys, in_process=True)  # the fault lives in this process
    assert len({r.run_id for r in runs}) == 1 and not any(r.ok for r in runs)
    assert ui_check_status(dagster_instance, "feature_snapshots", "warmup_flagged") == {
        Status.SUCCEEDED: {keys[0], keys[2]}, Status.FAILED: {keys[1]},
    }
    for check in ("features_deterministic", "features_no_lookahead"):
        assert ui_check_status(dagster_instance, "feature_snapshots", check) == {Status.SUCCEEDED: set(keys)}
    # blocking: the failed check stopped the downstream asset, whose checks never ran
    assert not dagster_instance.get_materialized_partitions(AssetKey("training_dataset"))
    for check in DATASET_CHECKS:
        assert Status.SUCCEEDED not in ui_check_status(dagster_instance, "training_dataset", check)
    # the CLI reports the same window as failed, and only that one
    failed = {r.partition_key for r in runs for c in r.checks if not c.passed}
    assert failed == {keys[1]}
