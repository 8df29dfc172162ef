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


def read_curves(conn: psycopg.Connection, uris: list[str], columns: list[str] | None = None,
                ) -> dict[str, pl.DataFrame | None]:
    """The curves at `uris` (`db:<key>`, `file:///...` or a plain path), the database's in one query; None
    for a curve that is gone. Another scheme is refused (a curve silently missing would leave its folds out
    of the paired test and the PBO)."""
    out: dict[str, pl.DataFrame | None] = {}
    keys: dict[str, str] = {}
    for uri in uris:
        parts = urlsplit(uri)
        if parts.scheme == DB_SCHEME:
            keys[parts.path] = uri
        elif parts.scheme in ("", "file"):
            path = Path(unquote(parts.path))
            out[uri] = pl.read_parquet(path, columns=columns) if path.is_file() else None
        else:
            raise ValueError(f"equity curve {uri}: not a db: or file: URI")
    if keys:
        found = dict(conn.execute("SELECT curve_key, content FROM rl_equity_curves WHERE curve_key = ANY(%s)",
                                  (list(keys),)).fetchall())
        for key, uri in keys.items():
            out[uri] = None if key not in found else pl.read_parquet(io.BytesIO(found[key]), columns=columns)
    return out


def read_curve(conn: psycopg.Connection, uri: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    """The curve at `uri`; None when it is gone."""
    return read_curves(conn, [uri], columns)[uri]


def curves_returns(conn: psycopg.Connection, uris: list[str]) -> dict[str, np.ndarray | None]:
    """The per-bar net returns (after fees) of the equity curves at `uris`; None for one that is gone."""
    return {uri: None if frame is None else simple_returns(frame["equity"].to_numpy())
            for uri, frame in read_curves(conn, uris, columns=["equity"]).items()}


def fold_returns(conn: psycopg.Connection, report) -> dict[int, np.ndarray]:
    """Per completed fold of a stored report (`EvaluationReport`): its per-bar net returns (after fees)
    from the equity curve, bar by bar over the fold's test range. Folds whose curve is gone are left out."""
    folds = {int(f.index): f.equity_curve_uri for f in report.folds if f.status == "ok" and f.equity_curve_uri}
    returns = curves_returns(conn, list(folds.values()))
    return {index: returns[uri] for index, uri in folds.items() if returns[uri] is not None}
