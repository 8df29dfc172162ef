"""Paper P&L and the band a champion's walk-forward says it should stay within: the pure core.

Arrays and records in, figures out; no database (the service that reads them is `ops.paper`).

**Segments.** A market's paper decisions (`rl_decisions`, in the order they were made) form one
segment per champion reign: a new champion version starts a new segment, and so does a champion that
returns after a rollback. Decisions without a champion (NO_CHAMPION) or without a bar belong to none.
Within a segment a bar decided more than once (a stale feed decided again) counts its last decision.

**The fill rule** (`target_positions` and the accountant's `fill`): the market's convention
(`rl_lifecycle.trading.FILLS`, as the backtest and the env follow it): under `close` the position decided on
bar b is filled at b's close, under `next_open` at bar b+1's open, and held over the following bars until
the next decision. A segment runs from its first decided bar to the
first decided bar of the next segment (marked at that bar's close, before the next champion's first
order), or to the newest stored candle for the segment in force. Each segment is booked as a fresh
account from flat with the starting balance, as each fold backtest is, by the backtest's own
accountant (`evaluation.accountant.account_candles`, bit for bit what NautilusTrader books) at the
champion's `cost_bps`; its figures are `evaluation.metrics.fold_metrics`, the fold reports' own.

**The band** (`walk_forward_band`): what the champion's walk-forward test folds did over every window
of k bars: the per-bar net returns of its fold curves, one per tested bar in time order
(`metrics.returns_by_bar`), and for every start bar the cumulative return and the max drawdown of the
k returns after it. A segment of k returns is compared with the quantiles of those windows; the
drawdown limit is the `quantile` (default 0.99) of the windows' max drawdowns. Lengths are sampled on
a grid (interpolated in between) and starts strided to at most `MAX_STARTS`, so the cost stays bounded
on long histories. A segment longer than every backtest window is compared with the longest window
(`extrapolated`: the limit is then lenient, drawdowns grow with length).

**A breach** (`breaches`): a run of consecutive bars where the segment's max drawdown so far exceeds
the limit for its length. Each run is one alert (`PAPER_DRAWDOWN_BEYOND_BACKTEST`), keyed by the
champion version, the segment's first bar and the bar the run began: recomputing finds the same keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.decisions.store import DecisionRecord
from rl_lifecycle.evaluation.accountant import AccountResult, account_candles
from rl_lifecycle.evaluation.backtest import Fill, trade_pnls
from rl_lifecycle.evaluation.metrics import fold_metrics
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import FILL_CLOSE, FILLS
from rl_lifecycle.windows import iso

FILL_AT_CLOSE = FILL_CLOSE
FILL_CONVENTIONS = FILLS
BREACH_CODE = "PAPER_DRAWDOWN_BEYOND_BACKTEST"
BREACH_QUANTILE = 0.99
RETURN_QUANTILES = (0.05, 0.5, 0.95)
DRAWDOWN_QUANTILES = (0.5, 0.95)
MAX_STARTS = 1000
GRID_POINTS = 64
STARTING_BALANCE = 100_000.0


# -- segments ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentDecisions:
    """One champion reign's decisions: the decided bars (ascending, unique) and the position of each."""

    champion_version: int
    bar_ts: np.ndarray  # int64 epoch us
    positions: np.ndarray  # int8, the bar's last decision
    decisions: int  # records in the segment (a bar decided twice counts twice)

    @property
    def first_bar(self) -> int:
        return int(self.bar_ts[0])

    @property
    def last_bar(self) -> int:
        return int(self.bar_ts[-1])


def paper_segments(records: Sequence[DecisionRecord]) -> list[SegmentDecisions]:
    """Segments of `records` in the order they were made (as_of, then id): a new one at each champion change."""
    ordered = sorted((r for r in records if r.bar_ts_us is not None and r.champion_version is not None),
                     key=lambda r: (r.as_of_us, r.id or 0))
    runs: list[list[DecisionRecord]] = []
    for record in ordered:
        if not runs or runs[-1][-1].champion_version != record.champion_version:
            runs.append([])
        runs[-1].append(record)
    segments = []
    for run in runs:
        last: dict[int, int] = {}
        for record in run:  # in the order made: a bar decided again keeps its last decision
            last[int(record.bar_ts_us)] = int(record.position)
        bars = np.array(sorted(last), dtype=np.int64)
        segments.append(SegmentDecisions(int(run[0].champion_version), bars,
                                         np.array([last[b] for b in bars.tolist()], dtype=np.int8), len(run)))
    return segments


def segment_end(segments: Sequence[SegmentDecisions], index: int, newest_candle_ts: int | None) -> int:
    """The last bar of segment `index`: the next segment's first decided bar (the hand-over is marked at its
    close), else the newest stored candle; never before the segment's own last decided bar."""
    segment = segments[index]
    if index + 1 < len(segments):
        end = segments[index + 1].first_bar
    else:
        end = newest_candle_ts if newest_candle_ts is not None else segment.last_bar
    return max(int(end), segment.first_bar)


