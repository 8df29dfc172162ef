"""`paper_performance`: a market's paper P&L per champion segment against its walk-forward band (market-partitioned).

The body calls `rl_lifecycle.ops.paper.watch`: the figures, a breach recorded as an alert once
(PAPER_DRAWDOWN_BEYOND_BACKTEST, sent by the alert delivery sensor), the gauges' figures stored.
"""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from rl_lifecycle.evaluation.report import json_safe
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.orchestration.assets.presentation import markdown_table, png_markdown, rounded
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import market_partitions
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

SEGMENT_HEADERS = ("champion", "from", "to", "bars", "return", "max dd", "trades", "band p05..p95", "dd limit", "state")


def _pct(value) -> str:
    return "-" if value is None else f"{value:+.2%}"


def segment_rows(segments: list[dict]) -> list[tuple]:
    rows = []
    for s in segments:
        e = s["expected"]
        available = e.get("available")
        rows.append((
            f"v{s['champion_version']}", s["from"], s["to"], s["bars"], _pct(s["total_return"]),
            f"{s['max_drawdown']:.2%}", s["trades"],
            f"{_pct(e['total_return']['p05'])} .. {_pct(e['total_return']['p95'])}" if available else "-",
            f"{e['drawdown_limit']:.2%}" if available else "-",
            ("within" if e["within"] else f"BREACH x{len(e['breaches'])}") if available else e.get("reason", "-"),
        ))
    return rows


@asset(
    partitions_def=market_partitions,
    group_name="lifecycle",
    kinds={"postgres"},
    description="The market's paper P&L per champion segment (rl_decisions and the candles, filled at the deciding "
    "bar's close at the champion's cost) against the band its walk-forward evaluation gives; a breach is the alert "
    "PAPER_DRAWDOWN_BEYOND_BACKTEST, once per breach.",
)
def paper_performance(context: AssetExecutionContext, database: PostgresResource, mlflow: MlflowResource,
                      ) -> MaterializeResult:
    from rl_lifecycle.ops.paper import performance_png, watch

    market = Market.parse(context.partition_key)
    with user_errors_fail_the_step(), database.connect() as conn:
        watched = watch(conn, market, registry=mlflow.registry)
    performance = watched.performance
    figures = json_safe(performance.to_json())
    for alert in watched.alerted:
        context.log.warning(alert.summary)
    current = performance.current
    metadata = {
        "champion_version": performance.champion if performance.champion is not None else "-",
        "segments": markdown_table(SEGMENT_HEADERS, segment_rows(figures["segments"])),
        "segments_json": MetadataValue.json(figures["segments"]),
        "breaches_alerted": len(watched.alerted),
        "fill": performance.fill,
    }
    if current is not None:
        now = current.to_json()
        metadata.update({"total_return": rounded(now["total_return"]), "max_drawdown": rounded(now["max_drawdown"]),
                         "trades": now["trades"], "bars": now["bars"]})
    png = performance_png(performance)
    if png is not None:
        metadata["paper_vs_walk_forward"] = png_markdown(png, "paper equity against the walk-forward band")
    return MaterializeResult(metadata=metadata)
