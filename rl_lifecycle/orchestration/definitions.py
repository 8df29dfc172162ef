"""The Dagster code location (workspace.yaml): assets, checks, jobs, sensors, schedules and resources.

`JOBS` (the asset jobs) come first in `jobs=`, in dependency order: the launcher reads that order.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from rl_lifecycle.orchestration.assets.ablation import feature_ablation
from rl_lifecycle.orchestration.assets.datasets import DATASET_CHECKS
from rl_lifecycle.orchestration.assets.evaluation import EVALUATION_CHECKS
from rl_lifecycle.orchestration.assets.features import FEATURE_CHECKS
from rl_lifecycle.orchestration.assets.models import MODEL_CHECKS
from rl_lifecycle.orchestration.assets.paper import paper_performance
from rl_lifecycle.orchestration.automation.alerts import (
    alert_delivery_sensor,
    alert_sweep_sensor,
    check_failure_alert_sensor,
    run_failure_alert_sensor,
)
from rl_lifecycle.orchestration.automation.inbox import inbox_sensor, live_feed_sensor
from rl_lifecycle.orchestration.automation.markets import market_partitions_sensor
from rl_lifecycle.orchestration.automation.online import latest_window_schedule, online_learning_sensor
from rl_lifecycle.orchestration.automation.paper_decisions import paper_decisions
from rl_lifecycle.orchestration.automation.paper_watch import paper_watch_sensor
from rl_lifecycle.orchestration.automation.promotion import alias_reconcile_sensor
from rl_lifecycle.orchestration.jobs import (
    ALL_ASSETS,
    JOBS,
    feature_ablation_job,
    paper_decisions_job,
    rollback_job,
)
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.orchestration.step_io import PostgresStepIO

ALL_CHECKS = [*FEATURE_CHECKS, *DATASET_CHECKS, *MODEL_CHECKS, *EVALUATION_CHECKS]

_database = PostgresResource()

defs = Definitions(
    assets=[*ALL_ASSETS, paper_performance, feature_ablation],
    asset_checks=ALL_CHECKS,
    jobs=[*JOBS, feature_ablation_job, rollback_job, paper_decisions_job],
    sensors=[
        market_partitions_sensor, inbox_sensor, live_feed_sensor, online_learning_sensor,
        check_failure_alert_sensor, run_failure_alert_sensor, alert_delivery_sensor, alert_sweep_sensor,
        alias_reconcile_sensor, paper_watch_sensor,
    ],
    schedules=[latest_window_schedule, paper_decisions],
    # Steps run one after another in the run's process: a step process of its own costs ~3 s of
    # start-up against tens of milliseconds of work per window. Whatever needs isolation (the
    # determinism recompute, each fold's Nautilus backtest) spawns its own process.
    executor=in_process_executor,
    # step outputs in the database, not under one machine's DAGSTER_HOME: any worker may run the next step
    resources={"database": _database, "mlflow": MlflowResource(database=_database),
               "io_manager": PostgresStepIO(database=_database)},
)
