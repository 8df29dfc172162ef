"""The Dagster code location: assets, checks, jobs, sensors and resources."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from rl_lifecycle.assets.candles import candles
from rl_lifecycle.assets.datasets import DATASET_CHECKS, training_dataset
from rl_lifecycle.assets.evaluation import EVALUATION_CHECKS, fold_report
from rl_lifecycle.assets.features import feature_snapshots
from rl_lifecycle.assets.models import MODEL_CHECKS, challenger_model
from rl_lifecycle.checks.features import FEATURE_CHECKS
from rl_lifecycle.partitions import market_window_partitions
from rl_lifecycle.resources import MlflowResource, PostgresResource
from rl_lifecycle.sensors import market_partitions_sensor

ALL_ASSETS = [candles, feature_snapshots, training_dataset, challenger_model, fold_report]
ALL_CHECKS = [*FEATURE_CHECKS, *DATASET_CHECKS, *MODEL_CHECKS, *EVALUATION_CHECKS]

lifecycle_job = define_asset_job(
    "lifecycle_job",
    selection=AssetSelection.assets(*ALL_ASSETS),
    partitions_def=market_window_partitions,
    description="Candles -> feature snapshots -> training dataset -> challenger model -> fold report for one market x window, with every blocking check.",
)

_database = PostgresResource()

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[lifecycle_job],
    sensors=[market_partitions_sensor],
    resources={"database": _database, "mlflow": MlflowResource(database=_database)},
)
