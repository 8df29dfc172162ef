"""`training_dataset`: the dataset ending at a market x window, with its two blocking gates (one
evaluation per window, in a one-window run or a backfill run's range)."""

from dagster import (
    AssetCheckExecutionContext,
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    asset,
    asset_check,
)
from pydantic import Field

from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import (
    check_no_unwarm_rows,
    check_reproducible,
    market_span_windows,
    spec_ending_at,
)
from rl_lifecycle.datasets.spec import DEFAULT_SPAN_WINDOWS
from rl_lifecycle.features.spec import FeatureSetSpec
from rl_lifecycle.markets.table import market_fill
from rl_lifecycle.orchestration.assets.checks import CheckEvents, partition_evaluations
from rl_lifecycle.orchestration.assets.presentation import (
    log_range,
    log_window,
    range_metadata,
)
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import (
    WINDOW_RANGE_PER_RUN,
    WINDOW_SCHEME,
    market_window_partitions,
    partitions_of_run,
    same_market_and_previous_windows,
)
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.switches import feature_set_in_force

# The dataset of a window spans it and the windows before it.
SPAN_MAPPING = same_market_and_previous_windows(DEFAULT_SPAN_WINDOWS - 1)


class TrainingDatasetConfig(Config):
    # Validated again by DatasetSpec (with a message naming the field); the declared upstream mapping
    # covers the default span, so a longer span still builds but the UI shows fewer upstream windows.
    span_windows: int | None = Field(default=None, ge=1, le=120, description="windows in the dataset, ending at the "
                                     "partition's (default: the market's `--span-windows`, else 3)")
    forward_return_horizon: int = Field(default=1, ge=1, le=10_000, description="label horizon in bars (the minimum purge)")
    transaction_cost_bps: float = Field(default=10.0, ge=0.0, le=1_000.0, description="cost per unit of turnover")


def _spec(conn, market, window, config: TrainingDatasetConfig, features: FeatureSetSpec):
    return spec_ending_at(
        market, window, WINDOW_SCHEME, features.name, market_span_windows(conn, market, config.span_windows),
        forward_return_horizon=config.forward_return_horizon, transaction_cost_bps=config.transaction_cost_bps,
        fill=market_fill(conn, market),
    )


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=WINDOW_RANGE_PER_RUN,
    deps=[AssetDep("feature_snapshots", partition_mapping=SPAN_MAPPING)],
    group_name="lifecycle",
    kinds={"parquet", "postgres"},
    description="Warm feature rows of the span ending at this window, with close and forward-return label; content-addressed.",
)
def training_dataset(context: AssetExecutionContext, config: TrainingDatasetConfig, database: PostgresResource) -> MaterializeResult:
    datasets_dir = load_settings().datasets_dir
    with database.connect() as conn:
        features = feature_set_in_force(conn)
        partitions = partitions_of_run(context.partition_keys)
        for key, market, window in partitions:
            spec = _spec(conn, market, window, config, features)
            with user_errors_fail_the_step(key):
                build = build_dataset(conn, spec, datasets_dir, features)
            log_window(
                context, len(partitions),
                f"{key} dataset {build.dataset_hash[:12]}: {build.rows} rows; windows from cache "
                f"{len(build.cached_windows)}, computed {len(build.computed_windows)}"
                f"{'; reused an existing version' if build.reused else ''}"
            )
            context.add_asset_metadata({
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
            }, partition_key=key)
    log_range(context, context.partition_keys, "datasets built")
    return MaterializeResult(metadata=range_metadata(context.partition_keys))


def _each_partition(context: AssetCheckExecutionContext, database: PostgresResource, check) -> CheckEvents:
    with database.connect() as conn:
        outcomes = [(key, check(conn, market, window)) for key, market, window in partitions_of_run(context.partition_keys)]
    yield from partition_evaluations(context, outcomes)


@asset_check(asset=training_dataset, blocking=True, partitions_def=market_window_partitions,
             description="Rebuild the latest dataset of this partition from stored snapshots, re-hash its file; both must equal its dataset_hash.")
def dataset_reproducible(context: AssetCheckExecutionContext, database: PostgresResource) -> CheckEvents:
    yield from _each_partition(context, database, check_reproducible)


@asset_check(asset=training_dataset, blocking=True, partitions_def=market_window_partitions,
             description="Every dataset row is a warm snapshot row with all features defined.")
def dataset_no_unwarm_rows(context: AssetCheckExecutionContext, database: PostgresResource) -> CheckEvents:
    yield from _each_partition(context, database, check_no_unwarm_rows)


DATASET_CHECKS = [dataset_reproducible, dataset_no_unwarm_rows]
