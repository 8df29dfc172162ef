"""Deterministic synthetic candles for demos, tests and benchmarks.

The price is a regime-switching random walk in log space, generated from a fixed origin
(`ORIGIN_US`, 2015-01-01 UTC) so that the candle at a timestamp is bit-identical whatever
range was requested. How:

* **Regimes** (calm / trending up / trending down / volatile) form a continuous-time Markov
  chain per (seed, pair): a jump chain with state-dependent exponential holding times of a few
  days, drawn in fixed blocks of segments and resolved with a vectorised prefix composition of
  the transition maps. All intervals of a pair share one regime timeline.
* **Chunks** of 28 days of bars (`chunk_bars`). The log-price level at each chunk start only
  depends on the chunk index: per-chunk drift and variance are integrated exactly from the regime
  segments and the weekly volatility seasonality (no per-bar work), the chunk's total move is
  drawn from a chunk-level stream, and a weak mean reversion keeps prices plausible. Inside a
  requested chunk the bars come from a Philox stream keyed by (seed, pair, interval, chunk) and
  are bridged onto the chunk's fixed total, so a chunk is always generated whole and identically.
* **Bars**: fat-tailed returns, high/low sampled from the Brownian-bridge extremes of each bar,
  prices rounded to a 0.01 tick (open == previous close exactly), log-normal volume correlated
  with the absolute return, the regime volatility and the seasonality.
"""

from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass

import numpy as np
import polars as pl

from rl_lifecycle.candles.frame import CandleArrays, empty_candles
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import MINUTE_US as _MINUTE_US
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import DAY_US as _DAY_US
from rl_lifecycle.windows import iso, to_us

ORIGIN_US = to_us("2015-01-01T00:00:00+00:00")
HORIZON_US = to_us("2100-01-01T00:00:00+00:00")
REGIMES = ("calm", "trending_up", "trending_down", "volatile")
TICK_DECIMALS = 2

_WEEK_US = 7 * _DAY_US
_CHUNK_US = 28 * _DAY_US  # a multiple of a week, so every chunk starts on the same weekday
_YEAR_US = 365.25 * _DAY_US
_TICK_SCALE = 10.0**TICK_DECIMALS
_TICK = 1.0 / _TICK_SCALE
_VOLUME_SCALE = 1e4

# Regime parameters (annualised log drift and volatility; mean holding time in minutes).
_DRIFT = np.array([0.0, 3.0, -3.0, 0.0])
_VOL = np.array([0.35, 0.55, 0.65, 1.40])
_MEAN_MINUTES = np.array([6.0, 4.0, 3.0, 2.0]) * 1440.0
# Jump chain (zero diagonal): where a regime goes when it ends.
_JUMP = np.array(
    [
        [0.00, 0.35, 0.35, 0.30],
        [0.60, 0.00, 0.10, 0.30],
        [0.50, 0.15, 0.00, 0.35],
        [0.50, 0.25, 0.25, 0.00],
    ]
)
_JUMP_CUM = np.cumsum(_JUMP, axis=1)
_SEGMENT_BLOCK = 256  # regime segments drawn per Philox stream
_CHUNK_Z_BLOCK = 1024  # chunk-level normals drawn per Philox stream
_HALF_LIFE_DAYS = 365.0  # mean reversion of the log price towards the pair's start level
_PHI = 0.5 ** ((_CHUNK_US / _DAY_US) / _HALF_LIFE_DAYS)
_JUMP_PROB, _JUMP_VAR = 0.04, 9.0  # fat tails: a few bars have 3x the volatility
_JUMP_NORM = 1.0 - _JUMP_PROB + _JUMP_PROB * _JUMP_VAR


@dataclass(frozen=True)
class PairProfile:
    """Deterministic per-pair levels: start price and daily traded notional (quote currency)."""

    start_price: float
    daily_notional: float


