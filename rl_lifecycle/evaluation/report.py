"""From fold backtests to a report: per-backtest metrics and baselines, aggregates, status, curve files.

A report keeps one row (`FoldRecord`) per backtest (`folds.backtests`): a walk-forward fold is one, a
CPCV split one per tested group. A CPCV report's aggregates add its backtest paths (`paths`): each of
the φ(N, k) paths chains one backtest per group, and its figures are those of the chained returns.
The pooled statistics (PSR, DSR, the trial's Sharpe) are over one return per tested bar
(`metrics.returns_by_bar`: a CPCV bar's φ backtests averaged).

Strict mode: any failed fold fails the evaluation (status `failed`; the report still lists every
fold, the failed ones with their traceback). Non-strict: status `partial` when folds are missing,
and the aggregates cover the completed folds only (`missing_folds` names the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rl_lifecycle.evaluation.backtest import FoldResult
from rl_lifecycle.evaluation.curves import CurveWriter
from rl_lifecycle.evaluation.folds import Backtest, Fold, Range, backtests, cpcv_paths
from rl_lifecycle.evaluation.metrics import (
    Trials,
    aggregate_folds,
    bars_per_year,
    buy_and_hold_baseline,
    buy_and_hold_equity,
    flat_baseline,
    fold_metrics,
    path_metrics,
    returns_by_bar,
    simple_returns,
)
from rl_lifecycle.markets.calendars import TradingCalendar
from rl_lifecycle.markets.keys import Market


@dataclass(frozen=True)
class FoldRecord:
    index: int
    train_ranges: tuple[Range, ...]
    test_range: Range
    train_spans: tuple[tuple[int, int], ...]  # epoch us [open of first row, close of last row)
    test_span: tuple[int, int]
    status: str  # ok | failed
    metrics: dict | None = None
    baselines: dict | None = None
    error: str | None = None
    equity_curve_uri: str | None = None
    split: int | None = None  # the fold or CPCV split whose model traded it; None: `index` (walk-forward)
    test_group: int | None = None  # CPCV: the group it tested
    ran_on: dict | None = None  # where its step ran: {"worker", "host", "pid"}

    @property
    def backtest(self) -> Backtest:
        return Backtest(self.index, self.index if self.split is None else self.split, self.test_range, self.test_group)


def row_span(ts: np.ndarray, rows: Range, interval_us: int) -> tuple[int, int]:
    """Time span of dataset rows [start, end): the first row's open to the last row's close."""
    return int(ts[rows[0]]), int(ts[rows[1] - 1]) + interval_us


def summarise(
    market: Market,
    folds: list[Fold],
    results: list[FoldResult],
    ts: np.ndarray,
    cost_bps: float,
    other_trials: Trials,
    strict: bool,
    write_curve: CurveWriter | None = None,
    *,
    calendar: TradingCalendar | str,
    fill: str = "close",
) -> tuple[list[FoldRecord], dict, str]:
    """A record per backtest, aggregates over the completed ones, and the evaluation status. `results`:
    one per backtest (`FoldResult.fold_index` = `Backtest.index`). `other_trials`: the market's trials
    without this evaluation (`store.market_trials(..., excluding=its key)`). `calendar`: the market's
    trading calendar; every annualised figure uses its bars per year over the dataset's bars `ts`
    (one figure for every fold of the report: `aggregates["bars_per_year"]`). `fill`: the fill convention the
    backtests ran under (`aggregates["fill"]`; a result of another fill is refused)."""
    by_index = {r.fold_index: r for r in results}
    train = {fold.index: fold.train_ranges for fold in folds}
    periods = bars_per_year(market.interval, calendar, ts)
    records, metrics_by_fold, returns_by_fold = [], {}, {}
    for test in backtests(folds):
        result = by_index.get(test.index) or FoldResult.failed(test.index, "no backtest result for this fold")
        spans = tuple(row_span(ts, r, market.interval_us) for r in train[test.split])
        row = dict(index=test.index, train_ranges=train[test.split], test_range=test.test_range, train_spans=spans,
                   test_span=row_span(ts, test.test_range, market.interval_us),
                   split=None if test.test_group is None else test.split, test_group=test.test_group,
                   ran_on=result.ran_on)
        if not result.ok:
            records.append(FoldRecord(**row, status="failed", error=result.error))
            continue
        if result.fill != fill:
            raise ValueError(f"fold {test.index} was backtested with fill {result.fill!r}, the report is of fill {fill!r}")
        metrics = fold_metrics(result.equity, result.positions, result.traded_notional, result.fees_paid,
                               result.trade_pnls, periods)
        baselines = {
            "flat": flat_baseline(result.close, result.starting_balance, periods),
            "buy_and_hold": buy_and_hold_baseline(result.close, cost_bps, result.starting_balance, periods,
                                                  result.open),
        }
        if result.replay is not None:  # not a baseline: the same positions booked by the accountant
            baselines["accountant"] = result.replay
        uri = None
        if write_curve is not None:
            hold_curve, _ = buy_and_hold_equity(result.close, cost_bps, result.starting_balance, result.open)
            uri = write_curve(test.index, result, hold_curve)
        records.append(FoldRecord(**row, status="ok", metrics=metrics, baselines=baselines, equity_curve_uri=uri))
        metrics_by_fold[test.index] = metrics
        returns_by_fold[test.index] = simple_returns(result.equity)
    pooled = returns_by_bar((records[i].test_range, r) for i, r in returns_by_fold.items()) if returns_by_fold else None
    aggregates = aggregate_folds(metrics_by_fold, returns_by_fold, other_trials, pooled)
    aggregates["bars_per_year"] = periods
    aggregates["calendar"] = calendar if isinstance(calendar, str) else calendar.name
    aggregates["fill"] = fill
    if any(fold.test_groups for fold in folds):
        aggregates["paths"] = cpcv_path_figures(folds, records, returns_by_fold, periods)
    missing = [r.index for r in records if r.status != "ok"]
    aggregates["missing_folds"] = missing
    if not missing:
        status = "ok"
    elif strict or len(missing) == len(records):
        status = "failed"
    else:
        status = "partial"
    return records, aggregates, status


def path_returns(folds: list[Fold], records: list[FoldRecord], returns_by_backtest: dict[int, np.ndarray],
                 ) -> list[np.ndarray | None]:
    """Per CPCV backtest path (`folds.cpcv_paths` order): its groups' backtest returns chained in time
    order; None for a path through a backtest that did not complete."""
    n_groups = len({g for fold in folds for g in fold.test_groups})
    index = {(r.backtest.split, r.test_group): r.index for r in records}
    out = []
    for path in cpcv_paths(n_groups, len(folds[0].test_groups)):
        parts = [returns_by_backtest.get(index[step]) for step in path]
        out.append(None if any(p is None for p in parts) else np.concatenate(parts))
    return out


def cpcv_path_figures(folds: list[Fold], records: list[FoldRecord], returns_by_backtest: dict[int, np.ndarray],
                      periods_per_year: float) -> dict:
    """`count` paths; per path its figures (null when one of its backtests failed); mean, median and
    worst of each figure over the complete paths."""
    per_path = [None if r is None else path_metrics(r, periods_per_year)
                for r in path_returns(folds, records, returns_by_backtest)]
    done = [p for p in per_path if p is not None]
    out: dict = {"count": len(per_path), "complete": len(done), "per_path": per_path}
    for key, worst in (("total_return", min), ("sharpe", min), ("max_drawdown", max)):
        values = [p[key] for p in done if math.isfinite(p[key])]
        out[key] = ({"mean": float(np.mean(values)), "median": float(np.median(values)), "worst": float(worst(values))}
                    if values else {"mean": math.nan, "median": math.nan, "worst": math.nan})
    return out


def json_safe(value):
    """NaN and infinities become None (JSON and jsonb have no NaN); numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
