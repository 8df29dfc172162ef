"""The Dagster shell: loadable definitions, partition keys, runs on a PostgreSQL-backed instance."""

from __future__ import annotations

import pytest
from dagster import AssetKey, Definitions, build_sensor_context

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.orchestration.definitions import JOBS, defs
from rl_lifecycle.orchestration.partitions import (
    market_window_partitions,
    multi_partition_key,
    parse_partition_key,
)


def test_definitions_are_loadable():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. a job mixing backfill policies
        Definitions.validate_loadable(defs)
        for job in JOBS:
            assert defs.resolve_job_def(job.name) is not None


def test_partition_keys_read_market_then_window():
    key = multi_partition_key(Market("BTCUSDT", "1h"), "2024-03-01")
    assert str(key) == "BTCUSDT-1h|2024-03-01"
    market, window = parse_partition_key("BTCUSDT-1h|2024-03-01")
    assert (market.key, window.key) == ("BTCUSDT-1h", "2024-03-01")
    assert [d.name for d in market_window_partitions.partitions_defs] == ["market", "window"]
    with pytest.raises(UserInputError, match="MARKET\\|WINDOW"):
        parse_partition_key("BTCUSDT-1h")
    with pytest.raises(UserInputError, match="not the start"):
        parse_partition_key("BTCUSDT-1h|2024-03-02")


def test_sensor_adds_registered_markets_to_the_partitions(conn, rl_env, dagster_instance):
    from rl_lifecycle.orchestration.automation.markets import market_partitions_sensor
    from rl_lifecycle.orchestration.resources import PostgresResource

    add_market(conn, Market("ETHUSDT", "4h"))
    context = build_sensor_context(instance=dagster_instance, resources={"database": PostgresResource(url=rl_env["RL_DATABASE_URL"])})
    result = market_partitions_sensor(context)
    requests = result.dynamic_partitions_requests
    assert [list(r.partition_keys) for r in requests] == [["ETHUSDT-4h"]]


@pytest.mark.slow
def test_partitioned_materialization_on_a_postgres_backed_instance(conn, rl_env, dagster_instance):
    from rl_lifecycle.orchestration.launcher import materialize
    from rl_lifecycle.orchestration.partitions import sync_market_partitions

    add_market(conn, Market("BTCUSDT", "1h"), source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, ["BTCUSDT-1h"])
    (run,) = materialize(dagster_instance, defs, ["candles"], ["BTCUSDT-1h|2024-03-01"])
    assert run.ok and run.materialized == ["candles"]
    stored = dagster_instance.get_run_by_id(run.run_id)
    assert stored is not None and stored.tags["dagster/partition"] == "BTCUSDT-1h|2024-03-01"
    event = dagster_instance.get_latest_materialization_event(AssetKey("candles"))
    metadata = event.asset_materialization.metadata
    assert metadata["rows"].value == 31 * 24
    assert metadata["gaps"].value == 0
    assert conn.execute("SELECT count(*) FROM market_candles").fetchone()[0] == 31 * 24
    # Unknown assets are refused before any run is launched (unknown markets: see the next test).
    with pytest.raises(UserInputError, match="unknown asset"):
        materialize(dagster_instance, defs, ["nope"], ["BTCUSDT-1h|2024-03-01"])


def test_unregistered_markets_are_refused_before_any_run(conn, rl_env, capsys, monkeypatch):
    from rl_lifecycle.cli.runs import materialize_with_progress
    from rl_lifecycle.orchestration.instance import STORAGE_URL_ENV, get_instance
    from rl_lifecycle.settings import load_settings
    from rl_lifecycle_tests.cli_helpers import run_cli

    for name in ("DAGSTER_HOME", STORAGE_URL_ENV):  # set by get_instance: restored after the test
        monkeypatch.delenv(name, raising=False)
    add_market(conn, Market("BTCUSDT", "1h"), source="synthetic", seed=7)
    settings, url = load_settings(), rl_env["RL_DATABASE_URL"]
    keys = ["BTCUSDT-1h|2024-03-01", "ETHUSDT-4h|2024-03-01"]
    with get_instance(settings, url) as instance:
        runs_before = instance.get_runs_count()
        with pytest.raises(UserInputError, match="not registered: ETHUSDT-4h;"):
            materialize_with_progress(settings, url, ["candles"], keys)
        code, out, err = run_cli(capsys, monkeypatch, "materialize", "candles", *(f"--partition={k}" for k in keys))
        assert code == 2
        assert err.startswith("error: market(s) not registered: ETHUSDT-4h;") and "BTCUSDT-1h" not in err
        assert "partitions succeeded" not in out
        # nothing launched, not even the registered market's partition
        assert instance.get_runs_count() == runs_before
    assert conn.execute("SELECT count(*) FROM market_candles").fetchone()[0] == 0
    assert [r[0] for r in conn.execute("SELECT pair FROM markets")] == ["BTCUSDT"]


@pytest.mark.slow
def test_a_failing_partition_is_reported_not_raised(conn, rl_env, dagster_instance):
    from rl_lifecycle.orchestration.launcher import materialize
    from rl_lifecycle.orchestration.partitions import sync_market_partitions

    add_market(conn, Market("EURUSD", "1h"))  # imported market without candles
    sync_market_partitions(dagster_instance, ["EURUSD-1h"])
    (run,) = materialize(dagster_instance, defs, ["candles"], ["EURUSD-1h|2024-03-01"])
    assert not run.ok
    assert any("no candles stored for EURUSD-1h" in e for e in run.errors)
