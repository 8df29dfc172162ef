"""`feature_snapshots`: the canonical TA-Lib feature vectors of one market x window."""

from dagster import AssetDep, AssetExecutionContext, MaterializeResult, asset

from rl_lifecycle.assets.presentation import log_range, log_window, markdown_table, range_metadata
from rl_lifecycle.features.service import feature_statistics, materialize_window
from rl_lifecycle.features.spec import active_feature_set
from rl_lifecycle.markets import INTERVALS
from rl_lifecycle.partitions import (
    WINDOW_RANGE_PER_RUN,
    WINDOW_SCHEME,
    market_window_partitions,
    run_partitions,
    same_market_and_previous_windows,
)
from rl_lifecycle.resources import PostgresResource

# A window's features read its own candles plus `warmup` candles from earlier windows: as many
# windows as the active set's warmup can span at the longest interval (1d), so backfills order right.
WITH_WARMUP_WINDOWS = same_market_and_previous_windows(
    WINDOW_SCHEME.windows_for_bars(active_feature_set().warmup, INTERVALS["1d"])
)


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=WINDOW_RANGE_PER_RUN,
    deps=[AssetDep("candles", partition_mapping=WITH_WARMUP_WINDOWS)],
    group_name="features",
    kinds={"postgres", "talib"},
    description="Feature vectors of the active feature set (RL_FEATURE_SET) by the canonical rule, in rl_feature_snapshots.",
)
def feature_snapshots(context: AssetExecutionContext, database: PostgresResource) -> MaterializeResult:
    spec = active_feature_set()
    partitions = run_partitions(context.partition_keys)
    with database.connect() as conn:
        for key, market, window in partitions:
            computed, stats = materialize_window(conn, market, spec, WINDOW_SCHEME, window)
            frame = computed.frame
            log_window(context, len(partitions),
                       f"{market.key} {window.key} {spec.name}: {len(frame)} rows ({int(frame.is_warm.sum())} warm); "
                       f"inserted {stats.inserted}, updated {stats.updated}, unchanged {stats.unchanged}, deleted {stats.deleted}")
            # the statistics table only for one window: a backfill range keeps the per-feature missing rates
            context.add_asset_metadata(_window_metadata(spec, computed, stats, table=len(partitions) == 1), partition_key=key)
    log_range(context, context.partition_keys, f"{spec.name} snapshots stored")
    return MaterializeResult(metadata={"feature_set": spec.name, "fingerprint": spec.fingerprint,
                                       **range_metadata(context.partition_keys)})


def _window_metadata(spec, computed, stats, *, table: bool) -> dict:
    frame = computed.frame
    statistics = feature_statistics(frame)
    metadata = {
        "rows": len(frame),
        "warm_rows": int(frame.is_warm.sum()),
        "warmup_input_rows": len(computed.candles) - len(frame),
        # fewer warmup candles than the set needs: the start of history, or earlier windows missing
        "history_short": len(computed.candles) - len(frame) < spec.warmup,
        "inserted": stats.inserted,
        "updated": stats.updated,
        "unchanged": stats.unchanged,
        "deleted": stats.deleted,
        "content_digest": frame.digest(),
        "missing_rate": {s["feature"]: round(s["missing_rate"], 6) for s in statistics},
    }
    if table:
        metadata["feature_statistics"] = markdown_table(
            ["feature", "mean", "std", "min", "max", "missing rate"],
            [(s["feature"], f"{s['mean']:.4g}", f"{s['std']:.4g}", f"{s['min']:.4g}", f"{s['max']:.4g}",
              f"{s['missing_rate']:.2%}") for s in statistics],
        )
    return metadata
