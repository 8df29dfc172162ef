"""The champion watched after promotion: each market's paper P&L per champion segment, against the band its
walk-forward evaluation gives, and the alert when it breaches it.

    performance = paper_performance(conn, market, registry=lambda: open_registry(url))
    performance.to_json()   # {"market", "segments": [{"champion_version", "from", "to", "bars", ...}]}
    watch(conn, market, registry=...)  # the same, plus: breaches alerted once each, gauges' figures stored

The figures are `decisions.paper_pnl` (the pure core) over what is stored: `rl_decisions`, the candles, and
for each champion version its evaluation report (the latest gate decision on that version names it:
`promotion_audit.evaluation_report_id`; else, given a registry, the stored evaluation of the version's
spec on the dataset it was trained on) with the report's fold curves. The cost is the version's model
spec's `cost_bps` (the report keeps the spec; else the registered policy's). The market's fill convention
is `fill_convention` (`close` for every market today).

A breach is an alert of kind `paper_breach` (check `PAPER_DRAWDOWN_BEYOND_BACKTEST`, partition the market,
severity ERROR) keyed by the breach (`paper_pnl.Breach.dedupe_key`), so watching again, from any process,
records and sends it once. The open breach alerts of a champion no longer in force are resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psycopg

from rl_lifecycle.candles.store import load_candles, newest_candle_ts
from rl_lifecycle.decisions.paper_pnl import (
    BREACH_CODE,
    BREACH_QUANTILE,
    FILL_AT_CLOSE,
    Band,
    SegmentReport,
    book_segment,
    breaches,
    paper_segments,
    segment_end,
    walk_forward_band,
)
from rl_lifecycle.decisions.store import decision_history
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.metrics import bars_per_year, returns_by_bar
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import MarketRecord, get_market
from rl_lifecycle.ops.alerts import PAPER_BREACH, Alert, load_alert_config, record_alert
from rl_lifecycle.promotion.audit import current_champion
from rl_lifecycle.windows import from_us, iso

PAPER_PAGE = "/assets/paper_performance"


def fill_convention(record: MarketRecord) -> str:
    """The market's fill convention: where a paper decision is filled (the backtest's: the bar's close)."""
    return getattr(record, "fill_convention", None) or FILL_AT_CLOSE


# -- what a champion version brings: its cost and its walk-forward ---------------------------------------
@dataclass(frozen=True)
class ChampionEvidence:
    version: int
    cost_bps: float
    report: object | None  # evaluation.store.EvaluationReport
    returns: np.ndarray  # the report's tested per-bar returns, one per bar in time order
    missing: str | None = None  # why there is no band

    def band(self, max_length: int, quantile: float) -> Band | None:
        if not len(self.returns):
            return None
        return walk_forward_band(self.returns, max_length, quantile=quantile,
                                 report_id=getattr(self.report, "id", None),
                                 folds=sum(1 for f in self.report.folds if f.status == "ok"))


def version_report(conn: psycopg.Connection, market: Market, version: int, registry=None):
    """The evaluation report of `version`: the one its latest gate decision named, else (given a registry)
    the stored evaluation of its spec on its training dataset; None when neither exists."""
    from rl_lifecycle.evaluation.store import read_report

    row = conn.execute(
        """SELECT evaluation_report_id FROM promotion_audit WHERE market = %s AND challenger_version = %s
           AND evaluation_report_id IS NOT NULL ORDER BY id DESC LIMIT 1""", (market.key, int(version)),
    ).fetchone()
    if row is not None:
        report = read_report(conn, int(row[0]))
        if report is not None:
            return report
    if registry is None:
        return None
    from rl_lifecycle.evaluation.service import partition_report
    from rl_lifecycle.models.service import registered_spec

    reg = registry() if callable(registry) else registry
    info = reg.version(market, int(version))
    dataset_hash = info.tags.get("dataset_hash")
    return None if not dataset_hash else partition_report(conn, market, registered_spec(reg, info).spec_hash,
                                                          dataset_hash)


