"""Alert sensors: every failed asset check evaluation and every failed run becomes one alert.

Open-source Dagster has no asset-check alerting, so (see `shared/reference/dagster-notes.md`, "Alerts", beside this repository):

- `check_failure_alert_sensor`, a run status sensor on SUCCESS over all code locations: a successful
  run can still carry failed checks (non-blocking ones, or WARN severity); each becomes a
  `check_failed` alert. A passed evaluation resolves the open alerts of the same check and partition.
- `run_failure_alert_sensor`, a run failure sensor over all code locations: the run's failed check
  evaluations become `check_failed` alerts and the run a `run_failed` alert, except when the run
  failed only because blocking checks failed (every failed step raised `DagsterAssetCheckFailedError`):
  then the check alerts already say it, and a broken check sends one alert, not two.
- `alert_delivery_sensor`, a plain sensor: retries webhook POSTs that failed, with backoff, on later
  ticks (run status sensors are called only when a run finishes).
- `alert_sweep_sensor`, a plain sensor: the safety net. A run status sensor's cursor moves past a run
  even when its tick failed (PostgreSQL down as the run finished), so every few minutes this one
  processes again every run that finished since its own cursor, which only moves when a tick
  succeeds. Alerts already recorded are not recorded or sent again.

All four are on by default (`DefaultSensorStatus.RUNNING`): they run whenever the daemon runs. The
run status sensors keep Dagster's own cursor; re-evaluating a run (an old cursor, a restart) inserts
nothing new, because alerts are keyed by `dedupe_key` (see `rl_lifecycle.ops.alerts`). Nothing here
raises for a webhook problem; a database error fails the tick, and Dagster retries it from its cursor.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import psycopg
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    RunStatusSensorContext,
    RunStatusSensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from rl_lifecycle.ops.alerts import (
    Alert,
    AlertConfig,
    check_alert,
    deliver_safely,
    load_alert_config,
    record_alert,
    resolve_check_alerts,
    resolve_run_alerts,
    run_alert,
)
from rl_lifecycle.orchestration.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    DAGSTER_EMPTY_RESULT,
    copy,
)
from rl_lifecycle.orchestration.launcher import root_cause
from rl_lifecycle.orchestration.partitions import PAPER_MARKET_TAG, PARTITION_TAG
from rl_lifecycle.orchestration.resources import PostgresResource

CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"

logger = logging.getLogger("rl_lifecycle.ops.alerts")


# -- reading a run ----------------------------------------------------------------------------------
def run_partition(run: DagsterRun) -> str | None:
    """The run's partition (or range); for unpartitioned paper decisions, their market."""
    tags = run.tags or {}
    if tags.get(PARTITION_TAG):
        return tags[PARTITION_TAG]
    if tags.get(PAPER_MARKET_TAG):
        return tags[PAPER_MARKET_TAG]
    if tags.get(ASSET_PARTITION_RANGE_START_TAG) and tags.get(ASSET_PARTITION_RANGE_END_TAG):
        return f"{tags[ASSET_PARTITION_RANGE_START_TAG]}...{tags[ASSET_PARTITION_RANGE_END_TAG]}"
    return None


def _records(instance: DagsterInstance, run_id: str, of_type) -> list:
    records, cursor = [], None
    while True:
        page = instance.get_records_for_run(run_id, cursor=cursor, of_type=of_type, limit=1000)
        records += page.records
        if not page.has_more:
            return records
        cursor = page.cursor


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def check_evaluations(instance: DagsterInstance, run: DagsterRun) -> list[tuple[object, datetime]]:
    """The run's AssetCheckEvaluation data with when each was recorded, in event order."""
    return [(r.event_log_entry.dagster_event.asset_check_evaluation_data, _utc(r.event_log_entry.timestamp))
            for r in _records(instance, run.run_id, DagsterEventType.ASSET_CHECK_EVALUATION)
            if r.event_log_entry.dagster_event is not None]


def run_times(instance: DagsterInstance, run: DagsterRun) -> tuple[datetime | None, datetime | None]:
    """(start, end) of the run."""
    record = instance.get_run_record_by_id(run.run_id)
    return (None, None) if record is None else (_utc(record.start_time), _utc(record.end_time))


def _check_summary(evaluation) -> str:
    severity = getattr(evaluation.severity, "value", evaluation.severity)
    blocking = " (blocking)" if evaluation.blocking else ""
    text = evaluation.description or f"{evaluation.check_name} failed"
    return f"{severity}{blocking}: {text}"


