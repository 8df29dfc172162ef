"""From fold backtests to a report: per-fold metrics and baselines, aggregates, status, curve files.

Strict mode: any failed fold fails the evaluation (status `failed`; the report still lists every
fold, the failed ones with their traceback). Non-strict: status `partial` when folds are missing,
and the aggregates cover the completed folds only (`missing_folds` names the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_lifecycle.evaluation.backtest import FoldResult
from rl_lifecycle.evaluation.curves import write_equity_curve
from rl_lifecycle.evaluation.folds import Fold, Range
from rl_lifecycle.evaluation.metrics import (
    Trials,
    aggregate_folds,
    bars_per_year,
    buy_and_hold_baseline,
    buy_and_hold_equity,
    flat_baseline,
    fold_metrics,
    simple_returns,
)
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
    curves_dir: Path | None = None,
) -> tuple[list[FoldRecord], dict, str]:
    """Fold records, aggregates over the completed folds, and the evaluation status. `other_trials`: the
    market's trials without this evaluation (`store.market_trials(..., excluding=its key)`)."""
    by_index = {r.fold_index: r for r in results}
    periods = bars_per_year(market.interval)
    records, metrics_by_fold, returns_by_fold = [], {}, {}
    for fold in folds:
        result = by_index.get(fold.index) or FoldResult.failed(fold.index, "no backtest result for this fold")
        spans = tuple(row_span(ts, r, market.interval_us) for r in fold.train_ranges)
        test_span = row_span(ts, fold.test_range, market.interval_us)
        if not result.ok:
            records.append(FoldRecord(fold.index, fold.train_ranges, fold.test_range, spans, test_span, "failed",
                                      error=result.error))
            continue
        metrics = fold_metrics(result.equity, result.positions, result.traded_notional, result.fees_paid,
                               result.trade_pnls, periods)
        baselines = {
            "flat": flat_baseline(result.close, result.starting_balance, periods),
            "buy_and_hold": buy_and_hold_baseline(result.close, cost_bps, result.starting_balance, periods),
        }
        if result.replay is not None:  # not a baseline: the same positions booked by the accountant
            baselines["accountant"] = result.replay
        uri = None
        if curves_dir is not None:
            hold_curve, _ = buy_and_hold_equity(result.close, cost_bps, result.starting_balance)
            uri = write_equity_curve(curves_dir / f"fold-{fold.index}.parquet", result, hold_curve)
        records.append(FoldRecord(fold.index, fold.train_ranges, fold.test_range, spans, test_span, "ok",
                                  metrics, baselines, None, uri))
        metrics_by_fold[fold.index] = metrics
        returns_by_fold[fold.index] = simple_returns(result.equity)
    aggregates = aggregate_folds(metrics_by_fold, returns_by_fold, other_trials)
    missing = [r.index for r in records if r.status != "ok"]
    aggregates["missing_folds"] = missing
    if not missing:
        status = "ok"
    elif strict or len(missing) == len(records):
        status = "failed"
    else:
        status = "partial"
    return records, aggregates, status


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
