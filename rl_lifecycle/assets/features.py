"""`feature_snapshots`: the canonical TA-Lib feature vectors of one market x window."""

from dagster import AssetDep, AssetExecutionContext, MaterializeResult, asset

from rl_lifecycle.assets.presentation import markdown_table
from rl_lifecycle.features.service import feature_statistics, materialize_window
from rl_lifecycle.features.spec import active_feature_set
from rl_lifecycle.markets import INTERVALS
from rl_lifecycle.partitions import (
    WINDOW_SCHEME,
    market_window_partitions,
    parse_partition_key,
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
    deps=[AssetDep("candles", partition_mapping=WITH_WARMUP_WINDOWS)],
    group_name="features",
    kinds={"postgres", "talib"},
    description="Feature vectors of the active feature set (RL_FEATURE_SET) by the canonical rule, in rl_feature_snapshots.",
)
def feature_snapshots(context: AssetExecutionContext, database: PostgresResource) -> MaterializeResult:
    market, window = parse_partition_key(context.partition_key)
    spec = active_feature_set()
    with database.connect() as conn:
        computed, stats = materialize_window(conn, market, spec, WINDOW_SCHEME, window)
    frame = computed.frame
    warm = int(frame.is_warm.sum())
    context.log.info(
        f"{market.key} {window.key} {spec.name}: {len(frame)} rows ({warm} warm); "
        f"inserted {stats.inserted}, updated {stats.updated}, unchanged {stats.unchanged}, deleted {stats.deleted}"
    )
    statistics = feature_statistics(frame)
    return MaterializeResult(
        metadata={
            "feature_set": spec.name,
            "fingerprint": spec.fingerprint,
            "rows": len(frame),
            "warm_rows": warm,
            "warmup_input_rows": len(computed.candles) - len(frame),
            # fewer warmup candles than the set needs: the start of history, or earlier windows missing
            "history_short": len(computed.candles) - len(frame) < spec.warmup,
            "inserted": stats.inserted,
            "updated": stats.updated,
            "unchanged": stats.unchanged,
            "deleted": stats.deleted,
            "content_digest": frame.digest(),
            "missing_rate": {s["feature"]: round(s["missing_rate"], 6) for s in statistics},
            "feature_statistics": markdown_table(
                ["feature", "mean", "std", "min", "max", "missing rate"],
                [(s["feature"], f"{s['mean']:.4g}", f"{s['std']:.4g}", f"{s['min']:.4g}", f"{s['max']:.4g}",
                  f"{s['missing_rate']:.2%}") for s in statistics],
            ),
        }
    )