def check_failure_alerts(instance: DagsterInstance, run: DagsterRun, config: AlertConfig) -> tuple[list[Alert], list, list]:
    """(alerts for the failed evaluations, the failed evaluations, the passed evaluations) of the run;
    evaluations as (evaluation, when) pairs."""
    failed, passed = [], []
    for evaluation, at in check_evaluations(instance, run):
        (passed if evaluation.passed else failed).append((evaluation, at))
    alerts = [
        check_alert(run.run_id, evaluation.asset_key.to_user_string(), evaluation.check_name,
                    evaluation.partition or run_partition(run), _check_summary(evaluation),
                    severity=str(getattr(evaluation.severity, "value", evaluation.severity)),
                    job_name=run.job_name, ui_url=config.ui_url, failed_at=at)
        for evaluation, at in failed
    ]
    return alerts, failed, passed


def _step_failures(instance: DagsterInstance, run: DagsterRun) -> list[tuple[str | None, str | None, str]]:
    """(step key, error class, first line of the message) of each failed step."""
    failures = []
    for record in _records(instance, run.run_id, DagsterEventType.STEP_FAILURE):
        event = record.event_log_entry.dagster_event
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        root = root_cause(error) if error is not None else None
        message = (root.message if root else record.event_log_entry.message or "").strip().splitlines()
        failures.append((event.step_key if event else None, error.cls_name if error else None,
                         message[0] if message else "step failed"))
    return failures


def run_failure_alert(instance: DagsterInstance, run: DagsterRun, config: AlertConfig, failure_message: str | None,
                      failed_blocking_checks: bool) -> Alert | None:
    """The run's `run_failed` alert, or None when failed blocking checks alone explain the failure."""
    steps = _step_failures(instance, run)
    only_checks = failed_blocking_checks and all(cls == CHECK_FAILED_ERROR for _, cls, _ in steps)
    if only_checks:
        return None
    if steps:
        summary = "; ".join(f"step {key or '?'} failed: {message}" for key, _, message in steps[:5])
        if len(steps) > 5:
            summary += f"; and {len(steps) - 5} more failed steps"
    else:
        summary = failure_message or "the run failed before any step failed (see the run's logs)"
    assets = sorted(k.to_user_string() for k in (run.asset_selection or ()))
    return run_alert(run.run_id, run.job_name, run_partition(run), summary, assets=assets, ui_url=config.ui_url,
                     failed_at=run_times(instance, run)[1])


# -- the work of one finished run -------------------------------------------------------------------
def process_finished_run(instance: DagsterInstance, run: DagsterRun, conn, *, failed: bool,
                         failure_message: str | None = None, config: AlertConfig | None = None) -> list[Alert]:
    """Record the run's alerts (new ones only), resolve what it fixed, then try to deliver; returns new alerts."""
    config = config or load_alert_config()
    alerts, failed_checks, passed = check_failure_alerts(instance, run, config)
    if failed:
        blocking = any(e.blocking for e, _ in failed_checks)
        extra = run_failure_alert(instance, run, config, failure_message, blocking)
        if extra is not None:
            alerts.append(extra)
    new = [stored for stored in (record_alert(conn, a) for a in alerts) if stored is not None]
    for evaluation, at in passed:
        resolve_check_alerts(conn, evaluation.asset_key.to_user_string(), evaluation.check_name,
                             evaluation.partition or run_partition(run), run.run_id, passed_at=at)
    if not failed:  # resolves runs that had failed before this one started
        resolve_run_alerts(conn, run.job_name, run_partition(run), run.run_id, passed_at=run_times(instance, run)[0])
    if new:
        deliver_safely(conn, config, keys=[a.dedupe_key for a in new])
    return new


# -- sensors ----------------------------------------------------------------------------------------
def _log_new(context, source: str, new: list[Alert]) -> None:
    if new:
        context.log.info(f"{len(new)} alert(s) for {source}: " + ", ".join(a.dedupe_key for a in new))


class _SaysWhenIdle(RunStatusSensorDefinition):
    """A run status sensor whose idle ticks say what it waits for. Dagster calls the function once per run
    that reached the status, so on a tick where none did it is not called, and Dagster labels the tick
    "Sensor function returned an empty result"; this replaces that label with `idle_reason`."""

    def __init__(self, *, idle_reason: str, **kwargs):
        super().__init__(**kwargs)
        self.idle_reason = idle_reason

    def evaluate_tick(self, context: SensorEvaluationContext):
        data = super().evaluate_tick(context)
        if data.run_requests or data.dagster_run_reactions or data.skip_message != DAGSTER_EMPTY_RESULT:
            return data
        return copy(data, skip_message=self.idle_reason)


