"""Online learning: when a market's window has completed, train, evaluate and decide on it.

Two steps, both from one plain `@sensor` with a JSON cursor of event-log storage ids:

(a) **data**: a new `candles` materialization or observation (the inbox sensor records one per
    partition a dropped file touches) for a *completed* window requests `market_data_job`
    (candles -> feature_snapshots -> training_dataset) for that partition.
(b) **lifecycle**: a new successful `training_dataset` materialization of a completed window whose
    blocking checks passed requests `lifecycle_job` (challenger_model -> fold_report ->
    promotion_decision) for that partition.

**When is a window complete?** When the market's data has reached its end: the newest stored candle
closes (open time + interval) at or after the window's end, and the end is not in the future by the
wall clock. So a window completes when its last bar arrives, not merely when the calendar month
ends; for a session calendar whose window ends on a closed day (a month ending on a weekend for
XNYS), the window completes when the first bar after it arrives. A still-open window (the current
partition, `end_offset=1`) is never requested.

**Idempotency.** Run keys are derived from the event that triggered them
(`market_data:<partition>:<storage id>`, `lifecycle:<partition>:<storage id>`), so re-evaluating with
an old cursor (a restart, a failed tick) requests the same run keys and Dagster launches each once:
a restart never trains twice for one window. One `training_dataset` materialization trains at most
once. Candle events from runs that carry the data forward themselves (a run that also materializes
`training_dataset`: this sensor's own data runs, the schedule, backfills, `make run`) trigger
nothing in step (a), so the sensor never feeds itself. A `training_dataset` materialization whose
run is still going is left for a later tick (the cursor stops before it): its checks are not known yet.

**Disabled** (`RL_ONLINE_LEARNING_ENABLED` unset or false): the sensor skips with that reason, visible
in the UI, and touches nothing, not even its cursor: turning it on later catches up from where it
stopped. On its very first active evaluation (no cursor) it looks back `FIRST_LOOKBACK_SECONDS`, so
switching it on does not retrain the whole history.

The decisions are pure functions over plain records (`plan_data_requests`, `plan_lifecycle_requests`);
the sensor only reads the instance and the database and turns plans into `RunRequest`s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from dagster import (
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

from rl_lifecycle.assets.promotion import PROMOTION_MARKET_TAG
from rl_lifecycle.jobs import lifecycle_job, market_data_job
from rl_lifecycle.markets import Market
from rl_lifecycle.partitions import MARKET_DIMENSION, WINDOW_SCHEME, market_partitions, window_partitions
from rl_lifecycle.resources import PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import Window, WindowScheme

DATA_JOB = market_data_job.name
LIFECYCLE_JOB = lifecycle_job.name
CANDLES = "candles"
TRAINING_DATASET = "training_dataset"
TRIGGER_TAG = "rl_lifecycle/trigger"
EVENTS_PER_TICK = 200  # per event stream; the cursor pages through the rest on the next ticks
FIRST_LOOKBACK_SECONDS = 24 * 3600
DISABLED_REASON = (
    "online learning is off: set RL_ONLINE_LEARNING_ENABLED=true where `make dev` runs (the daemon) and restart it; "
    "this sensor then requests market_data_job and lifecycle_job for every window that completes"
)


# -- cursor -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnlineCursor:
    """The last event-log storage id handled per stream (0: none yet)."""

    candles_materialization: int = 0
    candles_observation: int = 0
    training_dataset: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> OnlineCursor | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(**{k: int(data.get(k, 0)) for k in ("candles_materialization", "candles_observation", "training_dataset")})

    @classmethod
    def at(cls, storage_id: int) -> OnlineCursor:
        """Everything up to `storage_id` counts as seen."""
        return cls(storage_id, storage_id, storage_id)


# -- plain records the planner works on -------------------------------------------------------------
@dataclass(frozen=True)
class CandleEvent:
    storage_id: int
    partition: str  # "MARKET|WINDOW"
    carried_forward: bool = False  # its run also materializes training_dataset: nothing to request for it


@dataclass(frozen=True)
class DatasetEvent:
    storage_id: int
    partition: str
    run_finished: bool = True
    blocking_checks_passed: bool = True


@dataclass(frozen=True)
class PlannedRequest:
    job_name: str
    partition: str
    run_key: str
    reason: str
    tags: dict[str, str] = field(default_factory=dict)


def split_partition(partition: str, scheme: WindowScheme) -> tuple[Market, Window]:
    market_key, _, window_key = partition.partition("|")
    return Market.parse(market_key), scheme.parse(window_key)


def window_complete(window: Window, newest_close_us: int | None, now_us: int) -> bool:
    """The market's data has reached the window's end, and the end is not in the future."""
    return newest_close_us is not None and window.end <= newest_close_us and window.end <= now_us


def latest_complete_window(scheme: WindowScheme, newest_close_us: int | None, now_us: int) -> Window | None:
    if newest_close_us is None:
        return None
    reached = min(newest_close_us, now_us)
    window = scheme.containing(reached - 1)
    return window if window.end <= reached else scheme.previous(window)


def plan_data_requests(
    events: Iterable[CandleEvent],
    scheme: WindowScheme,
    markets: Iterable[str],
    newest_close_us: Mapping[str, int | None],
    now_us: int,
    first_window: str,
    dataset_after: Callable[[str, int], bool],
    latest_candles_event: Callable[[str], int],
) -> list[PlannedRequest]:
    """Step (a). For each new candle event of a registered market:
    - its window is complete and its run does not carry the data forward -> request the data job for it
      (run key from the newest such event of the partition);
    - its window is still open -> the window before it may have just completed (its last bar closed
      before the boundary, or arrived with later bars): request it once (`:closed`) if it ever
      received candles and no training dataset newer than its newest candles exists.
    `dataset_after(partition, storage_id)` says whether a training_dataset materialization newer
    than `storage_id` exists for the partition (then the event is already carried forward)."""
    registered = set(markets)
    direct: dict[str, int] = {}
    edges: set[str] = set()
    for event in events:
        market, window = split_partition(event.partition, scheme)
        if market.key not in registered:
            continue
        newest = newest_close_us.get(market.key)
        if window_complete(window, newest, now_us):
            if not event.carried_forward:
                direct[event.partition] = max(direct.get(event.partition, 0), event.storage_id)
        else:
            previous = latest_complete_window(scheme, newest, now_us)
            if previous is not None and previous.start < window.start and previous.key >= first_window:
                edges.add(f"{market.key}|{previous.key}")
    requests = []
    for partition, storage_id in sorted(direct.items()):
        if not dataset_after(partition, storage_id):
            requests.append(PlannedRequest(
                DATA_JOB, partition, f"market_data:{partition}:{storage_id}",
                f"new candles (event {storage_id}) for completed window {partition}",
            ))
    for partition in sorted(edges - set(direct)):
        latest = latest_candles_event(partition)  # 0: the window never received candles, nothing to carry
        if latest and not dataset_after(partition, latest):
            requests.append(PlannedRequest(
                DATA_JOB, partition, f"market_data:{partition}:closed",
                f"window {partition} completed: the market's data has reached its end",
            ))
    return requests


def plan_lifecycle_requests(
    events: Sequence[DatasetEvent],
    scheme: WindowScheme,
    markets: Iterable[str],
    newest_close_us: Mapping[str, int | None],
    now_us: int,
    cursor_id: int,
) -> tuple[list[PlannedRequest], int]:
    """Step (b): (requests, new cursor id). Events in storage order; the cursor stops before the first
    one whose run is still going (its checks are not known yet). Only the newest handled event of a
    partition counts; a failed blocking check or an open window requests nothing."""
    registered = set(markets)
    newest_per_partition: dict[str, DatasetEvent] = {}
    new_cursor = cursor_id
    for event in events:
        if not event.run_finished:
            break
        new_cursor = event.storage_id
        newest_per_partition[event.partition] = event
    requests = []
    for partition, event in sorted(newest_per_partition.items()):
        market, window = split_partition(partition, scheme)
        if market.key not in registered or not event.blocking_checks_passed:
            continue
        if not window_complete(window, newest_close_us.get(market.key), now_us):
            continue
        requests.append(PlannedRequest(
            LIFECYCLE_JOB, partition, f"lifecycle:{partition}:{event.storage_id}",
            f"training dataset (event {event.storage_id}) of completed window {partition} passed its checks",
            tags={PROMOTION_MARKET_TAG: market.key},
        ))
    return requests, new_cursor


# -- reading the instance and the database ------------------------------------------------------------
def newest_candle_closes(conn) -> dict[str, int]:
    """Market key -> close time (epoch us) of its newest stored candle."""
    from rl_lifecycle.windows import to_us

    out = {}
    for pair, interval, newest in conn.execute(
        "SELECT pair, interval, max(ts) FROM market_candles GROUP BY pair, interval"
    ).fetchall():
        market = Market(pair, interval)
        out[market.key] = to_us(newest) + market.interval_us
    return out


def _carries_forward(run) -> bool:
    from dagster import AssetKey

    if run is None:
        return False
    if run.asset_selection is not None:
        return AssetKey(TRAINING_DATASET) in run.asset_selection
    return run.job_name == DATA_JOB


def _blocking_checks_passed(instance, run_id: str, partition: str) -> bool:
    from dagster import AssetKey, DagsterEventType

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
    from dagster import AssetKey, AssetRecordsFilter

    records_filter = AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition])
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    records = fetch(records_filter, limit=1, ascending=False).records
    return records[0].storage_id if records else 0


def _fetch(instance, asset: str, after: int, observations: bool, after_timestamp: float | None):
    from dagster import AssetKey, AssetRecordsFilter

    records_filter = AssetRecordsFilter(
        asset_key=AssetKey(asset), after_storage_id=after or None, after_timestamp=after_timestamp,
    )
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    return fetch(records_filter, limit=EVENTS_PER_TICK, ascending=True).records


@dataclass
class Evaluation:
    requests: list[PlannedRequest]
    cursor: OnlineCursor
    missing_markets: list[str]


def evaluate(instance, conn, cursor: OnlineCursor | None, now: float | None = None) -> Evaluation:
    """Read new events since `cursor` and plan both steps (what the sensor does when enabled)."""
    from rl_lifecycle.registry import list_markets

    now = time.time() if now is None else now
    now_us = int(now * 1_000_000)
    after_timestamp = None if cursor is not None else now - FIRST_LOOKBACK_SECONDS
    cursor = cursor or OnlineCursor()
    markets = [r.market.key for r in list_markets(conn)]
    closes = newest_candle_closes(conn)
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
    )

    dataset_events = []
    for r in _fetch(instance, TRAINING_DATASET, cursor.training_dataset, False, after_timestamp):
        if not r.partition_key:
            continue
        run = run_of(r.run_id)
        finished = run is None or run.is_finished
        passed = finished and _blocking_checks_passed(instance, r.run_id, r.partition_key)
        dataset_events.append(DatasetEvent(r.storage_id, r.partition_key, finished, passed))
    lifecycle, dataset_cursor = plan_lifecycle_requests(
        dataset_events, WINDOW_SCHEME, markets, closes, now_us, cursor.training_dataset,
    )

    new_cursor = OnlineCursor(
        candles_materialization=max([cursor.candles_materialization, *(r.storage_id for r in materialized)]),
        candles_observation=max([cursor.candles_observation, *(r.storage_id for r in observed)]),
        training_dataset=dataset_cursor,
    )
    requests = data + lifecycle
    existing = set(instance.get_dynamic_partitions(MARKET_DIMENSION))
    missing = sorted({p.partition.split("|")[0] for p in requests} - existing)
    return Evaluation(requests, new_cursor, missing)


def current_cursor(instance) -> OnlineCursor:
    """A cursor at the newest event: what has happened so far counts as seen."""
    return OnlineCursor.at(instance.event_log_storage.get_maximum_record_id() or 0)


# -- the sensor ----------------------------------------------------------------------------------------
@sensor(
    name="online_learning_sensor",
    jobs=[market_data_job, lifecycle_job],  # the daemon refuses run requests of a sensor without targets
    minimum_interval_seconds=30,
    # running by default so that "online learning is off" shows in the UI; the env var switches it
    default_status=DefaultSensorStatus.RUNNING,
    description="When a market's window completes (RL_ONLINE_LEARNING_ENABLED=true): market_data_job for "
    "new candles, then lifecycle_job (challenger -> fold report -> promotion decision) for each training "
    "dataset that passed its checks. Idempotent run keys; cursor = last event-log storage ids.",
)
def online_learning_sensor(context: SensorEvaluationContext, database: PostgresResource):
    if not load_settings().online_learning_enabled:
        return SkipReason(DISABLED_REASON)
    with database.connect() as conn:
        result = evaluate(context.instance, conn, OnlineCursor.from_json(context.cursor))
    for planned in result.requests:
        context.log.info(f"{planned.job_name} {planned.partition}: {planned.reason}")
    run_requests = [
        RunRequest(
            job_name=p.job_name, partition_key=p.partition, run_key=p.run_key,
            tags={**p.tags, TRIGGER_TAG: "online_learning"},
        )
        for p in result.requests
    ]
    return SensorResult(
        run_requests=run_requests,
        cursor=result.cursor.to_json(),
        dynamic_partitions_requests=[market_partitions.build_add_request(result.missing_markets)]
        if result.missing_markets else None,
        skip_reason=None if run_requests else "no completed window with new candles or a new training dataset",
    )


# -- the schedule: the latest closed window of every market -----------------------------------------------
SCHEDULE_CRON = {"monthly": "15 0 1 * *", "weekly": "15 0 * * 1", "daily": "15 0 * * *"}  # 00:15 UTC after a window ends


def latest_closed_window(scheme: WindowScheme, at_us: int) -> Window:
    """The newest window that has ended at `at_us` (not the current, still-open one)."""
    return scheme.previous(scheme.containing(at_us))


def plan_latest_window_requests(
    market_keys: Iterable[str], scheme: WindowScheme, at_us: int, first_window: str
) -> list[PlannedRequest]:
    window = latest_closed_window(scheme, at_us)
    if window.key < first_window:
        return []
    return [
        PlannedRequest(DATA_JOB, f"{m}|{window.key}", f"{m}|{window.key}", f"latest closed window {window.key} of {m}")
        for m in sorted(market_keys)
    ]


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
    at_us = int(at.timestamp() * 1_000_000) if at is not None else int(time.time() * 1_000_000)
    markets = context.instance.get_dynamic_partitions(MARKET_DIMENSION)
    planned = plan_latest_window_requests(markets, WINDOW_SCHEME, at_us, window_partitions.get_first_partition_key() or "")
    if not planned:
        return SkipReason("no markets registered (or the latest closed window is before RL_WINDOW_START)")
    return [
        RunRequest(partition_key=p.partition, run_key=p.run_key, tags={TRIGGER_TAG: "latest_window_schedule"})
        for p in planned
    ]

