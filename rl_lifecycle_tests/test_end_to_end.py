"""The asset graph on a PostgreSQL-backed Dagster instance, with its blocking checks."""

from __future__ import annotations

import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.launcher import materialize
from rl_lifecycle.orchestration.partitions import sync_market_partitions
from rl_lifecycle.windows import WindowScheme

pytestmark = pytest.mark.slow

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")
ALL = ["candles", "feature_snapshots", "training_dataset"]


@pytest.fixture
def synthetic_btc(conn, dagster_instance):
    add_market(conn, BTC, source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, [BTC.key])
    ingest_synthetic(conn, BTC, SCHEME.parse("2024-01-01").start, SCHEME.parse("2024-03-01").start, seed=7)
    return conn


def test_whole_graph_with_every_check(synthetic_btc, dagster_instance):
    (run,) = materialize(dagster_instance, defs, ALL, ["BTCUSDT-1h|2024-03-01"])
    assert run.ok, run.errors
    assert run.materialized == sorted(ALL)
    assert {c.check: c.passed for c in run.checks} == {
        "features_deterministic": True, "features_no_lookahead": True, "warmup_flagged": True,
        "dataset_reproducible": True, "dataset_no_unwarm_rows": True,
    }
    assert all(c.blocking for c in run.checks)
    dataset = run.metadata["training_dataset"]
    assert dataset["windows_computed"] == 2 and dataset["windows_from_cache"] == 1  # March came from the asset
    features = run.metadata["feature_snapshots"]
    assert features["rows"] == 744 and features["warm_rows"] == 744
    # a second run changes no stored byte and rebuilds the dataset from the cache, same hash
    before = synthetic_btc.execute("SELECT sum(hashtext(encode(vector, 'hex'))), max(computed_at) FROM rl_feature_snapshots").fetchone()
    (again,) = materialize(dagster_instance, defs, ["feature_snapshots", "training_dataset"], ["BTCUSDT-1h|2024-03-01"])
    assert again.ok
    assert again.metadata["feature_snapshots"]["unchanged"] == 744
    assert again.metadata["training_dataset"]["dataset_hash"] == dataset["dataset_hash"]
    assert again.metadata["training_dataset"]["windows_from_cache"] == 3
    after = synthetic_btc.execute("SELECT sum(hashtext(encode(vector, 'hex'))), max(computed_at) FROM rl_feature_snapshots").fetchone()
    assert after == before


def test_a_failing_blocking_check_stops_downstream_and_names_the_difference(synthetic_btc, dagster_instance,
                                                                            nondeterministic_features):
    # in this process: the fault is injected here, not in a run launched through the code location
    (run,) = materialize(dagster_instance, defs, ALL, ["BTCUSDT-1h|2024-03-01"], in_process=True)
    assert not run.ok
    assert "training_dataset" not in run.materialized
    failed = {c.check: c for c in run.checks if not c.passed}
    assert "features_deterministic" in failed
    description = failed["features_deterministic"].description
    assert "2024-03-31T23:00" in description and "logret_1" in description
    assert dagster_instance.get_run_by_id(run.run_id).is_failure
