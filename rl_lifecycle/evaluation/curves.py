"""The fold equity curves a report keeps beside it (Parquet, one per fold): written once, read back as returns.

A report's curves live in the database (`rl_equity_curves`, URI `db:<curve key>`), so any worker can read
what another wrote (issue 19: no shared disk). Core tests and benchmarks may keep them as files instead
(`file_curve_writer`); a reader takes both kinds of URI.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import polars as pl
import psycopg

from rl_lifecycle.evaluation.backtest import FoldResult
from rl_lifecycle.evaluation.metrics import simple_returns

DB_SCHEME = "db"
# (backtest index, its result, the buy-and-hold curve) -> the curve's URI
CurveWriter = Callable[[int, FoldResult, np.ndarray], str]


def curve_frame(result: FoldResult, buy_and_hold: np.ndarray) -> pl.DataFrame:
    """The fold's bars: close time, close, equity, position, the buy-and-hold and the flat curves."""
    return pl.DataFrame({
        "ts": pl.Series(result.close_ts, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "close": result.close, "equity": result.equity, "position": result.positions.astype(np.int8),
        "buy_and_hold": buy_and_hold, "flat": np.full(len(result.close), result.starting_balance),
    })


def database_curve_writer(conn: psycopg.Connection, prefix: str) -> CurveWriter:
    """Curves stored as `<prefix>/fold-<index>` in `rl_equity_curves` (one statement each: whole or absent;
    a rerun of the same evaluation replaces them)."""
    def write(index: int, result: FoldResult, buy_and_hold: np.ndarray) -> str:
        buffer = io.BytesIO()
        curve_frame(result, buy_and_hold).write_parquet(buffer)
        key = f"{prefix}/fold-{index}"
        conn.execute(
            """INSERT INTO rl_equity_curves (curve_key, content) VALUES (%s, %s)
               ON CONFLICT (curve_key) DO UPDATE SET content = EXCLUDED.content, written_at = now()""",
            (key, buffer.getvalue()),
        )
        return f"{DB_SCHEME}:{key}"
    return write


def file_curve_writer(directory: Path) -> CurveWriter:
    """Curves as Parquet files `fold-<index>.parquet` under `directory` (readers never see half a file)."""
    def write(index: int, result: FoldResult, buy_and_hold: np.ndarray) -> str:
        path = directory / f"fold-{index}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
        os.close(handle)
        curve_frame(result, buy_and_hold).write_parquet(temporary)
        os.replace(temporary, path)
        return path.resolve().as_uri()
    return write


def read_curve(conn: psycopg.Connection, uri: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    """The curve at `uri` (`db:<key>`, `file:///...` or a plain path); None when it is gone."""
    parts = urlsplit(uri)
    if parts.scheme == DB_SCHEME:
        row = conn.execute("SELECT content FROM rl_equity_curves WHERE curve_key = %s", (parts.path,)).fetchone()
        return None if row is None else pl.read_parquet(io.BytesIO(row[0]), columns=columns)
    path = Path(unquote(parts.path)) if parts.scheme in ("", "file") else Path(uri)
    return pl.read_parquet(path, columns=columns) if path.is_file() else None


def curve_returns(conn: psycopg.Connection, uri: str) -> np.ndarray | None:
    """The per-bar net returns (after fees) of the equity curve at `uri`; None when it is gone."""
    frame = read_curve(conn, uri, columns=["equity"])
    return None if frame is None else simple_returns(frame["equity"].to_numpy())


def fold_returns(conn: psycopg.Connection, report) -> dict[int, np.ndarray]:
    """Per completed fold of a stored report (`EvaluationReport`): its per-bar net returns (after fees)
    from the equity curve, bar by bar over the fold's test range. Folds whose curve is gone are left out."""
    out: dict[int, np.ndarray] = {}
    for fold in report.folds:
        if fold.status != "ok" or not fold.equity_curve_uri:
            continue
        returns = curve_returns(conn, fold.equity_curve_uri)
        if returns is not None:
            out[int(fold.index)] = returns
    return out