def pair_profile(pair: str) -> PairProfile:
    """Start price (BTC ~40000, ETH ~2500, others 50..200) and notional, derived from the pair name."""
    u = _key("profile", pair) / 2.0**128
    if pair.startswith("BTC"):
        return PairProfile(40_000.0, 1.5e9)
    if pair.startswith("ETH"):
        return PairProfile(2_500.0, 8e8)
    return PairProfile(round(100.0 * 2.0 ** (2.0 * u - 1.0), 2), 5e7 * 2.0 ** (4.0 * u - 2.0))


def chunk_bars(interval_us: int) -> int:
    """Bars per generation chunk (28 days) for an interval."""
    return _CHUNK_US // interval_us


def synthetic_candles(market: Market, start_us: int, end_us: int, seed: int) -> pl.DataFrame:
    """Canonical candle frame with a bar at every multiple of the interval in [start_us, end_us)."""
    return synthetic_arrays(market, start_us, end_us, seed).to_frame()


def synthetic_arrays(market: Market, start_us: int, end_us: int, seed: int) -> CandleArrays:
    """Like `synthetic_candles`, as numpy column arrays."""
    gen = _Generator(market, seed)
    first, stop = gen.bar_range(start_us, end_us)
    if stop <= first:
        return CandleArrays.from_frame(empty_candles())
    parts = [gen.chunk(k) for k in range(first // gen.chunk_size, (stop - 1) // gen.chunk_size + 1)]
    base = (first // gen.chunk_size) * gen.chunk_size
    cols = {name: np.concatenate([p[name] for p in parts])[first - base : stop - base] for name in _COLUMNS}
    ts = ORIGIN_US + np.arange(first, stop, dtype=np.int64) * gen.interval_us
    return CandleArrays(ts=ts, **cols)


def synthetic_regimes(market: Market, start_us: int, end_us: int, seed: int) -> np.ndarray:
    """Regime index (into `REGIMES`) in force at the open of each bar in [start_us, end_us), int8."""
    gen = _Generator(market, seed)
    first, stop = gen.bar_range(start_us, end_us)
    if stop <= first:
        return np.empty(0, dtype=np.int8)
    return gen.regimes_of(np.arange(first, stop, dtype=np.int64)).astype(np.int8)


# ---------------------------------------------------------------------------------------------
_COLUMNS = ("open", "high", "low", "close", "volume")


def _key(*parts: object) -> int:
    """A 128-bit Philox key from a stable hash (never Python's salted `hash`)."""
    text = "|".join(str(p) for p in ("rl_lifecycle.synthetic.v1", *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=_key(*parts)))


def _as_int(name: str, value: object, what: str = "an integer") -> int:
    if isinstance(value, bool):
        raise UserInputError(f"{name} must be {what}, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError as exc:
        raise UserInputError(f"{name} must be {what}, got {value!r}") from exc


def _prefix_compose(maps: np.ndarray) -> np.ndarray:
    """Row j of the result is maps[j] o maps[j-1] o ... o maps[0] (Hillis-Steele scan)."""
    acc = maps.copy()
    step = 1
    while step < len(acc):
        acc[step:] = np.take_along_axis(acc[step:], acc[:-step], axis=1)
        step *= 2
    return acc


def _round_tick(values: np.ndarray) -> np.ndarray:
    return np.maximum(np.rint(values * _TICK_SCALE) / _TICK_SCALE, _TICK)


def _round_tick_scalar(value: float) -> float:
    return max(round(value * _TICK_SCALE) / _TICK_SCALE, _TICK)


def _season_table(interval_us: int) -> np.ndarray:
    """Variance multiplier per bar of the week (origin is a Thursday), mean exactly ~1.

    Intraday: busiest around 15:00 UTC, quietest around 03:00 (averaged over each bar);
    weekends are quieter.
    """
    bars_week = _WEEK_US // interval_us
    start_h = np.arange(bars_week, dtype=np.float64) * (interval_us / 3_600_000_000)
    width_h = interval_us / 3_600_000_000
    omega = 2.0 * np.pi / 24.0
    if width_h >= 24.0:
        mean_cos = np.zeros(bars_week)
    else:
        mean_cos = (np.sin(omega * (start_h + width_h - 15.0)) - np.sin(omega * (start_h - 15.0))) / (
            omega * width_h
        )
    weekday = (3 + (start_h // 24.0).astype(np.int64)) % 7  # 1970 and 2015-01-01 were Thursdays
    weekend = np.where(weekday >= 5, 0.6, 1.0)
    g = (1.0 + 0.45 * mean_cos) * weekend
    return g * (bars_week / g.sum())


class _Generator:
    """Everything derived from (seed, pair, interval); chunk-level state is computed from the origin."""

    def __init__(self, market: Market, seed: int) -> None:
        self.pair = market.pair
        self.interval = market.interval
        self.interval_us = market.interval_us
        self.seed = _as_int("seed", seed)
        self.chunk_size = chunk_bars(self.interval_us)
        self.dt = self.interval_us / _YEAR_US
        self.profile = pair_profile(self.pair)
        self.season = _season_table(self.interval_us)
        self.season_dev = np.concatenate([[0.0], np.cumsum(self.season)[:-1]]) - np.arange(len(self.season))
        self.seg_start_bar = np.zeros(0, dtype=np.int64)
        self.seg_regime = np.zeros(0, dtype=np.int64)
        self.levels: list[float] = []  # log price at the start of chunk k

    # -- range ----------------------------------------------------------------------------------
    def bar_range(self, start_us: object, end_us: object) -> tuple[int, int]:
        us = "integer epoch microseconds (UTC)"
        start, end = _as_int("start_us", start_us, us), _as_int("end_us", end_us, us)
        if start >= end:
            raise UserInputError(
                f"synthetic range is empty: start_us={start} ({iso(start)}) must be before end_us={end} ({iso(end)})"
            )
        if start < ORIGIN_US:
            raise UserInputError(
                f"synthetic candles start at {iso(ORIGIN_US)}: start_us={start} ({iso(start)}) is before the origin"
            )
        if end > HORIZON_US:
            raise UserInputError(
                f"synthetic candles end by {iso(HORIZON_US)}: end_us={end} ({iso(end)}) is beyond that horizon"
            )
        first = -((ORIGIN_US - start) // self.interval_us)  # ceil((start - origin) / interval)
        stop = -((ORIGIN_US - end) // self.interval_us)
        if stop > first:
            self._prepare(((stop - 1) // self.chunk_size) + 1)
        return first, stop

    # -- regimes --------------------------------------------------------------------------------
    def _regime_segments(self, need_minutes: int) -> None:
        """Regime segments from the origin, in whole blocks, until they cover `need_minutes`."""
        starts: list[np.ndarray] = []
        regimes: list[np.ndarray] = []
        state, total, block = 0, 0, 0
        while total <= need_minutes:
            rng = _rng("regime", self.seed, self.pair, block)
            u = rng.random(_SEGMENT_BLOCK)
            hold = rng.standard_exponential(_SEGMENT_BLOCK)
            maps = np.minimum((u[:, None, None] >= _JUMP_CUM[None, :, :]).sum(axis=2), len(REGIMES) - 1)
            states = _prefix_compose(maps)[:, state]
            minutes = np.maximum(np.ceil(_MEAN_MINUTES[states] * hold), 1.0).astype(np.int64)
            ends = total + np.cumsum(minutes)
            starts.append(ends - minutes)
            regimes.append(states)
            state, total, block = int(states[-1]), int(ends[-1]), block + 1
        start_us = np.concatenate(starts) * _MINUTE_US
        self.seg_start_bar = -((-start_us) // self.interval_us)  # first bar opening at/after the switch
        self.seg_regime = np.concatenate(regimes)

    def regimes_of(self, bars: np.ndarray) -> np.ndarray:
        return self.seg_regime[np.searchsorted(self.seg_start_bar, bars, side="right") - 1]

    # -- chunk levels ---------------------------------------------------------------------------
    def _prepare(self, n_chunks: int) -> None:
        """Regimes and the start level of chunks 0..n_chunks (each depends only on its index)."""
        end_bar = n_chunks * self.chunk_size
        self._regime_segments(-(-end_bar * self.interval_us // _MINUTE_US))
        inside = self.seg_start_bar[self.seg_start_bar < end_bar]
        breaks = np.union1d(inside, np.arange(0, end_bar + 1, self.chunk_size, dtype=np.int64))
        a, b = breaks[:-1], breaks[1:]
        reg = self.regimes_of(a)
        p = len(self.season)
        weight = (b - a) + (self.season_dev[b % p] - self.season_dev[a % p])  # sum of season over [a, b)
        chunk = a // self.chunk_size
        var = np.bincount(chunk, _VOL[reg] ** 2 * self.dt * weight, minlength=n_chunks)
        drift = np.bincount(chunk, _DRIFT[reg] * self.dt * (b - a), minlength=n_chunks)
        n_blocks = -(-n_chunks // _CHUNK_Z_BLOCK)
        z = np.concatenate(
            [
                _rng("chunk", self.seed, self.pair, self.interval, i).standard_normal(_CHUNK_Z_BLOCK)
                for i in range(n_blocks)
            ]
        )
        log0 = math.log(self.profile.start_price)
        dev = 0.0
        levels = [log0]
        for k in range(n_chunks):  # one step per 28-day chunk, not per bar
            dev = _PHI * dev + (float(drift[k]) + math.sqrt(float(var[k])) * float(z[k]))
            levels.append(log0 + dev)
        self.levels = levels

    # -- bars -----------------------------------------------------------------------------------
    def chunk(self, k: int) -> dict[str, np.ndarray]:
        """All bars of chunk k, always generated whole so their bits never depend on the request."""
        n = self.chunk_size
        bars = k * n + np.arange(n, dtype=np.int64)
        reg = self.regimes_of(bars)
        season = self.season[bars % len(self.season)]
        rng = _rng("bars", self.seed, self.pair, self.interval, k)
        eps = rng.standard_normal(n)
        jump = np.where(rng.random(n) < _JUMP_PROB, _JUMP_VAR, 1.0) / _JUMP_NORM
        u_high = rng.random(n)
        u_low = rng.random(n)
        eta = rng.standard_normal(n)

        var = _VOL[reg] ** 2 * self.dt * season * jump
        x = _DRIFT[reg] * self.dt + np.sqrt(var) * eps
        l0, l1 = self.levels[k], self.levels[k + 1]
        cum_x, cum_v = np.cumsum(x), np.cumsum(var)
        r = x + var * ((l1 - l0 - cum_x[-1]) / cum_v[-1])  # bridge onto the chunk's fixed total
        edges = np.empty(n + 1)
        edges[0] = l0
        edges[1:] = l0 + np.cumsum(r)
        edges[n] = l1
        prices = _round_tick(np.exp(edges))
        prices[0] = _round_tick_scalar(math.exp(l0))  # chunk edges: same scalar path on both sides
        prices[n] = _round_tick_scalar(math.exp(l1))
        open_, close = prices[:-1], prices[1:]

        move = edges[1:] - edges[:-1]
        up = 0.5 * (move + np.sqrt(move * move - 2.0 * var * np.log1p(-u_high)))
        down = 0.5 * (move - np.sqrt(move * move - 2.0 * var * np.log1p(-u_low)))
        high = np.maximum(_round_tick(np.exp(edges[:-1] + up)), np.maximum(open_, close))
        low = np.minimum(_round_tick(np.exp(edges[:-1] + down)), np.minimum(open_, close))

        notional = self.profile.daily_notional * (self.interval_us / _DAY_US)
        log_activity = 0.5 * np.log(_VOL[reg] ** 2 * season / _VOL[0] ** 2)
        log_volume = (
            np.log(notional / close)
            + 0.8 * log_activity
            + 0.35 * (np.abs(eps) * np.sqrt(jump) - 0.8)
            + 0.45 * eta
            - 0.5 * 0.45**2
        )
        volume = np.maximum(np.rint(np.exp(log_volume) * _VOLUME_SCALE) / _VOLUME_SCALE, 1.0 / _VOLUME_SCALE)
        return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