def _check_failures(context: RunStatusSensorContext, database: PostgresResource) -> None:
    with database.connect() as conn:
        new = process_finished_run(context.instance, context.dagster_run, conn, failed=False)
    _log_new(context, f"run {context.dagster_run.run_id}", new)


def _run_failures(context: RunStatusSensorContext, database: PostgresResource) -> None:
    context = context.for_run_failure()
    message = context.failure_event.message if context.failure_event else None
    with database.connect() as conn:
        new = process_finished_run(context.instance, context.dagster_run, conn, failed=True, failure_message=message)
    _log_new(context, f"run {context.dagster_run.run_id}", new)


check_failure_alert_sensor = _SaysWhenIdle(
    name="check_failure_alert_sensor",
    run_status=DagsterRunStatus.SUCCESS,
    run_status_sensor_fn=_check_failures,
    monitor_all_code_locations=True,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts on failed asset checks of successful runs (non-blocking or WARN checks); "
                "resolves alerts whose check passed again. Table `alerts`, log, RL_ALERT_WEBHOOK_URL.",
    idle_reason="no run succeeded since the last tick: no asset check to look at",
)
run_failure_alert_sensor = _SaysWhenIdle(
    name="run_failure_alert_sensor",
    run_status=DagsterRunStatus.FAILURE,
    run_status_sensor_fn=_run_failures,
    monitor_all_code_locations=True,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts on failed runs and their failed asset checks (one alert per failure). "
                "Table `alerts`, log, RL_ALERT_WEBHOOK_URL.",
    idle_reason="no run failed since the last tick: nothing to alert on",
)


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Retries alert webhook POSTs that failed, with exponential backoff (RL_ALERT_WEBHOOK_URL).",
)
def alert_delivery_sensor(context: SensorEvaluationContext, database: PostgresResource) -> SkipReason:
    with database.connect() as conn:
        report = deliver_safely(conn)
    if report.skipped_reason:
        return SkipReason(report.skipped_reason)
    return SkipReason(f"delivered {len(report.delivered)}, failed {len(report.failed)} (retried with backoff)"
                      if report.delivered or report.failed else "no alert due for delivery")


SWEEP_FIRST_LOOKBACK = timedelta(hours=24)  # a sweep without a cursor (first start) looks this far back
# Runs are stamped when their worker creates the event, not when it is stored: look back this much before
# the cursor so a run stored late (slow database, skewed clocks) is still seen. Recording is idempotent.
SWEEP_OVERLAP = timedelta(minutes=10)
SWEEP_BATCH = 200


def _run_failure_message(instance: DagsterInstance, run_id: str) -> str | None:
    records = _records(instance, run_id, DagsterEventType.RUN_FAILURE)
    return records[-1].event_log_entry.message if records else None


def sweep_finished_runs(instance: DagsterInstance, conn, updated_after: datetime, config: AlertConfig | None = None):
    """Process (again) up to SWEEP_BATCH runs finished after `updated_after` minus the overlap, oldest first.

    Returns (new alerts, the latest update time seen, never before `updated_after`). A database error
    propagates (the caller keeps its cursor); a run that cannot be processed otherwise is logged and passed.
    """
    records = instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS],
                           updated_after=updated_after - SWEEP_OVERLAP),
        limit=SWEEP_BATCH, order_by="update_timestamp", ascending=True)
    new, last = [], updated_after
    for record in records:
        run = record.dagster_run
        failed = run.status == DagsterRunStatus.FAILURE
        try:
            message = _run_failure_message(instance, run.run_id) if failed else None
            new += process_finished_run(instance, run, conn, failed=failed, failure_message=message, config=config)
        except psycopg.Error:
            raise
        except Exception:  # noqa: BLE001 - one unreadable run must not stall every later one
            logger.exception("alert sweep: run %s could not be processed; passed over", run.run_id)
        last = max(last, record.update_timestamp.replace(tzinfo=record.update_timestamp.tzinfo or UTC))
    return new, last


@sensor(
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Safety net of the alert sensors: re-processes every run finished since its cursor, which moves "
                "only when a tick succeeds (e.g. alerts missed while PostgreSQL was down). Never alerts twice.",
)
def alert_sweep_sensor(context: SensorEvaluationContext, database: PostgresResource) -> SkipReason:
    since = datetime.fromisoformat(context.cursor) if context.cursor else datetime.now(UTC) - SWEEP_FIRST_LOOKBACK
    with database.connect() as conn:  # a database error fails the tick and keeps the cursor
        new, last = sweep_finished_runs(context.instance, conn, since)
    context.update_cursor(last.isoformat())
    _log_new(context, "runs the run status sensors had missed", new)
    return SkipReason(f"{len(new)} missed alert(s) recorded" if new else "every finished run is accounted for")
