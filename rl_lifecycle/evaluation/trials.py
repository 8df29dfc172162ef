"""The probability of backtest overfitting over a market's trials: which stored evaluations share a
report's test bars, their per-bar returns side by side, and the PBO of choosing the best of them.

A trial joins the matrix when its completed backtests test exactly the report's test spans (the same
bars in time, whatever its dataset, spec or seed): every evaluation on one partition's folds, the
champion's included. Each column is one trial's return per tested bar (`metrics.returns_by_bar`, a
CPCV bar's paths averaged), read from its equity curve files; a trial whose files are gone is left out.
Fewer than two trials leave nothing chosen among: no PBO (null), and its gate passes saying so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import psycopg

from rl_lifecycle.evaluation.curves import curves_returns
from rl_lifecycle.evaluation.metrics import returns_by_bar
from rl_lifecycle.evaluation.overfitting import probability_of_backtest_overfitting
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import to_us

MAX_PARTITIONS = 16  # S of Bailey et al.: C(16, 8) = 12,870 combinations
MIN_ROWS_PER_PARTITION = 8

Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TrialMatrix:
    """Per-bar returns (T bars x N trials) of the trials on one set of test spans, columns in `report_ids` order."""

    returns: np.ndarray
    report_ids: tuple[int | None, ...]

    @property
    def n_trials(self) -> int:
        return self.returns.shape[1]


def partitions_for(n_bars: int) -> int | None:
    """The CSCV block count S: 16, or fewer (even) when the bars cannot fill 16 blocks of 8; None below 2 blocks."""
    for s in range(MAX_PARTITIONS, 1, -2):
        if n_bars // s >= MIN_ROWS_PER_PARTITION:
            return s
    return None


def pbo_of(matrix: TrialMatrix) -> dict:
    """The PBO of the trials with what it was computed from; `pbo` null when it cannot be (one trial, too few bars)."""
    n_bars, n_trials = matrix.returns.shape
    partitions = partitions_for(n_bars)
    base = {"n_trials": n_trials, "n_bars": n_bars, "n_partitions": partitions, "report_ids": list(matrix.report_ids)}
    if n_trials < 2 or partitions is None:
        reason = (f"{n_trials} trial(s) on these test bars: PBO needs two to choose among" if n_trials < 2
                  else f"{n_bars} test bars: too few for two blocks of {MIN_ROWS_PER_PARTITION}")
        return {**base, "pbo": None, "reason": reason}
    result = probability_of_backtest_overfitting(matrix.returns, partitions, "sharpe")
    return {**base, "pbo": result.pbo, "n_combinations": result.n_combinations,
            "degradation_slope": result.degradation_slope, "prob_oos_loss": result.prob_oos_loss}


def matrix_of(columns: Iterable[tuple[int | None, np.ndarray]]) -> TrialMatrix:
    """Trials on the same test bars side by side (a column of another length tested other bars: refused)."""
    columns = [(rid, np.asarray(r, dtype=np.float64)) for rid, r in columns]
    if len({len(r) for _, r in columns}) > 1:
        raise ValueError(f"trial series of lengths {sorted({len(r) for _, r in columns})}: not the same test bars")
    returns = np.column_stack([r for _, r in columns]) if columns else np.empty((0, 0))
    return TrialMatrix(returns, tuple(rid for rid, _ in columns))


def bar_returns_of(conn: psycopg.Connection,
                   backtests: Iterable[tuple[tuple[int, int], str, str | None]]) -> np.ndarray | None:
    """One trial's return per tested bar from its backtests' (test span, status, curve URI); None when a
    completed backtest's curve is missing."""
    done = [(span, uri) for span, status, uri in backtests if status == "ok"]
    if not done or not all(uri for _, uri in done):
        return None
    returns = curves_returns(conn, [uri for _, uri in done])
    if any(r is None for r in returns.values()):
        return None
    return returns_by_bar((span, returns[uri]) for span, uri in done)


def tested_spans(backtests: Iterable[tuple[tuple[int, int], str, str | None]]) -> Spans:
    return tuple(sorted({tuple(span) for span, status, _ in backtests if status == "ok"}))


def stored_trial_matrix(conn: psycopg.Connection, market: Market, test_spans: Spans, *,
                        excluding_key: str | None = None,
                        extra: Iterable[tuple[int | None, np.ndarray]] = ()) -> TrialMatrix:
    """Every stored evaluation of the market (but `excluding_key`) whose completed backtests test exactly
    `test_spans` (epoch us, [start, end)), one column each, then the `extra` columns (a report not stored
    yet). A report whose curves are gone is left out."""
    rows = conn.execute(
        """SELECT f.report_id, f.test_span, f.status, f.equity_curve_uri
           FROM evaluation_folds f JOIN evaluation_reports r ON r.id = f.report_id
           WHERE r.pair = %s AND r.interval = %s AND r.evaluation_key IS DISTINCT FROM %s
           ORDER BY f.report_id, f.fold_index""",
        (market.pair, market.interval, excluding_key),
    ).fetchall()
    by_report: dict[int, list] = {}
    for report_id, span, status, uri in rows:
        by_report.setdefault(int(report_id), []).append(((to_us(span[0]), to_us(span[1])), status, uri))
    wanted = tuple(sorted(test_spans))
    columns = []
    for report_id, backtests in by_report.items():
        if tested_spans(backtests) == wanted and (returns := bar_returns_of(conn, backtests)) is not None:
            columns.append((report_id, returns))
    return matrix_of([*columns, *extra])


def record_backtests(records) -> list[tuple[tuple[int, int], str, str | None]]:
    """(test span, status, curve URI) of a report's records (`FoldRecord`s)."""
    return [((int(f.test_span[0]), int(f.test_span[1])), f.status, f.equity_curve_uri) for f in records]


def trials_on_bars_of(conn: psycopg.Connection, market: Market, records, *, excluding_key: str | None = None,
                      own: bool = False) -> TrialMatrix:
    """The market's stored trials on the test bars of a report's `records` (but `excluding_key`); with
    `own`, the records' own returns as the last column (a report being assembled, not stored yet)."""
    backtests = record_backtests(records)
    extra = bar_returns_of(conn, backtests) if own else None
    return stored_trial_matrix(conn, market, tested_spans(backtests), excluding_key=excluding_key,
                               extra=[] if extra is None else [(None, extra)])


def report_pbo(conn: psycopg.Connection, market: Market, records, *, excluding_key: str | None = None) -> dict:
    """The PBO over the market's trials on the test bars of `records`, the report they belong to included
    as one trial whether stored yet or not (`excluding_key`: its evaluation key, so a rerun counts once)."""
    return pbo_of(trials_on_bars_of(conn, market, records, excluding_key=excluding_key, own=True))
