"""The canonical candle frame and its numpy view.

A candle frame is a polars DataFrame with exactly these columns, sorted by `ts`:
`ts` Datetime(us, UTC) (candle open time), `open` `high` `low` `close` `volume` Float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = (*PRICE_COLUMNS, "volume")
CANDLE_SCHEMA = {"ts": pl.Datetime("us", "UTC"), **{c: pl.Float64 for c in VALUE_COLUMNS}}


def empty_candles() -> pl.DataFrame:
    return pl.DataFrame(schema=CANDLE_SCHEMA)


@dataclass(frozen=True)
class CandleArrays:
    """Column arrays of a candle frame: ts in epoch microseconds, values as contiguous float64."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> CandleArrays:
        ts = frame["ts"].dt.epoch("us").to_numpy().astype(np.int64, copy=False)
        cols = {c: np.ascontiguousarray(frame[c].to_numpy(), dtype=np.float64) for c in VALUE_COLUMNS}
        return cls(ts=np.ascontiguousarray(ts), **cols)

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"ts": pl.Series(self.ts, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
             **{c: getattr(self, c) for c in VALUE_COLUMNS}}
        )

    def slice(self, start: int, stop: int) -> CandleArrays:
        return CandleArrays(*(getattr(self, f)[start:stop] for f in ("ts", *VALUE_COLUMNS)))

    def checksum(self) -> str:
        """sha256 over the raw bytes of every column: any changed candle changes it."""
        import hashlib

        digest = hashlib.sha256()
        for name in ("ts", *VALUE_COLUMNS):
            digest.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return digest.hexdigest()
