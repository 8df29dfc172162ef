"""`paper_watch_sensor`: every few minutes, the champion of every market with paper decisions is watched
against its walk-forward band (`rl_lifecycle.ops.watch`): each breach is alerted once (`paper_breach`,
PAPER_DRAWDOWN_BEYOND_BACKTEST) and, with the rollout switch `auto_rollback` on (stored with `rl-lifecycle
switch set auto_rollback true`, else RL_AUTO_ROLLBACK, default false), the champion that breached is rolled
back to the previous one, once per breach, in the audit (actor `auto-rollback`). It requests no runs: the
work is a few queries per market, done in the tick.
"""

from __future__ import annotations

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.switches import off_reason, settings_in_force, switch_state

AUTO_ROLLBACK = "auto_rollback"  # the rollout switch
INTERVAL_SECONDS = 300
WHEN_ON = "a champion whose paper drawdown breaches its walk-forward band is then rolled back to the previous one"


@sensor(
    name="paper_watch_sensor",
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,  # breaches are alerted without a click
    description="Every 5 minutes: the paper P&L of every market's champion against its walk-forward band (the same as "
    "`rl-lifecycle paper watch`); each breach is alerted once (PAPER_DRAWDOWN_BEYOND_BACKTEST). Rollbacks are gated "
    "by the rollout switch auto_rollback (default off): `rl-lifecycle switch set auto_rollback true` turns it on for "
    "the daemon and the CLI alike (RL_AUTO_ROLLBACK is the value while nothing is stored); then a breached champion "
    "is rolled back to the previous one, once per breach, audited (actor auto-rollback) and sent as an event.",
)
def paper_watch_sensor(context: SensorEvaluationContext, database: PostgresResource, mlflow: MlflowResource):
    from functools import cache

    from rl_lifecycle.ops.watch import watch_markets

    with database.connect() as conn:
        settings = settings_in_force(conn)
        switch = switch_state(conn, AUTO_ROLLBACK)
        watched = watch_markets(conn, registry=cache(mlflow.registry), auto_rollback=settings.auto_rollback)
    for w in watched:
        (context.log.warning if (w.error or w.alerted or w.rolled_back) else context.log.info)(w.describe())
    if not watched:
        summary = "no market has paper decisions of a champion"
    else:
        summary = f"watched {len(watched)} market(s): " + "; ".join(w.describe() for w in watched)
    if not switch.enabled:
        summary += ". " + off_reason(switch, "auto rollback is off (breaches are only alerted)", WHEN_ON)
    return SkipReason(summary[:2000])
