"""`candles`: one market x window of OHLCV candles in `market_candles`."""


from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from rl_lifecycle.assets.presentation import line_plot, markdown_table, ts_or_none
from rl_lifecycle.candles.service import load_window
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.partitions import market_window_partitions, parse_partition_key
from rl_lifecycle.registry import get_market
from rl_lifecycle.resources import PostgresResource


@asset(
    partitions_def=market_window_partitions,
    group_name="market_data",
    kinds={"postgres"},
    description="OHLCV candles of one market and window, keyed by candle open time (UTC).",
)
def candles(context: AssetExecutionContext, database: PostgresResource) -> MaterializeResult:
    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        try:
            record = get_market(conn, market)
            stats, summary = load_window(conn, record, window)
        except UserInputError as exc:
            raise Failure(description=str(exc)) from exc
    context.log.info(f"{market.key} {window.key}: {summary.rows} candles stored, {len(summary.gaps)} gaps")
    metadata = {
        "rows": summary.rows,
        "expected_rows": summary.expected_rows,
        "first_ts": ts_or_none(summary.first_ts),
        "last_ts": ts_or_none(summary.last_ts),
        "gaps": len(summary.gaps),
        "missing_bars": summary.missing_bars,
        "price": line_plot(summary.ts, summary.close, f"{market.key} close, {window.key}"),
    }
    if stats is not None:
        metadata.update(inserted=stats.inserted, updated=stats.updated, unchanged=stats.unchanged)
    if summary.gaps:
        metadata["gap_list"] = markdown_table(
            ["from", "until", "missing bars"],
            [(ts_or_none(g.start_us), ts_or_none(g.end_us), g.missing_bars) for g in summary.gaps[:20]],
        )
    metadata["source"] = MetadataValue.text(record.source)
    return MaterializeResult(metadata=metadata)
