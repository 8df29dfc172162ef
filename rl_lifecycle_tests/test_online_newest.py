"""Online learning acts on what is new, and `challenger` names the newest window's model (issue 22, point 8).

The planner's pure functions first (fast); then the alias rule and the sensor's "already trained" rule
with a real MLflow, a real PostgreSQL and a real Dagster instance.
"""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from dagster import AssetMaterialization, build_sensor_context

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.tracking import CHALLENGER, open_registry, registered_model_name
from rl_lifecycle.online.planner import (
    DATA_JOB,
    LIFECYCLE_JOB,
    CandleEvent,
    DatasetEvent,
    OnlineCursor,
    plan_data_requests,
    plan_lifecycle_requests,
)
from rl_lifecycle.windows import WindowScheme, to_us

MONTHLY = WindowScheme("monthly")
NOW_US = to_us("2030-01-01")
BTC, ETH = "BTCUSDT-1h", "ETHUSDT-1h"
MONTHS = ["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01", "2024-06-01"]
# both markets' data reaches the end of June (as after `make run`)
CLOSES = {BTC: to_us("2024-07-01"), ETH: to_us("2024-07-01")}


def _datasets(markets=(BTC, ETH), months=MONTHS, first_id: int = 100) -> list[DatasetEvent]:
    """A training_dataset materialization per market and window, as `make run` leaves them."""
    events = []
    for market in markets:
        for month in months:
            events.append(DatasetEvent(first_id + len(events), f"{market}|{month}"))
    return events


# -- the planner (pure) -----------------------------------------------------------------------------------
def test_the_first_tick_trains_only_each_markets_newest_completed_window():
    requests, cursor = plan_lifecycle_requests(_datasets(), MONTHLY, [BTC, ETH], CLOSES, NOW_US, cursor_id=0)
    assert [(r.job_name, r.partition) for r in requests] == [
        (LIFECYCLE_JOB, f"{BTC}|2024-06-01"), (LIFECYCLE_JOB, f"{ETH}|2024-06-01"),
    ]
    assert cursor == 111  # every event was read: the older windows are history, not left for later


def test_a_window_whose_dataset_already_has_a_checked_challenger_is_not_retrained():
    trained = {f"{BTC}|2024-06-01", f"{ETH}|2024-06-01"}  # `make run` trained and checked June
    requests, _ = plan_lifecycle_requests(_datasets(), MONTHLY, [BTC, ETH], CLOSES, NOW_US, cursor_id=0,
                                          already_trained=trained.__contains__)
    assert requests == []  # and no older window instead


def test_later_ticks_act_only_on_windows_completed_since_the_last_look():
    seen = {BTC: "2024-06-01", ETH: "2024-06-01"}  # the last tick saw June as the newest
    closes = {BTC: to_us("2024-08-01"), ETH: to_us("2024-07-01")}  # July completed for BTC only
    # a backfill re-materialized BTC's March..May datasets, and the sensor's data run built BTC's July
    events = _datasets([BTC], ["2024-03-01", "2024-04-01", "2024-05-01"]) + [
        DatasetEvent(200, f"{BTC}|2024-07-01"), DatasetEvent(201, f"{ETH}|2024-04-01")]
    requests, _ = plan_lifecycle_requests(events, MONTHLY, [BTC, ETH], closes, NOW_US, cursor_id=0, seen=seen)
    assert [r.partition for r in requests] == [f"{BTC}|2024-07-01"]
    # a dataset of the window it saw newest last time still counts (it may have completed just then)
    again, _ = plan_lifecycle_requests([DatasetEvent(300, f"{ETH}|2024-06-01")], MONTHLY, [BTC, ETH], closes,
                                       NOW_US, cursor_id=0, seen=seen)
    assert [r.partition for r in again] == [f"{ETH}|2024-06-01"]


def test_new_candles_of_old_windows_request_no_data_run():
    candles = [CandleEvent(10 + i, f"{BTC}|{month}") for i, month in enumerate(MONTHS)]

    def plan(seen):
        return plan_data_requests(candles, MONTHLY, [BTC], CLOSES, NOW_US, "2000-01-01",
                                  dataset_after=lambda partition, storage_id: False,
                                  latest_candles_event=lambda partition: 0, seen=seen)

    # never looked at the market: only its newest completed window
    assert [(r.job_name, r.partition) for r in plan(None)] == [(DATA_JOB, f"{BTC}|2024-06-01")]
    # the last look saw April newest: April (just completed then) and what completed since
    assert [r.partition for r in plan({BTC: "2024-04-01"})] == [f"{BTC}|{m}" for m in MONTHS[3:]]


def test_the_cursor_keeps_the_newest_window_seen_per_market():
    cursor = OnlineCursor(5, 7, 3, windows={BTC: "2024-06-01"})
    assert OnlineCursor.from_json(cursor.to_json()) == cursor
    old = '{"candles_materialization": 5, "candles_observation": 7, "training_dataset": 3}'  # before `windows`
    assert OnlineCursor.from_json(old).windows == {}


# -- the challenger alias, with a real MLflow -------------------------------------------------------------
@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def market() -> Market:
    return Market(f"N{uuid.uuid4().hex[:12].upper()}", "1h")