def champion_evidence(conn: psycopg.Connection, market: Market, version: int, registry=None) -> ChampionEvidence:
    from rl_lifecycle.evaluation.curves import fold_returns

    report = version_report(conn, market, version, registry)
    cost = (report.spec or {}).get("cost_bps") if report is not None else None
    if cost is None:
        if registry is None:
            raise UserInputError(f"{market.key}: the cost of v{version} is unknown (no evaluation report keeps its "
                                 "spec); give a registry to read its model spec")
        from rl_lifecycle.decisions.service import CHAMPIONS

        reg = registry() if callable(registry) else registry
        cost = CHAMPIONS.get(reg, market, int(version)).policy.spec.cost_bps
    if report is None:
        return ChampionEvidence(int(version), float(cost), None, np.empty(0),
                                f"v{version} has no evaluation report (promoted without gates?)")
    by_fold = fold_returns(conn, report)
    ranges = {f.index: f.test_range for f in report.folds}
    pooled = returns_by_bar((ranges[i], r) for i, r in by_fold.items()) if by_fold else np.empty(0)
    missing = None if len(pooled) else f"report {report.id} of v{version} has no fold curves with returns"
    return ChampionEvidence(int(version), float(cost), report, pooled, missing)


# -- the use case --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperPerformance:
    market: Market
    segments: list[SegmentReport]
    champion: int | None  # the champion in force (the audit's)
    quantile: float
    fill: str
    bars_per_year: float | None = None
    evidence: dict[int, ChampionEvidence] = field(default_factory=dict, repr=False)

    @property
    def current(self) -> SegmentReport | None:
        last = self.segments[-1] if self.segments else None
        return last if last is not None and last.book.segment.champion_version == self.champion else None

    def to_json(self) -> dict:
        return {"market": self.market.key, "champion_version": self.champion, "fill": self.fill,
                "quantile": self.quantile, "segments": [s.to_json() for s in self.segments]}


def paper_performance(conn: psycopg.Connection, market: Market | str, *, registry: Callable[[], object] | object = None,
                      quantile: float = BREACH_QUANTILE) -> PaperPerformance:
    """Every champion segment of the market's paper decisions, booked and compared with its band."""
    market = market if isinstance(market, Market) else Market.parse(market)
    record = get_market(conn, market)  # an unknown market: UserInputError
    convention = fill_convention(record)
    segments = paper_segments(decision_history(conn, market.key))
    newest = newest_candle_ts(conn, market)
    evidence: dict[int, ChampionEvidence] = {}
    reports, periods = [], None
    for index, segment in enumerate(segments):
        end = segment_end(segments, index, newest)
        candles = load_candles(conn, market, segment.first_bar, end + 1)
        if not len(candles):
            continue  # its candles are gone: nothing to book
        if periods is None:
            periods = bars_per_year(market.interval, record.calendar, candles.ts)
        facts = evidence.get(segment.champion_version)
        if facts is None:
            facts = evidence[segment.champion_version] = champion_evidence(conn, market, segment.champion_version,
                                                                           registry)
        book = book_segment(market, candles, segment, facts.cost_bps, periods, convention=convention)
        band = facts.band(max(1, len(book.equity) - 1), quantile)
        reports.append(SegmentReport(book, band, breaches(book, band), facts.missing))
    return PaperPerformance(market, reports, current_champion(conn, market.key), quantile, convention, periods,
                            evidence)


# -- alerts and stored figures -------------------------------------------------------------------------
def breach_alert(market: Market, report: SegmentReport, breach, ui_url: str) -> Alert:
    band = report.band
    summary = (f"{BREACH_CODE}: {market.key} champion v{breach.champion_version}'s paper drawdown reached "
               f"{breach.drawdown:.2%} {breach.bars_in} bar(s) into its segment from {iso(breach.segment_from_us)}, "
               f"beyond the {band.quantile:.0%} quantile of its walk-forward's {breach.bars_in}-bar windows "
               f"({breach.limit:.2%}, evaluation report {band.report_id})")
    return Alert(kind=PAPER_BREACH, dedupe_key=breach.dedupe_key(market.key), summary=summary, run_id="",
                 run_url=f"{ui_url.rstrip('/')}{PAPER_PAGE}", asset="paper_performance", partition=market.key,
                 check=BREACH_CODE, severity="ERROR", failed_at=from_us(breach.start_us),
                 details={"champion_version": breach.champion_version, "breach": breach.to_json(),
                          "expected": band.expected(breach.bars_in)})


