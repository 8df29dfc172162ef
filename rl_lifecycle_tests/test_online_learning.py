"""Online learning sensor and latest-window schedule: run requests, cursor, idempotency, disabled state.

Real PostgreSQL and a real Dagster instance. Candle and dataset events are recorded on the instance
(runless, as the inbox sensor records its observations) or by real runs; the Dagster database is
shared by the session, so each test starts its sensor cursor at the newest event.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import (
    AssetMaterialization,
    AssetObservation,
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.online.planner import (
    DATA_JOB,
    LIFECYCLE_JOB,
    DatasetEvent,
    OnlineCursor,
    latest_complete_window,
    plan_latest_window_requests,
    plan_lifecycle_requests,
    window_complete,
)
from rl_lifecycle.orchestration.automation.online import (
    current_cursor,
    latest_window_schedule,
    online_learning_sensor,
)
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.jobs import lifecycle_job, market_data_job
from rl_lifecycle.orchestration.partitions import sync_market_partitions
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.windows import WindowScheme, to_us

BTC = Market("BTCUSDT", "1h")
MONTHLY = WindowScheme("monthly")
NOW_US = to_us("2030-01-01")
EDGE = Market("EDGEUSD", "1h")


# -- helpers -----------------------------------------------------------------------------------------------
def _market_with_candles(conn, instance: DagsterInstance, start: str, end: str, market: Market = BTC) -> None:
    add_market(conn, market, source="import")
    ingest_synthetic(conn, market, to_us(start), to_us(end), seed=7)
    sync_market_partitions(instance, [market.key])


def _record(instance: DagsterInstance, event) -> int:
    """Record a runless asset event (as a sensor's asset_events are); returns its storage id."""
    instance.report_runless_asset_event(event)
    return instance.event_log_storage.get_maximum_record_id()


def _resources() -> dict:
    database = PostgresResource()
    return {"database": database, "mlflow": MlflowResource(database=database)}


def _evaluate(instance: DagsterInstance, cursor: str | None):
    # a resource with a nested resource (mlflow's database) is opened in the context's scope
    with build_sensor_context(instance=instance, cursor=cursor, resources=_resources()) as context:
        result = online_learning_sensor(context)
    # and as the daemon evaluates it: run requests must resolve against the sensor's target jobs
    import dagster

    from rl_lifecycle.orchestration.definitions import defs

    with dagster.partition_loading_context(dynamic_partitions_store=instance), build_sensor_context(
        instance=instance, cursor=cursor, resources=_resources(), definitions=defs,
    ) as tick_context:
        online_learning_sensor.evaluate_tick(tick_context)
    return result, context


def _requests(result) -> list[RunRequest]:
    assert isinstance(result, SensorResult), result
    return list(result.run_requests or [])


@pytest.fixture
def enabled(monkeypatch):
    monkeypatch.setenv("RL_ONLINE_LEARNING_ENABLED", "true")


# -- pure decisions ----------------------------------------------------------------------------------------------
def test_a_window_is_complete_when_the_markets_data_reaches_its_end():
    feb = MONTHLY.parse("2024-02-01")
    assert window_complete(feb, to_us("2024-03-01"), NOW_US)  # the last bar (Feb 29 23:00) closes at the boundary
    assert not window_complete(feb, to_us("2024-02-29T23:00"), NOW_US)  # the last bar is missing
    assert not window_complete(feb, None, NOW_US)  # no candles at all
    assert not window_complete(feb, to_us("2024-03-05"), to_us("2024-02-20"))  # never ahead of the wall clock
    assert latest_complete_window(MONTHLY, to_us("2024-03-01"), NOW_US).key == "2024-02-01"
    assert latest_complete_window(MONTHLY, to_us("2024-03-15"), NOW_US).key == "2024-02-01"
    assert latest_complete_window(MONTHLY, to_us("2024-03-15"), to_us("2024-03-10")).key == "2024-02-01"


def test_lifecycle_plan_waits_for_running_runs_and_skips_failed_checks_and_open_windows():
    closes = {BTC.key: to_us("2024-03-15")}
    events = [
        DatasetEvent(10, "BTCUSDT-1h|2024-01-01", blocking_checks_passed=False),
        DatasetEvent(11, "BTCUSDT-1h|2024-02-01"),
        DatasetEvent(12, "BTCUSDT-1h|2024-03-01"),  # open window
        DatasetEvent(13, "ETHUSDT-1h|2024-02-01"),  # not registered
        DatasetEvent(14, "BTCUSDT-1h|2023-12-01", run_finished=False),  # checks not known yet
        DatasetEvent(15, "BTCUSDT-1h|2023-11-01"),
    ]
    requests, cursor = plan_lifecycle_requests(events, MONTHLY, [BTC.key], closes, NOW_US, cursor_id=9)
    assert [(r.job_name, r.partition, r.run_key) for r in requests] == [
        (LIFECYCLE_JOB, "BTCUSDT-1h|2024-02-01", "lifecycle:BTCUSDT-1h|2024-02-01:11"),
    ]
    assert requests[0].market == BTC.key  # the sensor tags its run with it (one decision per market at a time)
    assert cursor == 13  # stops before the run still going: event 14 is read again next tick


def test_cursor_round_trips_as_json():
    cursor = OnlineCursor(candles_materialization=5, candles_observation=7, training_dataset=3)
    assert OnlineCursor.from_json(cursor.to_json()) == cursor
    assert OnlineCursor.from_json(None) is None


# -- the sensor on a real instance ---------------------------------------------------------------------------------
def test_disabled_sensor_skips_with_the_reason_and_leaves_its_cursor(conn, dagster_instance, monkeypatch):
    monkeypatch.setenv("RL_ONLINE_LEARNING_ENABLED", "false")
    _market_with_candles(conn, dagster_instance, "2024-01-01", "2024-03-01")
    cursor = current_cursor(dagster_instance).to_json()
    _record(dagster_instance, AssetObservation("candles", partition="BTCUSDT-1h|2024-02-01"))
    result, context = _evaluate(dagster_instance, cursor)
    assert isinstance(result, SkipReason)
    assert "online learning is off" in result.skip_message
    assert "RL_ONLINE_LEARNING_ENABLED=true" in result.skip_message
    assert context.cursor == cursor


def test_new_candles_of_a_completed_window_request_the_data_job_once(conn, dagster_instance, enabled):
    _market_with_candles(conn, dagster_instance, "2024-01-01", "2024-03-01")  # January and February complete
    # the sensor last looked when December was the newest completed window: January and February
    # completed since, so new candles for either call for the data job
    at = current_cursor(dagster_instance)
    cursor = OnlineCursor(at.candles_materialization, at.candles_observation, at.training_dataset,
                          windows={BTC.key: "2023-12-01"}).to_json()
    observed = _record(dagster_instance, AssetObservation("candles", partition="BTCUSDT-1h|2024-02-01"))
    materialized = _record(dagster_instance, AssetMaterialization("candles", partition="BTCUSDT-1h|2024-01-01"))
    result, _ = _evaluate(dagster_instance, cursor)
    requests = _requests(result)
    assert sorted((r.job_name, r.partition_key, r.run_key) for r in requests) == [
        (DATA_JOB, "BTCUSDT-1h|2024-01-01", f"market_data:BTCUSDT-1h|2024-01-01:{materialized}"),
        (DATA_JOB, "BTCUSDT-1h|2024-02-01", f"market_data:BTCUSDT-1h|2024-02-01:{observed}"),
    ]
    assert all(r.tags["rl_lifecycle/trigger"] == "online_learning" for r in requests)

    # idempotency: the returned cursor has seen these events; the same old cursor gives the same run keys
    again, _ = _evaluate(dagster_instance, result.cursor)
    assert _requests(again) == []
    assert again.skip_reason is not None
    replay, _ = _evaluate(dagster_instance, cursor)
    assert sorted(r.run_key for r in _requests(replay)) == sorted(r.run_key for r in requests)
    # a sensor that never looked at the market acts on its newest completed window only (January is history)
    first, _ = _evaluate(dagster_instance, at.to_json())
    assert [r.partition_key for r in _requests(first)] == ["BTCUSDT-1h|2024-02-01"]
    assert OnlineCursor.from_json(first.cursor).windows == {BTC.key: "2024-02-01"}


def test_an_open_window_is_not_requested(conn, dagster_instance, enabled):
    market = Market("OPENWIN", "1h")  # a market of its own: the Dagster database is shared by the session
    _market_with_candles(conn, dagster_instance, "2024-03-01", "2024-03-15", market)  # March still open
    cursor = current_cursor(dagster_instance).to_json()
    _record(dagster_instance, AssetObservation("candles", partition="OPENWIN-1h|2024-03-01"))
    _record(dagster_instance, AssetMaterialization("training_dataset", partition="OPENWIN-1h|2024-03-01"))
    result, _ = _evaluate(dagster_instance, cursor)
    assert _requests(result) == []  # and February never received candles: nothing to carry there either
    assert OnlineCursor.from_json(result.cursor) != OnlineCursor.from_json(cursor)  # the events were read


def test_a_window_whose_last_bar_closes_early_completes_with_the_first_bar_after_it(conn, dagster_instance, enabled):
    # candles up to Feb 28 22:00: February's data has not reached its end (like a session calendar's
    # month ending on a closed day), so its observation requests nothing
    _market_with_candles(conn, dagster_instance, "2024-02-01", "2024-02-28T23:00", EDGE)
    cursor = current_cursor(dagster_instance).to_json()
    _record(dagster_instance, AssetObservation("candles", partition="EDGEUSD-1h|2024-02-01"))
    result, _ = _evaluate(dagster_instance, cursor)
    assert _requests(result) == []
    # the first bars of March arrive: February is complete, requested once
    ingest_synthetic(conn, EDGE, to_us("2024-03-01"), to_us("2024-03-02"), seed=7)
    _record(dagster_instance, AssetObservation("candles", partition="EDGEUSD-1h|2024-03-01"))
    result, _ = _evaluate(dagster_instance, result.cursor)
    assert [(r.job_name, r.partition_key, r.run_key) for r in _requests(result)] == [
        (DATA_JOB, "EDGEUSD-1h|2024-02-01", "market_data:EDGEUSD-1h|2024-02-01:closed"),
    ]
    # more March bars: February keeps its one request (same run key, deduplicated by Dagster)
    _record(dagster_instance, AssetObservation("candles", partition="EDGEUSD-1h|2024-03-01"))
    again, _ = _evaluate(dagster_instance, result.cursor)
    assert [r.run_key for r in _requests(again)] == ["market_data:EDGEUSD-1h|2024-02-01:closed"]
    # once a training dataset newer than February's candles exists, February is carried forward
    _record(dagster_instance, AssetMaterialization("training_dataset", partition="EDGEUSD-1h|2024-02-01"))
    _record(dagster_instance, AssetObservation("candles", partition="EDGEUSD-1h|2024-03-01"))
    later, _ = _evaluate(dagster_instance, again.cursor)
    assert [r.job_name for r in _requests(later)] == [LIFECYCLE_JOB]


def test_a_new_training_dataset_of_a_completed_window_requests_the_lifecycle_job(conn, dagster_instance, enabled):
    _market_with_candles(conn, dagster_instance, "2024-01-01", "2024-03-01")
    cursor = current_cursor(dagster_instance).to_json()
    storage_id = _record(dagster_instance, AssetMaterialization("training_dataset", partition="BTCUSDT-1h|2024-02-01"))
    result, _ = _evaluate(dagster_instance, cursor)
    (request,) = _requests(result)
    assert (request.job_name, request.partition_key, request.run_key) == (
        LIFECYCLE_JOB, "BTCUSDT-1h|2024-02-01", f"lifecycle:BTCUSDT-1h|2024-02-01:{storage_id}",
    )
    assert request.tags["promotion/market"] == BTC.key
    assert OnlineCursor.from_json(result.cursor).training_dataset == storage_id
    again, _ = _evaluate(dagster_instance, result.cursor)
    assert _requests(again) == []


@pytest.mark.slow
def test_a_real_data_run_leads_to_lifecycle_runs_and_never_to_another_data_run(conn, dagster_instance, enabled):
    from rl_lifecycle.orchestration.launcher import materialize

    add_market(conn, BTC, source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, [BTC.key])
    cursor = current_cursor(dagster_instance).to_json()
    keys = ["BTCUSDT-1h|2024-01-01", "BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]
    runs = materialize(dagster_instance, defs, ["candles", "feature_snapshots", "training_dataset"], keys, in_process=True)
    assert all(r.ok for r in runs), [r.errors for r in runs]
    result, _ = _evaluate(dagster_instance, cursor)
    requests = _requests(result)
    # the run's own candles are carried forward by it: no data run; of the complete windows only the
    # newest is trained (the sensor never looked at this market before: the older ones are history)
    assert {r.job_name for r in requests} == {LIFECYCLE_JOB}
    closes = conn.execute("SELECT max(ts) FROM market_candles").fetchone()[0]
    complete = [k for k in keys if MONTHLY.parse(k.split("|")[1]).end <= to_us(closes) + BTC.interval_us]
    assert [r.partition_key for r in requests] == complete[-1:]
    assert all(r.run_key.startswith(f"lifecycle:{r.partition_key}:") for r in requests)
    assert _requests(_evaluate(dagster_instance, result.cursor)[0]) == []


# -- the schedule ----------------------------------------------------------------------------------------------------
def test_the_schedule_targets_the_latest_closed_window_of_every_market(conn, dagster_instance):
    eth = Market("ETHUSDT", "4h")
    sync_market_partitions(dagster_instance, [BTC.key, eth.key])
    tick = datetime(2024, 4, 1, 0, 15, tzinfo=UTC)
    context = build_schedule_context(instance=dagster_instance, scheduled_execution_time=tick)
    requests = list(latest_window_schedule(context))  # the schedule function, as the daemon calls it
    by_partition = {r.partition_key: r for r in requests}
    for market in (BTC, eth):
        request = by_partition[f"{market.key}|2024-03-01"]  # March just closed; April (open) is not requested
        assert request.run_key == f"{market.key}|2024-03-01"
    assert {r.partition_key.split("|")[1] for r in requests} == {"2024-03-01"}
    assert latest_window_schedule.job_name == DATA_JOB
    # mid-window ticks still target the last closed window, never the open one
    assert MONTHLY.latest_ended(to_us("2024-04-17T12:00")).key == "2024-03-01"
    assert (market_data_job.name, lifecycle_job.name) == (DATA_JOB, LIFECYCLE_JOB)  # the plans name the real jobs
    assert [p.partition for p in plan_latest_window_requests([BTC.key], MONTHLY, to_us("2024-04-17"), "2000-01-01")] == [
        "BTCUSDT-1h|2024-03-01"
    ]
    assert plan_latest_window_requests([BTC.key], MONTHLY, to_us("2000-01-15"), "2000-01-01") == []
