"""Blocking checks on `feature_snapshots`, per partition (or per window of a backfill run's range):
determinism, no lookahead, flagged warmup."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from rl_lifecycle.assets.features import feature_snapshots
from rl_lifecycle.assets.presentation import partition_check_result
from rl_lifecycle.features.service import (
    check_deterministic,
    check_no_lookahead,
    check_warmup_flagged,
    recompute_in_fresh_process,
    stored_window,
    window_input,
)
from rl_lifecycle.features.spec import active_feature_set
from rl_lifecycle.partitions import WINDOW_SCHEME, market_window_partitions, run_partitions
from rl_lifecycle.resources import PostgresResource


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="Recompute the window in a fresh process; its hash must equal the stored bytes' hash.",
)
def features_deterministic(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    spec = active_feature_set()
    partitions = run_partitions(context.partition_keys)
    with database.connect() as conn:
        stored = [stored_window(conn, market, spec, window) for _, market, window in partitions]
    # one fresh interpreter recomputes every window of the run: its start-up is paid once per run
    fresh = recompute_in_fresh_process(database.database_url(), spec, WINDOW_SCHEME, [(m, w) for _, m, w in partitions])
    return partition_check_result(
        [(key, check_deterministic(s, f)) for (key, _, _), s, f in zip(partitions, stored, fresh, strict=True)]
    )


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="For sampled t of the window recomputed from its candles: truncating at t, or perturbing every "
    "later candle, leaves the vector at t unchanged.",
)
def features_no_lookahead(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    spec = active_feature_set()
    outcomes = []
    with database.connect() as conn:
        for key, market, window in run_partitions(context.partition_keys):
            candles = window_input(conn, market, spec, window)
            outcomes.append((key, check_no_lookahead(spec, WINDOW_SCHEME, candles, window.start)))
    return partition_check_result(outcomes)


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="No NaN in a row that is not flagged (missing mask set, not warm).",
)
def warmup_flagged(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    spec = active_feature_set()
    with database.connect() as conn:
        return partition_check_result([
            (key, check_warmup_flagged(stored_window(conn, market, spec, window)))
            for key, market, window in run_partitions(context.partition_keys)
        ])


FEATURE_CHECKS = [features_deterministic, features_no_lookahead, warmup_flagged]
