"""`alias_reconcile_sensor`: on every daemon tick, the MLflow aliases follow their truth without help.

`champion` / `previous_champion` follow the promotion audit and `challenger` the model checks
(`rl_lifecycle.promotion.service.reconcile`), for every market: a gap left by a promotion or rollback
killed between its audit row and its alias move heals within a tick. A market whose decision is in
progress (its lock held) is skipped this tick: that decision reconciles it itself.
"""

from __future__ import annotations

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource


@sensor(
    name="alias_reconcile_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,  # a gap must heal without a click
    description="Points the MLflow aliases where their truth says, for every market: champion / previous_champion "
    "from promotion_audit, challenger from the model checks (the same as `rl-lifecycle reconcile`).",
)
def alias_reconcile_sensor(context: SensorEvaluationContext, database: PostgresResource, mlflow: MlflowResource):
    from rl_lifecycle.promotion.service import markets_to_reconcile, reconcile

    registry = mlflow.registry()
    moved, problems = [], []
    with database.connect() as conn:
        for market in markets_to_reconcile(conn):
            result = reconcile(conn, registry, market, wait=False)
            if result.error:
                problems.append(f"{market}: {result.error}")
                context.log.warning(f"{market}: cannot reconcile the aliases: {result.error}")
            for alias, (before, after) in result.changes.items():
                line = f"{market}: {alias} {_v(before)} -> {_v(after)}"
                moved.append(line)
                context.log.info(f"healed {line}")
    if moved:
        return SkipReason(f"moved {len(moved)} alias(es): " + "; ".join(moved))
    return SkipReason("aliases in agreement" + (f"; cannot reconcile {'; '.join(problems)}" if problems else ""))


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"
