"""Sensors: keep the `market` partition dimension in step with the `markets` table."""


from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from rl_lifecycle.markets.table import list_markets
from rl_lifecycle.orchestration.partitions import market_partitions, missing_market_partitions
from rl_lifecycle.orchestration.resources import PostgresResource


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,  # partitions must follow the table without a click
    description="Adds markets registered in the database to the `market` partitions.",
)
def market_partitions_sensor(context: SensorEvaluationContext, database: PostgresResource) -> SensorResult | SkipReason:
    with database.connect() as conn:
        keys = [record.market.key for record in list_markets(conn)]
    missing = missing_market_partitions(context.instance, keys)
    if not missing:
        return SkipReason(f"nothing new: the `market` partitions already hold the {len(keys)} registered market(s)"
                          if keys else "no market registered (`rl-lifecycle market add`)")
    return SensorResult(dynamic_partitions_requests=[market_partitions.build_add_request(missing)],
                        skip_reason=f"added {len(missing)} market partition(s): {', '.join(missing)}")
