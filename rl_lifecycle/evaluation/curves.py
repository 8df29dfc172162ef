"""The fold equity curves a report keeps beside it (Parquet, one file per fold): written once, read back as returns."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import polars as pl

from rl_lifecycle.evaluation.backtest import FoldResult
from rl_lifecycle.evaluation.metrics import simple_returns


def write_equity_curve(path: Path, result: FoldResult, buy_and_hold: np.ndarray) -> str:
    """Parquet with the fold's bars: close time, close, equity, position and the buy-and-hold curve."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({
        "ts": pl.Series(result.close_ts, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "close": result.close, "equity": result.equity, "position": result.positions.astype(np.int8),
        "buy_and_hold": buy_and_hold, "flat": np.full(len(result.close), result.starting_balance),
    })
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
    os.close(handle)
    frame.write_parquet(temporary)
    os.replace(temporary, path)  # readers never see half a file; a rerun replaces it whole
    return path.resolve().as_uri()


def curve_path(uri: str) -> Path:
    """The local file of an equity curve's URI (`file:///...`, or a plain path)."""
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme in ("", "file") else Path(uri)


def fold_returns(report) -> dict[int, np.ndarray]:
    """Per completed fold of a stored report (`EvaluationReport`): its per-bar net returns (after fees)
    from the equity curve, bar by bar over the fold's test range. Folds whose curve is missing are left out."""
    out: dict[int, np.ndarray] = {}
    for fold in report.folds:
        if fold.status != "ok" or not fold.equity_curve_uri:
            continue
        path = curve_path(fold.equity_curve_uri)
        if path.is_file():
            out[int(fold.index)] = curve_returns(path)
    return out


def curve_returns(path: Path) -> np.ndarray:
    """The per-bar net returns (after fees) of the equity curve file at `path`."""
    return simple_returns(pl.read_parquet(path, columns=["equity"])["equity"].to_numpy())