@dataclass(frozen=True)
class Watched:
    performance: PaperPerformance
    alerted: list[Alert]  # recorded by this call (earlier breaches are not recorded again)
    resolved: int


def watch(conn: psycopg.Connection, market: Market | str, *, registry=None,
          quantile: float = BREACH_QUANTILE) -> Watched:
    """`paper_performance`, then: every breach recorded as an alert once, the open breach alerts of former
    champions resolved, and the segments' figures stored for the gauges (`paper_segments`)."""
    performance = paper_performance(conn, market, registry=registry, quantile=quantile)
    market = performance.market
    ui_url = load_alert_config().ui_url
    with conn.transaction():
        alerted = [a for r in performance.segments for b in r.found
                   if (a := record_alert(conn, breach_alert(market, r, b, ui_url))) is not None]
        resolved = conn.execute(
            """UPDATE alerts SET resolved_at = now() WHERE kind = %s AND market = %s AND resolved_at IS NULL
                 AND (details ->> 'champion_version')::int IS DISTINCT FROM %s""",
            (PAPER_BREACH, market.key, performance.champion),
        ).rowcount
        conn.execute("DELETE FROM paper_segments WHERE market = %s", (market.key,))
        current = performance.current
        for report in performance.segments:
            figures = report.to_json()
            expected = figures["expected"]
            conn.execute(
                """INSERT INTO paper_segments (market, champion_version, segment_from, segment_to, bars, total_return,
                       max_drawdown, trades, drawdown_limit, breached, current)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (market.key, figures["champion_version"], from_us(int(report.book.ts[0])),
                 from_us(int(report.book.ts[-1])), figures["bars"], figures["total_return"], figures["max_drawdown"],
                 figures["trades"], expected.get("drawdown_limit"), bool(report.found), report is current),
            )
    return Watched(performance, alerted, resolved)


def markets_with_decisions(conn: psycopg.Connection) -> list[Market]:
    return [Market.parse(m) for (m,) in conn.execute(
        "SELECT DISTINCT market FROM rl_decisions WHERE champion_version IS NOT NULL ORDER BY market").fetchall()]


# -- the plot ------------------------------------------------------------------------------------------
def performance_png(performance: PaperPerformance) -> bytes | None:
    """Each segment's paper equity (start = 1) beside its walk-forward band: the windows' p05..p95 cumulative
    return and the drawdown limit under the running peak; one panel per segment, the newest last."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rl_lifecycle.plots import PLOT_DPI, PLOT_HEIGHT_IN, PLOT_WIDTH_IN

    shown = performance.segments[-4:]
    if not shown:
        return None
    fig = Figure(figsize=(PLOT_WIDTH_IN, PLOT_HEIGHT_IN * len(shown)), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for row, report in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, row + 1)
        equity = report.book.equity / report.book.equity[0]
        k = np.arange(len(equity))
        ax.plot(k, equity, linewidth=1.2, label=f"paper v{report.book.segment.champion_version}")
        if report.band is not None and len(k) > 1:
            low, high = (1.0 + report.band.return_quantile(q, k[1:]) for q in (0.05, 0.95))
            ax.fill_between(k[1:], low, high, alpha=0.2, label="walk-forward p05..p95")
            peak = np.maximum.accumulate(equity)[1:]
            ax.plot(k[1:], peak * (1.0 - report.band.drawdown_limit(k[1:])), "--", linewidth=0.8,
                    label=f"drawdown limit (p{round(report.band.quantile * 100)})")
        for breach in report.found:
            ax.axvline(breach.bars_in, color="red", linewidth=0.8, linestyle=":")
        ax.set_title(f"{performance.market.key} v{report.book.segment.champion_version}: {iso(int(report.book.ts[0]))}"
                     f" .. {iso(int(report.book.ts[-1]))}", fontsize=11)
        ax.set_xlabel("bars into the segment", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

