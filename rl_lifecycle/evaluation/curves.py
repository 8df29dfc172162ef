"""The fold equity curves a report keeps beside it (Parquet, one file per fold), read back as returns."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import polars as pl

from rl_lifecycle.evaluation.metrics import simple_returns


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
            out[int(fold.index)] = simple_returns(pl.read_parquet(path, columns=["equity"])["equity"].to_numpy())
    return out
