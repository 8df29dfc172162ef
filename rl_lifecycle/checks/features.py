"""Blocking checks on `feature_snapshots`, per partition: determinism, no lookahead, flagged warmup."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, MetadataValue, asset_check

from rl_lifecycle.assets.features import feature_snapshots
from rl_lifecycle.assets.presentation import markdown_table
from rl_lifecycle.features.service import (
    CheckReport,
    check_deterministic,
    check_no_lookahead,
    check_warmup_flagged,
    recompute_in_fresh_process,
    stored_window,
    window_input,
)
from rl_lifecycle.features.spec import active_feature_set
from rl_lifecycle.partitions import WINDOW_SCHEME, market_window_partitions, parse_partition_key
from rl_lifecycle.resources import PostgresResource


def _result(report: CheckReport) -> AssetCheckResult:
    metadata = {"summary": report.summary}
    if report.details:
        headers = sorted({k for d in report.details for k in d})
        metadata["differences"] = markdown_table(headers, [[d.get(h, "") for h in headers] for d in report.details[:50]])
        metadata["details"] = MetadataValue.json(report.details[:200])
    return AssetCheckResult(passed=report.passed, description=report.summary, metadata=metadata)


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="Recompute the window in a fresh process; its hash must equal the stored bytes' hash.",
)
def features_deterministic(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    market, window = parse_partition_key(context.partition_key)
    spec = active_feature_set()
    with database.connect() as conn:
        stored = stored_window(conn, market, spec, window)
    fresh = recompute_in_fresh_process(database.database_url(), market, spec, WINDOW_SCHEME, window)
    return _result(check_deterministic(stored, fresh))


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="For sampled t of the window recomputed from its candles: truncating at t, or perturbing every "
    "later candle, leaves the vector at t unchanged.",
)
def features_no_lookahead(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    market, window = parse_partition_key(context.partition_key)
    spec = active_feature_set()
    with database.connect() as conn:
        candles = window_input(conn, market, spec, window)
    return _result(check_no_lookahead(spec, WINDOW_SCHEME, candles, window.start))


@asset_check(
    asset=feature_snapshots,
    blocking=True,
    partitions_def=market_window_partitions,
    description="No NaN in a row that is not flagged (missing mask set, not warm).",
)
def warmup_flagged(context: AssetCheckExecutionContext, database: PostgresResource) -> AssetCheckResult:
    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        stored = stored_window(conn, market, active_feature_set(), window)
    return _result(check_warmup_flagged(stored))


FEATURE_CHECKS = [features_deterministic, features_no_lookahead, warmup_flagged]
