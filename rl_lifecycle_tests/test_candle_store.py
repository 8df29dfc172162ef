"""market_candles: idempotent upserts, concurrent writers, range reads, gaps."""

from __future__ import annotations

import multiprocessing

import numpy as np
import psycopg

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.gaps import find_gaps
from rl_lifecycle.candles.service import ingest_synthetic, load_window, summarize_window
from rl_lifecycle.candles.store import load_candles, load_candles_with_warmup, upsert_candles
from rl_lifecycle.candles.synthetic import synthetic_candles
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market, get_market
from rl_lifecycle.windows import WindowScheme, to_us

BTC = Market("BTCUSDT", "1h")
H = BTC.interval_us
MARCH = WindowScheme("monthly").parse("2024-03-01")


def _count(conn) -> int:
    return conn.execute("SELECT count(*) FROM market_candles").fetchone()[0]


def test_upsert_is_idempotent_and_updates_only_changed_rows(conn):
    add_market(conn, BTC)
    frame = synthetic_candles(BTC, MARCH.start, MARCH.end, seed=7)
    first = upsert_candles(conn, BTC, frame)
    assert (first.inserted, first.updated, first.unchanged) == (frame.height, 0, 0)
    before = conn.execute("SELECT max(ingested_at) FROM market_candles").fetchone()[0]
    again = upsert_candles(conn, BTC, frame)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, frame.height)
    assert conn.execute("SELECT max(ingested_at) FROM market_candles").fetchone()[0] == before
    changed = frame.with_columns(frame["volume"].scatter(10, 123.0))
    third = upsert_candles(conn, BTC, changed)
    assert (third.inserted, third.updated) == (0, 1)


def test_reads_return_exactly_what_was_written(conn):
    add_market(conn, BTC)
    frame = synthetic_candles(BTC, MARCH.start, MARCH.end, seed=7)
    upsert_candles(conn, BTC, frame)
    stored = load_candles(conn, BTC, MARCH.start, MARCH.end)
    assert stored.checksum() == CandleArrays.from_frame(frame).checksum()
    with_warmup = load_candles_with_warmup(conn, BTC, MARCH.start + 100 * H, MARCH.end, warmup_rows=30)
    assert len(with_warmup) == frame.height - 70
    assert with_warmup.ts[0] == MARCH.start + 70 * H


def _ingest_in_process(args) -> int:
    url, start, end = args
    with psycopg.connect(url, autocommit=True) as conn:
        return ingest_synthetic(conn, BTC, start, end, seed=7).inserted


def test_two_processes_ingesting_the_same_window(conn, database_url):
    add_market(conn, BTC)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        inserted = pool.map(_ingest_in_process, [(database_url, MARCH.start, MARCH.end)] * 2)
    expected = (MARCH.end - MARCH.start) // H
    assert sorted(inserted) == [0, expected]  # one writer inserted everything, the other found it there
    assert _count(conn) == expected


def test_gaps_are_reported_never_filled(conn):
    add_market(conn, BTC)
    frame = synthetic_candles(BTC, MARCH.start, MARCH.end, seed=7)
    holes = frame.filter(~frame["ts"].dt.epoch("us").is_in([MARCH.start + k * H for k in (5, 6, 7, 100)]))
    upsert_candles(conn, BTC, holes)
    summary = summarize_window(conn, BTC, MARCH)
    assert summary.rows == frame.height - 4
    assert [(g.start_us, g.missing_bars) for g in summary.gaps] == [(MARCH.start + 5 * H, 3), (MARCH.start + 100 * H, 1)]
    assert _count(conn) == frame.height - 4


def test_find_gaps_at_the_edges():
    ts = np.array([to_us("2024-03-01T02:00"), to_us("2024-03-01T03:00")])
    gaps = find_gaps(ts, H, to_us("2024-03-01"), to_us("2024-03-01T05:00"))
    assert [(g.missing_bars) for g in gaps] == [2, 1]


def test_load_window_generates_synthetic_markets_and_refuses_empty_import_markets(conn):
    add_market(conn, BTC, source="synthetic", seed=7)
    stats, summary = load_window(conn, get_market(conn, BTC), MARCH)
    assert stats.inserted == summary.rows == 31 * 24
    stats, _ = load_window(conn, get_market(conn, BTC), MARCH)
    assert stats.inserted == 0 and stats.unchanged == 31 * 24
    eth = Market("ETHUSDT", "1h")
    add_market(conn, eth)
    import pytest

    from rl_lifecycle.errors import UserInputError

    with pytest.raises(UserInputError, match="no candles stored for ETHUSDT-1h"):
        load_window(conn, get_market(conn, eth), MARCH)


def test_the_bar_still_open_is_never_stored():
    from rl_lifecycle.candles.service import window_bounds_until_now

    now = MARCH.start + 10 * H + 123  # 10:00:00.000123 on March 1st: the 10:00 bar is still open
    assert window_bounds_until_now(BTC, MARCH, now) == (MARCH.start, MARCH.start + 10 * H)


def test_a_file_cannot_be_imported_into_a_synthetic_market(conn, tmp_path):
    import pytest

    from rl_lifecycle.candles.service import ingest_file
    from rl_lifecycle.errors import UserInputError

    add_market(conn, BTC, source="synthetic", seed=7)
    path = tmp_path / "x.csv"
    path.write_text("Time,Open,High,Low,Close,Volume\n2024-03-01 00:00:00,1,1,1,1,1\n")
    with pytest.raises(UserInputError, match="synthetic"):
        ingest_file(conn, BTC, path)
    assert _count(conn) == 0


def test_warmup_spans_enough_windows_for_the_longest_interval():
    day = Market("BTCUSDT", "1d").interval_us
    assert WindowScheme("monthly").windows_for_bars(200, day) == 8  # 200 days over 28-day Februaries
    assert WindowScheme("weekly").windows_for_bars(200, H) == 2
    assert WindowScheme("daily").windows_for_bars(0, day) == 0


def test_column_reads_equal_binary_copy_whatever_order_the_rows_come_in(conn):
    from psycopg import sql

    from rl_lifecycle.candles import store
    from rl_lifecycle.db import binary_copy as bc

    add_market(conn, BTC)
    ingest_synthetic(conn, BTC, MARCH.start, MARCH.end, seed=7)
    base = "SELECT ts, open, high, low, close, volume FROM market_candles WHERE pair = 'BTCUSDT'"
    expected = bc.copy_out(conn, sql.SQL(base + " ORDER BY ts"), store._FIELDS)
    for order in ("ts", "ts DESC", "close"):  # the reader restores ascending ts, every column aligned
        columns = bc.read_columns(conn, sql.SQL(f"{base} ORDER BY {order}"), store._FIELDS, order_by="ts")
        for name in expected.dtype.names:
            if not name.startswith("_"):
                assert np.array_equal(columns[name], expected[name]), (order, name)
    empty = bc.read_columns(conn, sql.SQL(base + " AND false"), store._FIELDS, order_by="ts")
    assert all(len(v) == 0 for v in empty.values())
