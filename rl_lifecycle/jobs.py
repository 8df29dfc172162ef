"""Op jobs that are not asset materializations: rolling a market's champion back."""

from dagster import Config, Failure, OpExecutionContext, job, op
from pydantic import Field

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets import Market
from rl_lifecycle.resources import MlflowResource, PostgresResource


class RollbackConfig(Config):
    market: str = Field(description="market key, e.g. BTCUSDT-1h")
    reason: str = Field(description="why, for the audit")
    to_version: int | None = Field(default=None, description="version to restore (default: the previous champion)")


@op(description="Restore the previous (or named) champion, record it in promotion_audit and move the MLflow aliases.")
def rollback_champion(context: OpExecutionContext, config: RollbackConfig, database: PostgresResource,
                      mlflow: MlflowResource) -> dict:
    from rl_lifecycle.promotion.service import rollback

    try:
        with database.connect() as conn:
            result = rollback(conn, mlflow.registry(), Market.parse(config.market), config.reason,
                              actor=f"dagster run {context.run_id}", to_version=config.to_version)
    except UserInputError as exc:
        raise Failure(description=str(exc)) from exc
    record = result.record
    context.log.info(f"{record.market}: champion v{record.champion_version} -> v{record.resulting_champion_version} "
                     f"(audit #{record.id}); aliases {result.aliases}")
    return {"audit_id": record.id, "champion": record.resulting_champion_version, "aliases": result.aliases}


@job(description="The same as `rl-lifecycle rollback`: launch it from the UI's Launchpad with market, reason "
     "and optionally to_version.")
def rollback_job():
    rollback_champion()
