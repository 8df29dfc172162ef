"""Synthetic candles: determinism, range independence, OHLCV invariants, regimes, refusals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rl_lifecycle.candles.frame import CANDLE_SCHEMA, CandleArrays
from rl_lifecycle.candles.synthetic import (
    ORIGIN_US,
    REGIMES,
    chunk_bars,
    pair_profile,
    synthetic_arrays,
    synthetic_candles,
    synthetic_regimes,
)
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import to_us

MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
BTC_1M = Market.of("BTCUSDT", "1m")
ETH_1H = Market.of("ETHUSDT", "1h")


def _overlap(a: pl.DataFrame, b: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    lo, hi = max(a["ts"].min(), b["ts"].min()), min(a["ts"].max(), b["ts"].max())
    pick = pl.col("ts").is_between(lo, hi)
    return a.filter(pick), b.filter(pick)


def test_frame_is_canonical() -> None:
    frame = synthetic_candles(ETH_1H, to_us("2024-01-01"), to_us("2024-01-08"), seed=1)
    assert dict(frame.schema) == CANDLE_SCHEMA
    assert frame.height == 7 * 24
    assert frame["ts"].is_sorted()


def test_same_seed_identical_different_seed_or_pair_differs() -> None:
    start, end = to_us("2023-05-01"), to_us("2023-06-01")
    a = synthetic_candles(ETH_1H, start, end, seed=42)
    assert a.equals(synthetic_candles(ETH_1H, start, end, seed=42))
    other_seed = synthetic_candles(ETH_1H, start, end, seed=43)
    other_pair = synthetic_candles(Market.of("ETHBTC", "1h"), start, end, seed=42)
    for other in (other_seed, other_pair):
        assert (a["close"] != other["close"]).mean() > 0.9


@pytest.mark.parametrize(
    ("market", "first", "second"),
    [
        # Jan..Mar then Feb..Jun (the ingest scenario)
        (ETH_1H, ("2024-01-01", "2024-04-01"), ("2024-02-01", "2024-07-01")),
        # 1m ranges crossing several 28-day chunk boundaries, unaligned with each other
        (BTC_1M, ("2015-01-20", "2015-03-10"), ("2015-02-25T13:37", "2015-04-02")),
        (BTC_1M, ("2021-06-01T00:00:30", "2021-06-03"), ("2021-05-15", "2021-06-01T12:00")),
        # starting exactly at the origin versus years later
        (Market.of("SOLUSDT", "1d"), ("2015-01-01", "2025-01-01"), ("2019-03-03", "2030-01-01")),
        (Market.of("BNBUSDT", "15m"), ("2016-02-27", "2016-03-02"), ("2016-01-01", "2016-12-31")),
    ],
)
def test_overlapping_ranges_agree_bit_for_bit(
    market: Market, first: tuple[str, str], second: tuple[str, str]
) -> None:
    a = synthetic_candles(market, to_us(first[0]), to_us(first[1]), seed=7)
    b = synthetic_candles(market, to_us(second[0]), to_us(second[1]), seed=7)
    left, right = _overlap(a, b)
    assert left.height > 0
    assert CandleArrays.from_frame(left).checksum() == CandleArrays.from_frame(right).checksum()


def test_pieces_concatenate_to_the_whole() -> None:
    """Many small requests (some crossing chunk edges) rebuild one large request exactly."""
    start, end = to_us("2018-01-01"), to_us("2018-04-01")
    whole = synthetic_candles(ETH_1H, start, end, seed=3)
    cuts = [start, start + 5 * HOUR, start + 27 * DAY + 23 * HOUR, start + 29 * DAY, to_us("2018-03-15"), end]
    pieces = pl.concat(
        [synthetic_candles(ETH_1H, a, b, seed=3) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    )
    assert pieces.equals(whole)


def test_chunk_boundary_single_bars() -> None:
    """The bar on each side of a chunk boundary is the same alone or inside a long range."""
    size = chunk_bars(BTC_1M.interval_us)
    edge = ORIGIN_US + 3 * size * MINUTE
    wide = synthetic_candles(BTC_1M, edge - 2 * DAY, edge + 2 * DAY, seed=11)
    for ts in (edge - MINUTE, edge):
        alone = synthetic_candles(BTC_1M, ts, ts + MINUTE, seed=11)
        inside = wide.filter(pl.col("ts") == alone["ts"][0])
        assert alone.equals(inside)


def test_ohlcv_invariants_on_100k_bars() -> None:
    start = to_us("2022-03-01")
    bars = synthetic_arrays(BTC_1M, start, start + 100_000 * MINUTE, seed=5)
    assert len(bars) == 100_000
    assert np.all(bars.high >= np.maximum(bars.open, bars.close))
    assert np.all(bars.low <= np.minimum(bars.open, bars.close))
    assert np.all(bars.low > 0)
    assert np.all(bars.high > bars.low)  # bars move at this tick size
    assert np.array_equal(bars.open[1:], bars.close[:-1])
    assert np.all(bars.volume > 0) and np.all(np.isfinite(bars.volume))
    for column in (bars.open, bars.high, bars.low, bars.close):  # exact 0.01 decimals
        assert np.array_equal(np.rint(column * 100) / 100, column)
    returns = np.abs(np.log(bars.close / bars.open))
    assert np.corrcoef(returns, np.log(bars.volume))[0, 1] > 0.2


@pytest.mark.parametrize(
    ("pair", "low", "high"),
    [("BTCUSDT", 40_000 / 6, 40_000 * 6), ("ETHUSDT", 2_500 / 6, 2_500 * 6), ("XYZUSDT", 5, 1_500)],
)
def test_prices_in_a_plausible_range(pair: str, low: float, high: float) -> None:
    bars = synthetic_arrays(Market.of(pair, "1d"), to_us("2015-01-01"), to_us("2026-01-01"), seed=0)
    assert low < np.median(bars.close) < high


@pytest.mark.parametrize(
    ("pair", "start_price", "daily_notional"),
    [("BTCUSDT", 40_000.0, 1.5e9), ("BTCEUR", 40_000.0, 1.5e9), ("ETHUSDT", 2_500.0, 8e8), ("ETHBTC", 2_500.0, 8e8),
     # other pairs: derived from a stable hash of the name (never Python's salted `hash`)
     ("XYZUSDT", 92.49, 42776215.784252994), ("EURUSD", 65.11, 21194626.97275769)],
)
def test_pair_profiles_are_the_documented_levels(pair: str, start_price: float, daily_notional: float) -> None:
    profile = pair_profile(pair)
    assert (profile.start_price, profile.daily_notional) == (start_price, daily_notional)
    assert pair_profile("".join(list(pair))) == profile  # another str object, same profile


def test_other_pairs_start_between_50_and_200_and_differ() -> None:
    pairs = ["XYZUSDT", "SOLUSDT", "EURUSD", "ADAUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "GBPJPY"]
    profiles = [pair_profile(p) for p in pairs]
    for profile in profiles:
        assert 50.0 <= profile.start_price < 200.0
        assert round(profile.start_price, 2) == profile.start_price
        assert 5e7 / 4 <= profile.daily_notional < 5e7 * 4
    assert len({p.start_price for p in profiles}) == len(pairs)


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "4h", "1d"])
def test_bars_aligned_to_the_interval(interval: str) -> None:
    market = Market.of("ETHUSDT", interval)
    step = market.interval_us
    start, end = to_us("2020-02-28T13:07:11"), to_us("2020-03-05T01:00:00")
    frame = synthetic_candles(market, start, end, seed=9)
    ts = frame["ts"].dt.epoch("us").to_numpy()
    assert np.all(ts % step == 0)
    assert np.all(np.diff(ts) == step)
    assert ts[0] >= start and ts[0] - step < start
    assert ts[-1] < end and ts[-1] + step >= end


def test_range_without_a_bar_is_empty() -> None:
    start = to_us("2020-01-01T00:00:10")
    frame = synthetic_candles(BTC_1M, start, start + 20_000_000, seed=1)
    assert frame.height == 0 and dict(frame.schema) == CANDLE_SCHEMA


def test_regime_switching_is_visible() -> None:
    start, end = to_us("2020-01-01"), to_us("2022-01-01")
    bars = synthetic_arrays(ETH_1H, start, end, seed=3)
    regimes = synthetic_regimes(ETH_1H, start, end, seed=3)
    assert len(regimes) == len(bars)
    assert set(np.unique(regimes)) == set(range(len(REGIMES)))
    runs = np.diff(np.flatnonzero(np.diff(regimes)))
    assert 24 < runs.mean() < 24 * 10  # persistent: regimes last days
    returns = np.log(bars.close / bars.open)
    rolling = pl.Series(returns).rolling_std(24).to_numpy()[24:]
    p5, p95 = np.percentile(rolling, [5, 95])
    assert p95 / p5 > 3
    calm, volatile = REGIMES.index("calm"), REGIMES.index("volatile")
    assert np.std(returns[regimes == volatile]) > 2.5 * np.std(returns[regimes == calm])
    assert bars.volume[regimes == volatile].mean() > bars.volume[regimes == calm].mean()
    up, down = REGIMES.index("trending_up"), REGIMES.index("trending_down")
    assert returns[regimes == up].mean() > 0 > returns[regimes == down].mean()


def test_regimes_shared_across_intervals_of_a_pair() -> None:
    start, end = to_us("2019-01-01"), to_us("2019-03-01")
    hourly = synthetic_regimes(Market.of("ETHUSDT", "1h"), start, end, seed=2)
    minutes = synthetic_regimes(Market.of("ETHUSDT", "1m"), start, end, seed=2)
    assert np.array_equal(minutes[::60], hourly)


def test_refusals_name_the_values() -> None:
    start = to_us("2020-01-01")
    with pytest.raises(UserInputError, match=f"start_us={start}.*end_us={start}"):
        synthetic_candles(BTC_1M, start, start, seed=1)
    with pytest.raises(UserInputError, match=f"start_us={start + 1}"):
        synthetic_candles(BTC_1M, start + 1, start, seed=1)
    early = ORIGIN_US - DAY
    with pytest.raises(UserInputError, match=rf"start_us={early} \(2014-12-31T00:00:00Z\).*origin"):
        synthetic_candles(BTC_1M, early, start, seed=1)
    with pytest.raises(UserInputError, match="end_us=.*horizon"):
        synthetic_candles(BTC_1M, start, to_us("2200-01-01"), seed=1)
    with pytest.raises(UserInputError, match="start_us must be integer"):
        synthetic_candles(BTC_1M, "2020-01-01", start, seed=1)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="seed"):
        synthetic_candles(BTC_1M, start, start + DAY, seed=1.5)  # type: ignore[arg-type]
