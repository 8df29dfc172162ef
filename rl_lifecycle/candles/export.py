"""Export a market's stored candles as a CSV that `rl-lifecycle ingest` (and the inbox) read back exactly.

The format is the importer's generic OHLCV layout: a header `timestamp,open,high,low,close,volume`, one
row per candle sorted by open time, the time as ISO 8601 UTC (`2024-07-01T00:00:00Z`; microseconds only
when a candle has them) and the values in their shortest round-trip decimal form, so an export ingested
into another market stores bit-identical rows.

The file is written atomically: into a hidden `.NAME.*.partial` beside it, then renamed over NAME, so a
reader (or the inbox, which ignores hidden and `.partial` names) never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import psycopg

from rl_lifecycle.candles.frame import VALUE_COLUMNS
from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.markets.keys import Market

HEADER = ("timestamp", *VALUE_COLUMNS)


def candles_csv_frame(conn: psycopg.Connection, market: Market, start_us: int, end_us: int) -> pl.DataFrame:
    """The candles with start <= ts < end as the export's columns (empty when none are stored); polars
    writes Float64 in the shortest form that parses back to the same double."""
    arrays = load_candles(conn, market, start_us, end_us)
    whole_seconds = bool(np.all(arrays.ts % 1_000_000 == 0))
    fmt = "%Y-%m-%dT%H:%M:%SZ" if whole_seconds else "%Y-%m-%dT%H:%M:%S%.6fZ"
    frame = arrays.to_frame()
    return frame.select(pl.col("ts").dt.strftime(fmt).alias("timestamp"), *VALUE_COLUMNS)


def write_csv_atomically(frame: pl.DataFrame, path: str | Path) -> None:
    """Write `frame` to `path` through a hidden temporary file renamed over it (same directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            frame.write_csv(out, include_header=True, quote_style="necessary")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_candles(conn: psycopg.Connection, market: Market, start_us: int, end_us: int, path: str | Path) -> int:
    """Write the candles of [start_us, end_us) to `path` (atomically); returns how many were written."""
    frame = candles_csv_frame(conn, market, start_us, end_us)
    if frame.height:
        write_csv_atomically(frame, path)
    return frame.height
