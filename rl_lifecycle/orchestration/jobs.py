"""The jobs: the two asset jobs of the lifecycle, one paper decision (run by the `paper_decisions`
schedule), and rolling a market's champion back.

Apart from `definitions.py` so that sensors and schedules can target the jobs they request.
"""

from dagster import (
    AssetSelection,
    Config,
    OpExecutionContext,
    Output,
    PartitionedConfig,
    configured,
    define_asset_job,
    job,
    multiprocess_executor,
    op,
)
from dagster import Field as DagsterField
from pydantic import Field

from rl_lifecycle.markets.keys import Market, market_of
from rl_lifecycle.orchestration.assets.ablation import feature_ablation
from rl_lifecycle.orchestration.assets.candles import candles
from rl_lifecycle.orchestration.assets.datasets import training_dataset
from rl_lifecycle.orchestration.assets.evaluation import fold_report
from rl_lifecycle.orchestration.assets.features import feature_snapshots
from rl_lifecycle.orchestration.assets.models import challenger_model
from rl_lifecycle.orchestration.assets.promotion import promotion_decision
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import PROMOTION_MARKET_TAG, market_window_partitions
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import iso, to_us

MARKET_DATA_ASSETS = [candles, feature_snapshots, training_dataset]
LIFECYCLE_ASSETS = [challenger_model, fold_report, promotion_decision]
ALL_ASSETS = [*MARKET_DATA_ASSETS, *LIFECYCLE_ASSETS]


@configured(multiprocess_executor, config_schema={"max_concurrent": DagsterField(int, default_value=2, description="steps at once")})
def fold_executor(config: dict) -> dict:
    """Steps in processes of their own, forked from a server that imported the code location once."""
    return {"max_concurrent": config["max_concurrent"], "start_method": {"forkserver": {}}}


def lifecycle_executor():
    """The lifecycle's executor: local processes (default), or Celery tasks with RL_EXECUTOR=celery."""
    settings = load_settings()
    if settings.executor == "celery":
        from rl_lifecycle.orchestration.celery import celery_lifecycle_executor

        return celery_lifecycle_executor(settings)
    return fold_executor


# Two jobs because their backfill policies differ: market data takes a range of one market's windows
# per run, models and reports one window per run (Dagster resolves a mixed job to the smaller).
market_data_job = define_asset_job(
    "market_data_job",
    selection=AssetSelection.assets(*MARKET_DATA_ASSETS),
    partitions_def=market_window_partitions,
    description="Candles -> feature snapshots -> training dataset for one market x window (or a range of one "
    "market's windows), with every blocking check.",
)
lifecycle_job = define_asset_job(
    "lifecycle_job",
    selection=AssetSelection.assets(*LIFECYCLE_ASSETS),
    partitions_def=market_window_partitions,
    # every run carries its market in a tag that dagster.yaml limits to one run at a time per value,
    # so a second decision for a market waits in the queue instead of failing on the advisory lock
    config=PartitionedConfig(
        partitions_def=market_window_partitions,
        run_config_for_partition_key_fn=lambda key: {},
        tags_for_partition_key_fn=lambda key: {PROMOTION_MARKET_TAG: market_of(key)},
    ),
    # one step per fold of `fold_report`: steps run in processes of their own, `max_concurrent` at a
    # time (run config `execution.config.max_concurrent`; 2 by default), forked from a server that
    # imported this code location once per run
    executor_def=lifecycle_executor(),
    description="Challenger model -> fold report (a step per fold) -> promotion decision for one market x window, with every blocking check.",
)
JOBS = [market_data_job, lifecycle_job]  # in dependency order
# Research, not the promotion path: the feature-group ablation of a partition's challenger (issue 18).
feature_ablation_job = define_asset_job(
    "feature_ablation_job",
    selection=AssetSelection.assets(feature_ablation),
    partitions_def=market_window_partitions,
    description="Feature-group ablation and permutation importance of the partition challenger's spec "
    "(`rl-lifecycle ablation`); every variant is an evaluation and a trial of the market.",
)


class RollbackConfig(Config):
    market: str = Field(description="market key, e.g. BTCUSDT-1h")
    reason: str = Field(description="why, for the audit")
    to_version: int | None = Field(default=None, description="version to restore (default: the previous champion)")


@op(description="Restore the previous (or named) champion, record it in promotion_audit and move the MLflow aliases.")
def rollback_champion(context: OpExecutionContext, config: RollbackConfig, database: PostgresResource,
                      mlflow: MlflowResource) -> dict:
    from rl_lifecycle.promotion.service import rollback

    with user_errors_fail_the_step(), database.connect() as conn:
        result = rollback(conn, mlflow.registry(), Market.parse(config.market), config.reason,
                          actor=f"dagster run {context.run_id}", to_version=config.to_version)
    record = result.record
    if result.completed:  # nothing new recorded: the audit already named that champion
        context.log.info(f"{record.market}: v{record.resulting_champion_version} is already the champion (audit "
                         f"#{record.id}); aliases completed: {result.alias_changes or 'none had to move'}")
    else:
        context.log.info(f"{record.market}: champion v{record.champion_version} -> v{record.resulting_champion_version} "
                         f"(audit #{record.id}); aliases {result.aliases}")
    return {"audit_id": record.id, "champion": record.resulting_champion_version, "aliases": result.aliases}


@job(description="The same as `rl-lifecycle rollback`: launch it from the UI's Launchpad with market, reason "
     "and optionally to_version.")
def rollback_job():
    rollback_champion()


# -- one paper decision (requested by the `paper_decisions` schedule) ---------------------------------
class PaperDecisionConfig(Config):
    market: str  # market key, e.g. BTCUSDT-1m
    bar_ts: str | None = None  # the closed bar owed a decision (ISO); skipped if another decider took it
    grace_seconds: float = 20.0  # wait this long at most for the bar's candle (capped at half an interval)


@op(name="paper_decision", description="One paper decision for a market as of now (`rl-lifecycle decide`).")
def paper_decision(context: OpExecutionContext, config: PaperDecisionConfig, database: PostgresResource,
                   mlflow: MlflowResource):
    from rl_lifecycle.decisions.live import decide_bar

    market = Market.parse(config.market)
    with database.connect() as conn:
        due, decision = decide_bar(conn, market, to_us(config.bar_ts) if config.bar_ts else None,
                                   config.grace_seconds, registry=mlflow.registry)
    if decision is None:
        bar = iso(due.bar_ts_us)
        context.log.info(f"{market.key}: the bar opened at {bar} was already decided (e.g. by `rl-lifecycle paper run`)")
        yield Output(None, metadata={"market": market.key, "bar_ts": bar, "skipped": True})
        return
    out = decision.to_json()
    context.log.info(f"{config.market}: {out['action']} {', '.join(out['reason_codes']) or '(acted freely)'} "
                     f"in {out['latency_ms']} ms")
    yield Output(out, metadata={
        "market": config.market, "action": out["action"], "reason_codes": ", ".join(out["reason_codes"]) or "-",
        "champion_version": out["champion_version"] if out["champion_version"] is not None else "-",
        "bar_ts": out["bar_ts"] or "-", "latency_ms": float(out["latency_ms"]), "decision_id": out["decision_id"],
    })


@job(name="paper_decisions_job", description="One paper decision for one market (requested by `paper_decisions`).")
def paper_decisions_job():
    paper_decision()