# -- the fill rule -------------------------------------------------------------------------------------
def target_positions(candle_ts: np.ndarray, decided_ts: np.ndarray, decided_positions: np.ndarray,
                     convention: str = FILL_AT_CLOSE) -> np.ndarray:
    """The accountant's target at each candle: the position of the latest decision on or before the candle (flat
    before the first), under either convention; the accountant fills a change at that candle's close (`close`)
    or at the next candle's open (`next_open`)."""
    if convention not in FILL_CONVENTIONS:
        raise ValueError(f"fill convention {convention!r} is unknown; expected one of {', '.join(FILL_CONVENTIONS)}")
    candle_ts = np.asarray(candle_ts, dtype=np.int64)
    index = np.searchsorted(np.asarray(decided_ts, dtype=np.int64), candle_ts, side="right") - 1
    positions = np.asarray(decided_positions, dtype=np.int8)
    return np.where(index >= 0, positions[np.clip(index, 0, None)] if len(positions) else 0, 0).astype(np.int8)


# -- booking -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentBook:
    segment: SegmentDecisions
    ts: np.ndarray  # the segment's candles (open times)
    booked: AccountResult
    metrics: dict
    cost_bps: float
    convention: str

    @property
    def equity(self) -> np.ndarray:
        return self.booked.equity

    @property
    def drawdown_path(self) -> np.ndarray:
        """Max drawdown so far after each bar (0 at the first)."""
        equity = self.equity
        return np.maximum.accumulate(1.0 - equity / np.maximum.accumulate(equity)) if len(equity) else equity


def book_segment(market: Market | str, candles: CandleArrays, segment: SegmentDecisions, cost_bps: float,
                 periods_per_year: float, *, convention: str = FILL_AT_CLOSE,
                 starting_balance: float = STARTING_BALANCE) -> SegmentBook:
    """The segment's decisions over its candles, booked by the backtest's accountant at `cost_bps`."""
    if not len(candles):
        raise ValueError(f"no candles for the paper segment of v{segment.champion_version} from {iso(segment.first_bar)}")
    positions = target_positions(candles.ts, segment.bar_ts, segment.positions, convention)
    booked = account_candles(market, candles, positions, cost_bps, starting_balance, fill=convention)
    fills = [Fill(int(b), int(candles.ts[b]), float(q), float(p), float(f)) for b, q, p, f in
             zip(booked.fill_bars, booked.fill_quantities, booked.fill_prices, booked.fill_fees, strict=True)]
    metrics = fold_metrics(booked.equity, booked.positions, booked.traded_notional, booked.fees_paid,
                           trade_pnls(fills, float(candles.close[-1])), periods_per_year)
    metrics["fills"] = booked.fills
    return SegmentBook(segment, np.asarray(candles.ts, dtype=np.int64), booked, metrics, float(cost_bps), convention)


# -- the band ------------------------------------------------------------------------------------------
def _label(q: float) -> str:
    return f"p{round(q * 100):02d}"


@dataclass(frozen=True)
class Band:
    """Quantiles of k-bar windows of the walk-forward's tested returns, on a grid of lengths k (returns)."""

    lengths: np.ndarray  # ascending k
    returns: dict[float, np.ndarray]  # q -> cumulative return quantile at each k
    drawdowns: dict[float, np.ndarray]  # q -> max drawdown quantile at each k
    quantile: float  # the drawdown limit's quantile
    source_returns: int  # tested returns the windows were taken from
    report_id: int | None = None
    folds: int = 0

    @property
    def longest(self) -> int:
        return int(self.lengths[-1])

    def _at(self, values: np.ndarray, k) -> np.ndarray:
        return np.interp(np.minimum(np.asarray(k, dtype=np.float64), self.longest), self.lengths, values)

    def drawdown_limit(self, k) -> np.ndarray:
        return self._at(self.drawdowns[self.quantile], k)

    def return_quantile(self, q: float, k) -> np.ndarray:
        return self._at(self.returns[q], k)

    def expected(self, k: int) -> dict:
        """What a segment of k returns should show: the windows' quantiles at k."""
        return {
            "report_id": self.report_id, "folds": self.folds, "returns": int(k), "quantile": self.quantile,
            "windows": max(1, self.source_returns - min(int(k), self.longest) + 1),
            "extrapolated": bool(k > self.longest),
            "total_return": {_label(q): float(self.return_quantile(q, k)) for q in sorted(self.returns)},
            "max_drawdown": {_label(q): float(self._at(v, k)) for q, v in sorted(self.drawdowns.items())},
            "drawdown_limit": float(self.drawdown_limit(k)),
        }


