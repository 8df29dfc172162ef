"""Online learning in Dagster: `online_learning_sensor` and `latest_window_schedule` drive the core's
planner (`rl_lifecycle.online.planner`: when a window is complete, which runs it calls for, the
cursor). Here: reading the event log and the database, and turning plans into `RunRequest`s.

**Disabled** (the rollout switch `online_learning` off: stored with `rl-lifecycle switch set`, else
`RL_ONLINE_LEARNING_ENABLED`, default false; `rl_lifecycle.switches`): the sensor skips saying so
(the switch, its value, where it comes from, the command that turns it on) and touches nothing, not even its cursor: turning it on later catches up from where it
stopped. On its very first active evaluation (no cursor) it looks back `FIRST_LOOKBACK_SECONDS`, and
acts only on each market's newest completed window; later ticks only on windows from the newest one
it saw the tick before (the planner's `acting_horizon`), so switching it on does not retrain the whole
history. A window whose dataset already has a checked challenger of the job's spec is not retrained
(`already_trained`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from rl_lifecycle.markets.keys import market_of
from rl_lifecycle.markets.table import list_markets
from rl_lifecycle.online.planner import (
    DATA_JOB,
    EVENTS_PER_TICK,
    FIRST_LOOKBACK_SECONDS,
    CandleEvent,
    DatasetEvent,
    OnlineCursor,
    PlannedRequest,
    newest_candle_closes,
    newest_complete_windows,
    plan_data_requests,
    plan_drift_requests,
    plan_latest_window_requests,
    plan_lifecycle_requests,
    seen_windows,
)
from rl_lifecycle.orchestration.jobs import lifecycle_job, market_data_job
from rl_lifecycle.orchestration.partitions import (
    DRIFT_TAG,
    MARKET_DIMENSION,
    PROMOTION_MARKET_TAG,
    TRIGGER_TAG,
    WINDOW_SCHEME,
    market_partitions,
    missing_market_partitions,
    window_partitions,
)
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.switches import off_reason, settings_in_force, switch_state
from rl_lifecycle.windows import to_us, utc_now_us

CANDLES = "candles"
TRAINING_DATASET = "training_dataset"
SCHEDULE_CRON = {"monthly": "15 0 1 * *", "weekly": "15 0 * * 1", "daily": "15 0 * * *"}  # 00:15 UTC after a window ends
ONLINE_LEARNING = "online_learning"  # the rollout switch
WHEN_ON = "this sensor then requests market_data_job and lifecycle_job for every window that completes"


# -- reading the instance and the database ------------------------------------------------------------
def _carries_forward(run) -> bool:
    if run is None:
        return False
    if run.asset_selection is not None:
        return AssetKey(TRAINING_DATASET) in run.asset_selection
    return run.job_name == DATA_JOB


def _blocking_checks_passed(instance, run_id: str, partition: str) -> bool:
    failed = False
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.asset_key != AssetKey(TRAINING_DATASET) or not evaluation.blocking:
            continue
        # a range run's checks may carry no partition: they cover every window of it
        if evaluation.partition in (None, partition) and not evaluation.passed:
            failed = True
    return not failed


def _latest_storage_id(instance, asset: str, partition: str, observations: bool = False) -> int:
    records_filter = AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition])
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    records = fetch(records_filter, limit=1, ascending=False).records
    return records[0].storage_id if records else 0


def _fetch(instance, asset: str, after: int, observations: bool, after_timestamp: float | None):
    records_filter = AssetRecordsFilter(
        asset_key=AssetKey(asset), after_storage_id=after or None, after_timestamp=after_timestamp,
    )
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    return fetch(records_filter, limit=EVENTS_PER_TICK, ascending=True).records


@dataclass
class OnlineTick:
    """What one evaluation of the sensor found: the runs to request, the next cursor, markets to add."""

    requests: list[PlannedRequest]
    cursor: OnlineCursor
    missing_markets: list[str]


def already_trained_with(conn, registry_of, spec_name: str):
    """`already_trained(partition)` for the planner: the partition's latest dataset has a checked challenger
    trained with `spec_name` (the spec `lifecycle_job` trains by default). `registry_of()` opens MLflow
    only when a lifecycle run is about to be requested."""
    from rl_lifecycle.datasets.service import latest_version
    from rl_lifecycle.markets.keys import parse_partition_key
    from rl_lifecycle.models.checks import checked_challenger_exists
    from rl_lifecycle.models.spec import load_model_spec

    def already_trained(partition: str) -> bool:
        market, window = parse_partition_key(partition, WINDOW_SCHEME)
        dataset = latest_version(conn, market, window)
        if dataset is None:
            return False
        return checked_challenger_exists(registry_of(), market, dataset.dataset_hash, load_model_spec(spec_name).spec_hash)

    return already_trained


def drift_signals(conn, markets, settings) -> list:
    """The markets whose champion's paper decisions drift (`decisions.drift`: the OOD share at or above
    RL_DRIFT_OOD_SHARE for RL_DRIFT_BARS bars)."""
    from rl_lifecycle.decisions.drift import market_drift
    from rl_lifecycle.promotion.audit import current_champion

    signals = []
    for market in markets:
        signal = market_drift(conn, market, current_champion(conn, market), settings.drift_ood_share,
                              settings.drift_bars)
        if signal is not None:
            signals.append(signal)
    return signals


def evaluate(instance, conn, cursor: OnlineCursor | None, now_us: int | None = None,
             already_trained=None, settings=None) -> OnlineTick:
    """Read new events since `cursor` and plan both steps (what the sensor does when enabled); with `settings`
    (the switches in force), also the drift retraining of each drifting market's latest window."""
    now_us = utc_now_us() if now_us is None else now_us
    after_timestamp = None if cursor is not None else now_us / 1e6 - FIRST_LOOKBACK_SECONDS
    seen = None if cursor is None else cursor.windows
    cursor = cursor or OnlineCursor()
    markets = [r.market.key for r in list_markets(conn)]
    closes = newest_candle_closes(conn)
    newest = newest_complete_windows(markets, WINDOW_SCHEME, closes, now_us)
    first_window = window_partitions.get_first_partition_key() or ""

    materialized = _fetch(instance, CANDLES, cursor.candles_materialization, False, after_timestamp)
    observed = _fetch(instance, CANDLES, cursor.candles_observation, True, after_timestamp)
    runs: dict[str, object] = {}

    def run_of(run_id: str):
        if run_id and run_id not in runs:
            runs[run_id] = instance.get_run_by_id(run_id)
        return runs.get(run_id)

    candle_events = [
        CandleEvent(r.storage_id, r.partition_key, _carries_forward(run_of(r.run_id)))
        for r in materialized if r.partition_key
    ] + [CandleEvent(r.storage_id, r.partition_key) for r in observed if r.partition_key]

    def dataset_after(partition: str, storage_id: int) -> bool:
        return _latest_storage_id(instance, TRAINING_DATASET, partition) > storage_id

    def latest_candles_event(partition: str) -> int:
        return max(_latest_storage_id(instance, CANDLES, partition),
                   _latest_storage_id(instance, CANDLES, partition, observations=True))

    data = plan_data_requests(
        candle_events, WINDOW_SCHEME, markets, closes, now_us, first_window, dataset_after, latest_candles_event,
        seen=seen,
    )

    dataset_events = []
    for r in _fetch(instance, TRAINING_DATASET, cursor.training_dataset, False, after_timestamp):
        if not r.partition_key:
            continue
        run = run_of(r.run_id)
        finished = run is None or run.is_finished
        passed = finished and _blocking_checks_passed(instance, r.run_id, r.partition_key)
        drift = run.tags.get(DRIFT_TAG) if run is not None else None
        dataset_events.append(DatasetEvent(r.storage_id, r.partition_key, finished, passed, drift_reason=drift))
    lifecycle, dataset_cursor = plan_lifecycle_requests(
        dataset_events, WINDOW_SCHEME, markets, closes, now_us, cursor.training_dataset,
        seen=seen, already_trained=already_trained,
    )

    new_cursor = OnlineCursor(
        candles_materialization=max([cursor.candles_materialization, *(r.storage_id for r in materialized)]),
        candles_observation=max([cursor.candles_observation, *(r.storage_id for r in observed)]),
        training_dataset=dataset_cursor,
        windows=seen_windows(cursor.windows, newest),
    )
    drift = [] if settings is None else plan_drift_requests(drift_signals(conn, markets, settings), WINDOW_SCHEME,
                                                            first_window)
    requests = data + lifecycle + [d for d in drift if d.partition not in {r.partition for r in data}]
    missing = missing_market_partitions(instance, sorted({market_of(p.partition) for p in requests}))
    return OnlineTick(requests, new_cursor, missing)


