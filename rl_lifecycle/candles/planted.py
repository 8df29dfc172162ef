"""Candles for markets whose answer is known in advance: a planted, learnable edge, or none at all (the
demo's `EDGEDEMO-1h`, the promotion end-to-end test).

* `oscillating_candles`: the log price is a clean periodic oscillation (a sine of `period` bars and
  `amplitude` in log terms) on top of a small Gaussian random walk. The oscillation is predictable
  from the bars before it: momentum and oscillator features (RSI, STOCH, ROC, MACD histogram, EMA
  distance in `ta_v2`) tell the phase, and the phase tells the sign of the next return. Over a test
  range of many periods buy-and-hold earns about nothing (the sine comes back to where it was),
  while holding only the upswings earns about 2 x amplitude per period, far above the 10 bps a
  round trip costs.
* `random_walk_candles`: i.i.d. Gaussian log returns, no drift: nothing a policy sees predicts the
  next return, so no policy beats flat or buy-and-hold after fees except by luck.

Both are deterministic functions of their arguments (numpy's PCG64 with a fixed seed) and
`write_candle_csv` writes them in the generic OHLCV layout `rl-lifecycle ingest` reads.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.windows import to_us

HOUR_US = 3_600_000_000


def _bar_times(start: str, end: str, interval_us: int) -> np.ndarray:
    return np.arange(to_us(start), to_us(end), interval_us, dtype=np.int64)


def _from_log_closes(ts: np.ndarray, log_close: np.ndarray, rng: np.random.Generator, price: float,
                     wick: float) -> CandleArrays:
    """Candles whose closes follow `log_close`: open = previous close, wicks a little beyond the body."""
    close = price * np.exp(log_close)
    open_ = np.empty_like(close)
    open_[0] = close[0]
    open_[1:] = close[:-1]
    body_top, body_bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = body_top * (1.0 + wick * rng.random(len(ts)))
    low = body_bottom * (1.0 - wick * rng.random(len(ts)))
    volume = 1_000.0 * rng.lognormal(0.0, 0.3, len(ts))
    return CandleArrays(ts, open_, high, low, close, volume)


def oscillating_candles(
    start: str, end: str, *, period: float = 32.0, amplitude: float = 0.05, noise: float = 0.002,
    seed: int = 1, price: float = 100.0, interval_us: int = HOUR_US,
) -> CandleArrays:
    """Bars in [start, end) whose log close is `amplitude * sin(2 pi t / period)` plus a random walk of
    per-bar standard deviation `noise` (t counts bars from the start)."""
    ts = _bar_times(start, end, interval_us)
    rng = np.random.default_rng(seed)
    t = np.arange(len(ts), dtype=np.float64)
    walk = np.cumsum(rng.normal(0.0, noise, len(ts)))
    log_close = amplitude * np.sin(2.0 * math.pi * t / period) + walk
    return _from_log_closes(ts, log_close, rng, price, wick=noise)


def random_walk_candles(
    start: str, end: str, *, sigma: float = 0.01, seed: int = 2, price: float = 100.0, interval_us: int = HOUR_US,
) -> CandleArrays:
    """Bars in [start, end) whose log returns are i.i.d. N(0, sigma^2)."""
    ts = _bar_times(start, end, interval_us)
    rng = np.random.default_rng(seed)
    log_close = np.cumsum(rng.normal(0.0, sigma, len(ts)))
    return _from_log_closes(ts, log_close, rng, price, wick=sigma / 2)


def write_candle_csv(path: Path, candles: CandleArrays) -> Path:
    """A generic OHLCV CSV (`timestamp,open,high,low,close,volume`, ISO-8601 UTC times)."""
    stamps = [datetime.fromtimestamp(int(t) // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in candles.ts]
    lines = ["timestamp,open,high,low,close,volume"]
    lines += [f"{s},{o:.6f},{h:.6f},{lo:.6f},{c:.6f},{v:.3f}" for s, o, h, lo, c, v in zip(
        stamps, candles.open, candles.high, candles.low, candles.close, candles.volume, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