def _register(registry, market: Market, window: str, dataset_hash: str = "d" * 64, spec_hash: str = "s" * 64) -> int:
    """A version as `train_challenger` registers it (its partition among the lineage tags)."""
    run_id = registry.start_run(market, f"{market.key}|{window}", {})
    registry.end_run(run_id)
    tags = {"market": market.key, "partition_key": f"{market.key}|{window}", "dataset_hash": dataset_hash,
            "model_spec_hash": spec_hash}
    return registry.register(market, run_id, "policy", tags).version


def _checks_pass(conn, registry, market: Market, version: int) -> None:
    from rl_lifecycle.models.checks import MODEL_CHECKS, ModelCheck, record_check

    for name in MODEL_CHECKS:
        record_check(conn, registry, market, ModelCheck(True, "ok", [], version), name)


def _challenger(registry, market: Market) -> int | None:
    aliases = registry.client.get_registered_model(registered_model_name(market)).aliases or {}
    return int(aliases[CHALLENGER]) if CHALLENGER in aliases else None


def test_a_model_of_an_older_window_finishing_later_does_not_take_the_alias(conn, registry, market):
    june = _register(registry, market, "2024-06-01")
    january = _register(registry, market, "2024-01-01")  # trained later, on older data (the burst of issue 22)
    assert _challenger(registry, market) is None  # neither checked yet
    _checks_pass(conn, registry, market, june)
    assert _challenger(registry, market) == june
    _checks_pass(conn, registry, market, january)  # finishes last
    assert _challenger(registry, market) == june

    # the other order: the older window first, then the newer one takes the alias
    july = _register(registry, market, "2024-07-01")
    _checks_pass(conn, registry, market, july)
    assert _challenger(registry, market) == july
    # a newer version of the same window wins that window
    again = _register(registry, market, "2024-07-01")
    _checks_pass(conn, registry, market, again)
    assert _challenger(registry, market) == again

    # its checks fail when re-run: the alias goes back to the newest checked model
    from rl_lifecycle.models.checks import ModelCheck, record_check

    record_check(conn, registry, market, ModelCheck(False, "replay differs", [], again), "model_reproducible")
    assert _challenger(registry, market) == july


def test_checks_of_two_windows_finishing_together_leave_the_newest_window_the_challenger(
        database_url, conn, registry, market):
    january, june = _register(registry, market, "2024-01-01"), _register(registry, market, "2024-06-01")
    barrier = threading.Barrier(2)
    errors = []

    def finish(version: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as connection:
                barrier.wait()
                _checks_pass(connection, registry, market, version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(v,)) for v in (june, january)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert _challenger(registry, market) == june


# -- the sensor: a window with a checked challenger of the same dataset and spec is not retrained ---------
@pytest.fixture
def enabled(monkeypatch):
    monkeypatch.setenv("RL_ONLINE_LEARNING_ENABLED", "true")


def test_the_sensor_does_not_retrain_a_window_that_already_has_a_checked_challenger(
        conn, registry, dagster_instance, enabled, tmp_path):
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import latest_version, spec_ending_at
    from rl_lifecycle.features.spec import load_feature_set
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.models.spec import load_model_spec
    from rl_lifecycle.orchestration.automation.online import current_cursor, online_learning_sensor
    from rl_lifecycle.orchestration.partitions import sync_market_partitions
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    market = Market(f"S{uuid.uuid4().hex[:8].upper()}", "1h")
    add_market(conn, market, source="import")
    ingest_synthetic(conn, market, to_us("2023-12-01"), to_us("2024-04-01"), seed=7)
    sync_market_partitions(dagster_instance, [market.key])
    window = MONTHLY.parse("2024-03-01")
    build_dataset(conn, spec_ending_at(market, window, MONTHLY, "ta_v2", 3), tmp_path / "datasets",
                  load_feature_set("ta_v2"))
    dataset = latest_version(conn, market, window)
    partition = f"{market.key}|2024-03-01"

    def tick() -> list[str]:
        cursor = current_cursor(dagster_instance).to_json()
        dagster_instance.report_runless_asset_event(AssetMaterialization("training_dataset", partition=partition))
        database = PostgresResource()
        with build_sensor_context(instance=dagster_instance, cursor=cursor, resources={
                "database": database, "mlflow": MlflowResource(database=database)}) as context:
            result = online_learning_sensor(context)
        return [r.partition_key for r in result.run_requests or []]

    assert tick() == [partition]  # nothing trained on it yet
    # another spec's checked model of this dataset is no reason to skip the job's spec
    other_spec = _register(registry, market, "2024-03-01", dataset.dataset_hash, "o" * 64)
    _checks_pass(conn, registry, market, other_spec)
    assert tick() == [partition]
    # trained on this dataset with the job's spec (ppo_small), but its checks never ran: train it
    version = _register(registry, market, "2024-03-01", dataset.dataset_hash, load_model_spec("ppo_small").spec_hash)
    assert tick() == [partition]
    _checks_pass(conn, registry, market, version)
    assert tick() == []  # checked: the same dataset and spec would train the same model
