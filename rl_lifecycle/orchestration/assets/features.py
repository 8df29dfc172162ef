"""`feature_snapshots`: the canonical TA-Lib feature vectors of one market x window, and its blocking checks
(one evaluation per window, in a one-window run or a backfill run's range): determinism, no lookahead,
flagged warmup."""

from dagster import (
    AssetCheckExecutionContext,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    asset,
    asset_check,
)

from rl_lifecycle.features.service import (
    check_deterministic,
    check_no_lookahead,
    check_warmup_flagged,
    feature_statistics,
    materialize_window,
    recompute_in_fresh_process,
    stored_window,
    window_input,
)
from rl_lifecycle.features.spec import active_feature_set, available_feature_sets, load_feature_set
from rl_lifecycle.markets.keys import INTERVALS
from rl_lifecycle.orchestration.assets.checks import CheckEvents, partition_evaluations
from rl_lifecycle.orchestration.assets.presentation import (
    log_range,
    log_window,
    markdown_table,
    range_metadata,
)
from rl_lifecycle.orchestration.partitions import (
    WINDOW_RANGE_PER_RUN,
    WINDOW_SCHEME,
    market_window_partitions,
    partitions_of_run,
    same_market_and_previous_windows,
)
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.switches import feature_set_in_force

# A window's features read its own candles plus `warmup` candles from earlier windows: as many
# windows as the longest warmup can span at the longest interval (1d), so backfills order right. The
# longest of the shipped sets and the environment's: the `feature_set` switch may select any of them
# at run time without a reload of the code location.
WITH_WARMUP_WINDOWS = same_market_and_previous_windows(WINDOW_SCHEME.windows_for_bars(
    max(spec.warmup for spec in (active_feature_set(), *map(load_feature_set, available_feature_sets()))),
    INTERVALS["1d"],
))


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=WINDOW_RANGE_PER_RUN,
    deps=[AssetDep("candles", partition_mapping=WITH_WARMUP_WINDOWS)],
    group_name="lifecycle",
    kinds={"postgres", "talib"},
    description="Feature vectors of the active feature set (the feature_set switch: `rl-lifecycle switch list`) by "
    "the canonical rule, in rl_feature_snapshots.",
)
def feature_snapshots(context: AssetExecutionContext, database: PostgresResource) -> MaterializeResult:
    partitions = partitions_of_run(context.partition_keys)
    with database.connect() as conn:
        spec = feature_set_in_force(conn)
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


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="Recompute the window in a fresh process; its hash must equal the stored bytes' hash.",
)
def features_deterministic(context: AssetCheckExecutionContext, database: PostgresResource) -> CheckEvents:
    partitions = partitions_of_run(context.partition_keys)
    with database.connect() as conn:
        spec = feature_set_in_force(conn)
        stored = [stored_window(conn, market, spec, window) for _, market, window in partitions]
    # one fresh interpreter recomputes every window of the run: its start-up is paid once per run
    fresh = recompute_in_fresh_process(database.database_url(), spec, WINDOW_SCHEME, [(m, w) for _, m, w in partitions])
    yield from partition_evaluations(
        context, [(key, check_deterministic(s, f)) for (key, _, _), s, f in zip(partitions, stored, fresh, strict=True)]
    )


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="For sampled t of the window recomputed from its candles: truncating at t, or perturbing every "
    "later candle, leaves the vector at t unchanged.",
)
def features_no_lookahead(context: AssetCheckExecutionContext, database: PostgresResource) -> CheckEvents:
    outcomes = []
    with database.connect() as conn:
        spec = feature_set_in_force(conn)
        for key, market, window in partitions_of_run(context.partition_keys):
            candles = window_input(conn, market, spec, window)
            outcomes.append((key, check_no_lookahead(spec, WINDOW_SCHEME, candles, window.start)))
    yield from partition_evaluations(context, outcomes)


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="No NaN in a row that is not flagged (missing mask set, not warm).",
)
def warmup_flagged(context: AssetCheckExecutionContext, database: PostgresResource) -> CheckEvents:
    with database.connect() as conn:
        spec = feature_set_in_force(conn)
        outcomes = [
            (key, check_warmup_flagged(stored_window(conn, market, spec, window)))
            for key, market, window in partitions_of_run(context.partition_keys)
        ]
    yield from partition_evaluations(context, outcomes)


FEATURE_CHECKS = [features_deterministic, features_no_lookahead, warmup_flagged]
