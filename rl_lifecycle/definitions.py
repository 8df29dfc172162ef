"""The Dagster code location: assets, checks, jobs, sensors and resources."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    Field,
    PartitionedConfig,
    configured,
    define_asset_job,
    in_process_executor,
    multiprocess_executor,
)

from rl_lifecycle.assets.candles import candles
from rl_lifecycle.assets.datasets import DATASET_CHECKS, training_dataset
from rl_lifecycle.assets.decisions import paper_decisions, paper_decisions_job
from rl_lifecycle.assets.evaluation import EVALUATION_CHECKS, fold_report
from rl_lifecycle.assets.features import feature_snapshots
from rl_lifecycle.assets.models import MODEL_CHECKS, challenger_model
from rl_lifecycle.assets.promotion import PROMOTION_MARKET_TAG, promotion_decision
from rl_lifecycle.automation.alerts import (
    alert_delivery_sensor,
    check_failure_alert_sensor,
    run_failure_alert_sensor,
)
from rl_lifecycle.automation.inbox import inbox_sensor, live_feed_sensor
from rl_lifecycle.automation.online import latest_window_schedule, online_learning_sensor
from rl_lifecycle.checks.features import FEATURE_CHECKS
from rl_lifecycle.jobs import rollback_job
from rl_lifecycle.partitions import market_window_partitions
from rl_lifecycle.resources import MlflowResource, PostgresResource
from rl_lifecycle.sensors import market_partitions_sensor

MARKET_DATA_ASSETS = [candles, feature_snapshots, training_dataset]
LIFECYCLE_ASSETS = [challenger_model, fold_report, promotion_decision]
ALL_ASSETS = [*MARKET_DATA_ASSETS, *LIFECYCLE_ASSETS]
ALL_CHECKS = [*FEATURE_CHECKS, *DATASET_CHECKS, *MODEL_CHECKS, *EVALUATION_CHECKS]

@configured(multiprocess_executor, config_schema={"max_concurrent": Field(int, default_value=2, description="steps at once")})
def fold_executor(config: dict) -> dict:
    return {"max_concurrent": config["max_concurrent"], "start_method": {"forkserver": {}}}


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
        tags_for_partition_key_fn=lambda key: {PROMOTION_MARKET_TAG: key.split("|")[0]},
    ),
    # one step per fold of `fold_report`: steps run in processes of their own, `max_concurrent` at a
    # time (run config `execution.config.max_concurrent`; 2 by default), forked from a server that
    # imported this code location once per run
    executor_def=fold_executor,
    description="Challenger model -> fold report (a step per fold) -> promotion decision for one market x window, with every blocking check.",
)
JOBS = [market_data_job, lifecycle_job]  # in dependency order

_database = PostgresResource()

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[*JOBS, rollback_job, paper_decisions_job],
    sensors=[
        market_partitions_sensor, inbox_sensor, live_feed_sensor, online_learning_sensor,
        check_failure_alert_sensor, run_failure_alert_sensor, alert_delivery_sensor,
    ],
    schedules=[latest_window_schedule, paper_decisions],
    # Steps run one after another in the run's process: a step process of its own costs ~3 s of
    # start-up against tens of milliseconds of work per window. Whatever needs isolation (the
    # determinism recompute, each fold's Nautilus backtest) spawns its own process.
    executor=in_process_executor,
    resources={"database": _database, "mlflow": MlflowResource(database=_database)},
)
