"""CandleInputCache: a long-lived decider's open-window candles always equal a fresh read, whatever was written."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_lifecycle.candles.input_cache import CandleInputCache, merge_changes
from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import (
    candle_input_changes,
    load_candles_with_warmup,
    upsert_candles,
    window_input_stamps,
)
from rl_lifecycle.candles.synthetic import synthetic_arrays
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import WindowScheme, from_us

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")
FEB, MARCH = SCHEME.parse("2024-02-01"), SCHEME.parse("2024-03-01")
WARMUP = 48
HOUR = BTC.interval_us


def _same(a, b) -> bool:
    return len(a) == len(b) and a.checksum() == b.checksum()


def _read(cache, conn, end_us=MARCH.end, window=MARCH):
    return cache.read(conn, BTC, window.start, window.end, end_us, WARMUP)


def _fresh(conn, end_us=MARCH.end, window=MARCH):
    return load_candles_with_warmup(conn, BTC, window.start, end_us, WARMUP)


@pytest.fixture
def btc(conn):
    ingest_synthetic(conn, BTC, FEB.start, MARCH.start + 100 * HOUR, seed=3)
    return conn


def _edit(conn, ts_us: int, factor: float) -> None:
    conn.execute("UPDATE market_candles SET close = close * %s, high = greatest(high, close * %s) "
                 "WHERE pair = %s AND interval = %s AND ts = %s", (factor, factor, BTC.pair, BTC.interval,
                                                                     from_us(ts_us)))


def test_new_and_corrected_candles_arrive_without_a_full_read(btc):
    cache = CandleInputCache()
    assert _same(_read(cache, btc), _fresh(btc))
    upsert_candles(btc, BTC, synthetic_arrays(BTC, MARCH.start + 100 * HOUR, MARCH.start + 103 * HOUR, 3).to_frame())
    assert _same(_read(cache, btc), _fresh(btc))
    _edit(btc, MARCH.start + 5 * HOUR, 1.01)  # a correction inside the window
    _edit(btc, MARCH.start - 3 * HOUR, 1.02)  # and one in the warmup
    got = _read(cache, btc)
    assert _same(got, _fresh(btc)) and len(got) == WARMUP + 103
    assert cache.full_reads == 1


def test_a_deleted_candle_or_a_shifted_warmup_is_noticed(btc):
    cache = CandleInputCache()
    _read(cache, btc)
    btc.execute("DELETE FROM market_candles WHERE ts = %s", (from_us(MARCH.start + 7 * HOUR),))
    assert _same(_read(cache, btc), _fresh(btc))
    btc.execute("DELETE FROM market_candles WHERE ts = %s", (from_us(MARCH.start - 10 * HOUR),))
    assert _same(_read(cache, btc), _fresh(btc))  # one more candle from before the warmup joins the input
    upsert_candles(btc, BTC, synthetic_arrays(BTC, MARCH.start - 10 * HOUR, MARCH.start - 9 * HOUR, 3).to_frame())
    assert _same(_read(cache, btc), _fresh(btc))  # and leaves it again
    assert cache.full_reads == 4


def test_reads_take_the_prefix_up_to_end_and_a_new_window_starts_over(btc):
    cache = CandleInputCache()
    assert _same(_read(cache, btc, MARCH.start + 10 * HOUR), _fresh(btc, MARCH.start + 10 * HOUR))
    assert _same(_read(cache, btc, MARCH.start), _fresh(btc, MARCH.start))  # the warmup alone
    assert _same(_read(cache, btc, FEB.end, FEB), _fresh(btc, FEB.end, FEB))
    assert cache.full_reads == 2
    with pytest.raises(ValueError, match="outside the window"):
        _read(cache, btc, MARCH.end + HOUR)


def test_its_stamp_is_the_one_dataset_builds_compare(btc):
    _edit(btc, MARCH.start + 3 * HOUR, 1.01)
    for window in (FEB, MARCH):
        (stamp,) = window_input_stamps(btc, BTC, [(window.start, window.end)], WARMUP)
        assert candle_input_changes(btc, BTC, window.start, window.end, WARMUP, None).stamp == stamp


def test_an_emptied_market_reads_empty(btc):
    cache = CandleInputCache()
    _read(cache, btc)
    btc.execute("DELETE FROM market_candles WHERE pair = %s", (BTC.pair,))
    assert len(_read(cache, btc)) == 0


def test_merge_replaces_same_timestamps_and_keeps_order():
    held = synthetic_arrays(BTC, MARCH.start, MARCH.start + 10 * HOUR, 1)
    changed = synthetic_arrays(BTC, MARCH.start + 8 * HOUR, MARCH.start + 12 * HOUR, 2)
    merged = merge_changes(held, changed)
    assert list(merged.ts) == list(np.arange(12) * HOUR + MARCH.start)
    assert merged.close[9] == changed.close[1] and merged.close[7] == held.close[7]


_operation = st.tuples(
    st.sampled_from(["append", "edit", "delete", "reinsert"]),
    st.integers(min_value=-WARMUP - 20, max_value=140),  # bar offset from the window's anchor
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(st.lists(_operation, max_size=3), min_size=1, max_size=5))
def test_any_sequence_of_writes_reads_as_a_fresh_read(conn, operations):
    conn.execute("DELETE FROM market_candles")
    ingest_synthetic(conn, BTC, FEB.start, MARCH.start + 100 * HOUR, seed=3)
    cache = CandleInputCache()
    _read(cache, conn)
    for batch in operations:  # writes between two decisions
        for kind, offset in batch:
            ts = MARCH.start + offset * HOUR
            if kind in ("append", "reinsert"):
                upsert_candles(conn, BTC, synthetic_arrays(BTC, ts, ts + HOUR, 5 if kind == "append" else 3).to_frame())
            elif kind == "edit":
                _edit(conn, ts, 1.001)
            else:
                conn.execute("DELETE FROM market_candles WHERE ts = %s", (from_us(ts),))
        assert _same(_read(cache, conn), _fresh(conn))