def walk_forward_band(returns: np.ndarray, max_length: int, *, quantile: float = BREACH_QUANTILE,
                      grid_points: int = GRID_POINTS, max_starts: int = MAX_STARTS, report_id: int | None = None,
                      folds: int = 0) -> Band | None:
    """The band for segments of up to `max_length` returns from the tested per-bar `returns` (None when there
    are none or `max_length` < 1)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile={quantile!r}: must be in (0, 1)")
    returns = np.asarray(returns, dtype=np.float64)
    returns = returns[np.isfinite(returns)]
    n = len(returns)
    if n == 0 or max_length < 1:
        return None
    longest = min(int(max_length), n)
    lengths = np.unique(np.concatenate((np.round(np.geomspace(1, longest, min(grid_points, longest))),
                                        [longest])).astype(np.int64))
    starts = np.arange(n) if n <= max_starts else np.unique(np.linspace(0, n - 1, max_starts).astype(np.int64))
    cumulative = np.full((len(starts), len(lengths)), np.nan)
    drawdown = np.full((len(starts), len(lengths)), np.nan)
    for row, start in enumerate(starts.tolist()):
        window = returns[start:start + longest]
        equity = np.cumprod(1.0 + window)
        peak = np.maximum.accumulate(np.maximum(equity, 1.0))  # the window starts at 1
        path = np.maximum.accumulate(1.0 - equity / peak)
        reach = lengths <= len(window)
        cumulative[row, reach] = equity[lengths[reach] - 1] - 1.0
        drawdown[row, reach] = path[lengths[reach] - 1]
    qs_return = sorted(set(RETURN_QUANTILES))
    qs_drawdown = sorted(set(DRAWDOWN_QUANTILES) | {quantile})
    return Band(
        lengths=lengths,
        returns={q: np.nanquantile(cumulative, q, axis=0) for q in qs_return},
        drawdowns={q: np.nanquantile(drawdown, q, axis=0) for q in qs_drawdown},
        quantile=quantile, source_returns=n, report_id=report_id, folds=folds,
    )


# -- breaches ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Breach:
    """A run of bars whose drawdown so far was beyond the band's limit for the segment's length there."""

    champion_version: int
    segment_from_us: int
    start_us: int  # the bar whose close first showed it
    bars_in: int  # returns into the segment at its start
    drawdown: float  # at its start
    limit: float
    worst_drawdown: float
    end_us: int | None  # the last bar of the run; None while it lasts (the segment's last bar is in it)

    def dedupe_key(self, market: str) -> str:
        return f"paper:{market}:v{self.champion_version}:{iso(self.segment_from_us)}:{iso(self.start_us)}"

    def to_json(self) -> dict:
        return {"from": iso(self.start_us), "to": None if self.end_us is None else iso(self.end_us),
                "bars_in": self.bars_in, "drawdown": self.drawdown, "limit": self.limit,
                "worst_drawdown": self.worst_drawdown, "ongoing": self.end_us is None}


def breaches(book: SegmentBook, band: Band | None) -> list[Breach]:
    """The runs of bars where the segment's drawdown so far exceeds the band's limit (none without a band)."""
    if band is None or len(book.equity) < 2:
        return []
    path = book.drawdown_path[1:]  # after k = 1 .. n returns
    k = np.arange(1, len(path) + 1)
    limit = band.drawdown_limit(k)
    beyond = path > limit + 1e-12
    found = []
    i = 0
    while i < len(beyond):
        if not beyond[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(beyond) and beyond[j + 1]:
            j += 1
        ongoing = j == len(beyond) - 1
        found.append(Breach(book.segment.champion_version, int(book.ts[0]), int(book.ts[i + 1]), int(k[i]),
                            float(path[i]), float(limit[i]), float(path[j]), None if ongoing else int(book.ts[j + 1])))
        i = j + 1
    return found


# -- the segment as people and programs read it --------------------------------------------------------
@dataclass(frozen=True)
class SegmentReport:
    book: SegmentBook
    band: Band | None
    found: list[Breach] = field(default_factory=list)
    expected_missing: str | None = None  # why there is no band

    def to_json(self) -> dict:
        m, book = self.book.metrics, self.book
        n = len(book.equity) - 1
        if self.band is None:
            expected = {"available": False, "reason": self.expected_missing or "no band"}
        else:
            expected = {"available": True, **self.band.expected(max(n, 1)),
                        "within": not any(b.end_us is None for b in self.found) and not (
                            n >= 1 and m["max_drawdown"] > float(self.band.drawdown_limit(n)) + 1e-12),
                        "breaches": [b.to_json() for b in self.found]}
        return {
            "champion_version": book.segment.champion_version,
            "from": iso(int(book.ts[0])), "to": iso(int(book.ts[-1])), "bars": int(len(book.equity)),
            "decisions": book.segment.decisions,
            "total_return": float(m["total_return"]), "max_drawdown": float(m["max_drawdown"]),
            "trades": int(m["trades"]), "fills": int(m["fills"]), "fees_paid": float(m["fees_paid"]),
            "exposure": float(m["exposure"]),
            "sharpe": None if not math.isfinite(m["sharpe"]) else float(m["sharpe"]),
            "cost_bps": book.cost_bps, "fill": book.convention,
            "expected": expected,
        }

