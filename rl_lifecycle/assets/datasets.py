"""`training_dataset`: the dataset ending at a market x window, with its two blocking gates."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    asset,
    asset_check,
)
from pydantic import Field

from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import check_no_unwarm_rows, check_reproducible, spec_ending_at
from rl_lifecycle.features.spec import FeatureSetSpec, active_feature_set
from rl_lifecycle.partitions import (
    WINDOW_SCHEME,
    market_window_partitions,
    parse_partition_key,
    same_market_and_previous_windows,
)
from rl_lifecycle.resources import PostgresResource
from rl_lifecycle.settings import load_settings

DEFAULT_SPAN_WINDOWS = 3

# The dataset of a window spans it and the windows before it.
SPAN_MAPPING = same_market_and_previous_windows(DEFAULT_SPAN_WINDOWS - 1)


class TrainingDatasetConfig(Config):
    # Validated again by DatasetSpec (with a message naming the field); the declared upstream mapping
    # covers the default span, so a longer span still builds but the UI shows fewer upstream windows.
    span_windows: int = Field(default=DEFAULT_SPAN_WINDOWS, ge=1, le=120, description="windows in the dataset, ending at the partition's")
    forward_return_horizon: int = Field(default=1, ge=1, le=10_000, description="label horizon in bars (the minimum purge)")
    transaction_cost_bps: float = Field(default=10.0, ge=0.0, le=1_000.0, description="cost per unit of turnover")


def _spec(partition_key: str, config: TrainingDatasetConfig, features: FeatureSetSpec):
    market, window = parse_partition_key(partition_key)
    return spec_ending_at(
        market, window, WINDOW_SCHEME, features.name, config.span_windows,
        forward_return_horizon=config.forward_return_horizon, transaction_cost_bps=config.transaction_cost_bps,
    )


@asset(
    partitions_def=market_window_partitions,
    deps=[AssetDep("feature_snapshots", partition_mapping=SPAN_MAPPING)],
    group_name="datasets",
    kinds={"parquet", "postgres"},
    description="Warm feature rows of the span ending at this window, with close and forward-return label; content-addressed.",
)
def training_dataset(context: AssetExecutionContext, config: TrainingDatasetConfig, database: PostgresResource) -> MaterializeResult:
    features = active_feature_set()
    spec = _spec(context.partition_key, config, features)
    with database.connect() as conn:
        build = build_dataset(conn, spec, load_settings().datasets_dir, features)
    context.log.info(
        f"dataset {build.dataset_hash[:12]}: {build.rows} rows; windows from cache {len(build.cached_windows)}, "
        f"computed {len(build.computed_windows)}{'; reused an existing version' if build.reused else ''}"
    )
    return MaterializeResult(
        metadata={
            "dataset_hash": build.dataset_hash,
            "rows": build.rows,
            "span": f"{spec.first_window}..{spec.last_window}",
            "feature_set": spec.feature_set,
            "fingerprint": build.fingerprint,
            "windows_from_cache": len(build.cached_windows),
            "windows_computed": len(build.computed_windows),
            "computed_windows": ", ".join(build.computed_windows) or "-",
            "windows_without_candles": ", ".join(build.empty_windows) or "-",
            "reused_version": build.reused,
            "storage_uri": build.storage_uri,
            "min_purge_bars": spec.min_purge_bars,
        }
    )


@asset_check(asset=training_dataset, blocking=True, partitions_def=market_window_partitions,
             description="Rebuild the latest dataset of this partition from stored snapshots, re-hash its file; both must equal its dataset_hash.")
def dataset_reproducible(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    with database.connect() as conn:
        result = check_reproducible(conn, *parse_partition_key(context.partition_key))
    return AssetCheckResult(passed=result.passed, description=result.summary)


@asset_check(asset=training_dataset, blocking=True, partitions_def=market_window_partitions,
             description="Every dataset row is a warm snapshot row with all features defined.")
def dataset_no_unwarm_rows(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    with database.connect() as conn:
        result = check_no_unwarm_rows(conn, *parse_partition_key(context.partition_key))
    return AssetCheckResult(passed=result.passed, description=result.summary)


DATASET_CHECKS = [dataset_reproducible, dataset_no_unwarm_rows]
