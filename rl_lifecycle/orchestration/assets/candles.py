"""`candles`: one market x window of OHLCV candles in `market_candles` (or a range of windows per run)."""


import numpy as np
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from rl_lifecycle.candles.service import load_window
from rl_lifecycle.markets.table import get_market
from rl_lifecycle.orchestration.assets.presentation import (
    line_plot,
    log_range,
    log_window,
    markdown_table,
    range_metadata,
    ts_or_none,
)
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import (
    WINDOW_RANGE_PER_RUN,
    market_window_partitions,
    partitions_of_run,
)
from rl_lifecycle.orchestration.resources import PostgresResource


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=WINDOW_RANGE_PER_RUN,
    group_name="lifecycle",
    kinds={"postgres"},
    description="OHLCV candles of one market and window, keyed by candle open time (UTC).",
)
def candles(context: AssetExecutionContext, database: PostgresResource) -> MaterializeResult:
    partitions = partitions_of_run(context.partition_keys)
    # A backfill run over many windows draws one plot of its whole range (on its last window) instead
    # of one per window: a plot costs more than the window's own work.
    plot_each_window = len(partitions) == 1
    closes: list = []
    with database.connect() as conn:
        records = {}
        for key, market, window in partitions:
            with user_errors_fail_the_step(key):
                record = records.get(market.key) or get_market(conn, market)
                records[market.key] = record
                stats, summary = load_window(conn, record, window)
            log_window(context, len(partitions), f"{market.key} {window.key}: {summary.rows} candles stored, {len(summary.gaps)} gaps")
            metadata = _window_metadata(record, window, stats, summary)
            if plot_each_window:
                metadata["price"] = line_plot(summary.ts, summary.close, f"{market.key} close, {window.key}")
            else:
                closes.append((summary.ts, summary.close))
            context.add_asset_metadata(metadata, partition_key=key)
    if closes:
        last_key, market, _ = partitions[-1]
        ts, close = np.concatenate([c[0] for c in closes]), np.concatenate([c[1] for c in closes])
        context.add_asset_metadata({"price_over_run_range": line_plot(
            ts, close, f"{market.key} close, {partitions[0][2].key} .. {partitions[-1][2].key}")}, partition_key=last_key)
    log_range(context, context.partition_keys, "candles stored")
    return MaterializeResult(metadata=range_metadata(context.partition_keys))


def _window_metadata(record, window, stats, summary) -> dict:
    metadata = {
        "rows": summary.rows,
        "expected_rows": summary.expected_rows,
        "first_ts": ts_or_none(summary.first_ts),
        "last_ts": ts_or_none(summary.last_ts),
        "gaps": len(summary.gaps),
        "missing_bars": summary.missing_bars,
    }
    if stats is not None:
        metadata.update(inserted=stats.inserted, updated=stats.updated, unchanged=stats.unchanged)
    if summary.gaps:
        metadata["gap_list"] = markdown_table(
            ["from", "until", "missing bars"],
            [(ts_or_none(g.start_us), ts_or_none(g.end_us), g.missing_bars) for g in summary.gaps[:20]],
        )
    metadata["source"] = MetadataValue.text(record.source)
    return metadata