def current_cursor(instance) -> OnlineCursor:
    """A cursor at the newest event: what has happened so far counts as seen."""
    return OnlineCursor.at(instance.event_log_storage.get_maximum_record_id() or 0)


# -- the sensor ----------------------------------------------------------------------------------------
@sensor(
    name="online_learning_sensor",
    jobs=[market_data_job, lifecycle_job],  # the daemon refuses run requests of a sensor without targets
    minimum_interval_seconds=30,
    # running by default: it reads the rollout switch on every tick, so a stored change takes effect
    # without a click or a restart, and "online learning is off" shows in each tick's status
    default_status=DefaultSensorStatus.RUNNING,
    description="Gated by the rollout switch online_learning (default off): `rl-lifecycle switch set "
    "online_learning true` turns it on for the daemon and the CLI alike (`rl-lifecycle switch list` shows it; "
    "RL_ONLINE_LEARNING_ENABLED is the value while nothing is stored). Running here means only that it ticks: "
    "while the switch is off every tick skips, naming the switch, its value and where it comes from. When on: "
    "when a market's window completes, market_data_job for new candles, then lifecycle_job (challenger -> fold "
    "report -> promotion decision) for each training dataset that passed its checks; and when a market's champion "
    "drifts (its paper decisions held for OOD at or above RL_DRIFT_OOD_SHARE for RL_DRIFT_BARS bars), its latest "
    "window is retrained before it closes (tags rl_lifecycle/trigger=drift, rl_lifecycle/drift_reason). Idempotent run keys; "
    "cursor = last event-log storage ids.",
)
def online_learning_sensor(context: SensorEvaluationContext, database: PostgresResource, mlflow: MlflowResource):
    from functools import cache

    from rl_lifecycle.orchestration.assets.models import ChallengerModelConfig

    with database.connect() as conn:
        switch = switch_state(conn, ONLINE_LEARNING)
        if not switch.enabled:
            return SkipReason(off_reason(switch, "online learning is off", WHEN_ON))
        already_trained = already_trained_with(conn, cache(mlflow.registry), ChallengerModelConfig().spec)
        result = evaluate(context.instance, conn, OnlineCursor.from_json(context.cursor), already_trained=already_trained,
                          settings=settings_in_force(conn))
    for planned in result.requests:
        context.log.info(f"{planned.job_name} {planned.partition}: {planned.reason}")
    run_requests = [
        RunRequest(
            job_name=p.job_name, partition_key=p.partition, run_key=p.run_key,
            tags={**({PROMOTION_MARKET_TAG: p.market} if p.market else {}),
                  TRIGGER_TAG: "drift" if p.drift_reason else "online_learning",
                  **({DRIFT_TAG: p.drift_reason} if p.drift_reason else {})},
        )
        for p in result.requests
    ]
    return SensorResult(
        run_requests=run_requests,
        cursor=result.cursor.to_json(),
        dynamic_partitions_requests=[market_partitions.build_add_request(result.missing_markets)]
        if result.missing_markets else None,
        skip_reason=None if run_requests else "no completed window with new candles or a new training dataset, "
        "and no drifting market",
    )


@schedule(
    name="latest_window_schedule",
    cron_schedule=SCHEDULE_CRON[WINDOW_SCHEME.cadence],
    execution_timezone="UTC",
    job_name=DATA_JOB,
    # stopped until someone turns it on: UI -> Automation -> latest_window_schedule -> toggle
    # (or `dagster schedule start latest_window_schedule -w workspace.yaml`)
    default_status=DefaultScheduleStatus.STOPPED,
    description="After each window ends: market_data_job for the latest CLOSED window of every market (one run "
    "per market, run key = partition key); with online learning on, the sensor then trains and decides on it.",
)
def latest_window_schedule(context: ScheduleEvaluationContext):
    at = context.scheduled_execution_time
    at_us = to_us(at) if at is not None else utc_now_us()
    markets = context.instance.get_dynamic_partitions(MARKET_DIMENSION)
    planned = plan_latest_window_requests(markets, WINDOW_SCHEME, at_us, window_partitions.get_first_partition_key() or "")
    if not planned:
        return SkipReason("no markets registered (or the latest closed window is before RL_WINDOW_START)")
    return [
        RunRequest(partition_key=p.partition, run_key=p.run_key, tags={TRIGGER_TAG: "latest_window_schedule"})
        for p in planned
    ]

