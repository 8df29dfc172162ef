"""rl_feature_snapshots on a real PostgreSQL: exact bytes, idempotent writes, window records, the gates."""

from __future__ import annotations

import numpy as np
import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.features import pipeline
from rl_lifecycle.features.checks import lookahead_violations, sample_timestamps
from rl_lifecycle.features.service import (
    check_deterministic,
    check_no_lookahead,
    check_warmup_flagged,
    compute_window,
    materialize_window,
    recompute_in_fresh_process,
    stored_window,
    window_input,
)
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.features.store import read_snapshots, register_feature_set, upsert_snapshots, window_records
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import WindowScheme

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")
FEB, MARCH, APRIL = (SCHEME.parse(k) for k in ("2024-02-01", "2024-03-01", "2024-04-01"))


@pytest.fixture
def ta_v2():
    return load_feature_set("ta_v2")


@pytest.fixture
def btc(conn):
    ingest_synthetic(conn, BTC, SCHEME.parse("2024-01-01").start, APRIL.end, seed=7)
    return conn


def _snapshot_bytes(conn) -> list[tuple]:
    return conn.execute(
        "SELECT ts, vector, is_warm, missing_mask, computed_at FROM rl_feature_snapshots ORDER BY ts"
    ).fetchall()


def test_read_returns_the_exact_bytes_written(btc, ta_v2):
    computed, stats = materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    assert stats.inserted == len(computed.frame) == 31 * 24
    stored = stored_window(btc, BTC, ta_v2, MARCH)
    assert stored.digest() == computed.frame.digest()
    assert stored.values.tobytes() == computed.frame.values.tobytes()
    assert np.array_equal(stored.missing, computed.frame.missing)
    record = window_records(btc, BTC, ta_v2.fingerprint, MARCH.start, MARCH.end)[MARCH.start]
    assert record.rows == 744 and record.content_digest == computed.frame.digest()
    assert record.candle_checksum == computed.candle_checksum
    assert record.input_rows == 744 + ta_v2.warmup


def test_rematerializing_changes_no_stored_byte(btc, ta_v2):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    before = _snapshot_bytes(btc)
    _, stats = materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    assert (stats.inserted, stats.updated, stats.deleted, stats.unchanged) == (0, 0, 0, 744)
    assert _snapshot_bytes(btc) == before  # computed_at included: untouched rows


def test_duplicate_upserts_are_idempotent_on_the_unique_key(btc, ta_v2):
    computed = compute_window(btc, BTC, ta_v2, SCHEME, MARCH)
    with pytest.raises(ValueError, match="not registered"):
        upsert_snapshots(btc, BTC, ta_v2.fingerprint, computed.frame)
    register_feature_set(btc, ta_v2)
    for _ in range(3):
        upsert_snapshots(btc, BTC, ta_v2.fingerprint, computed.frame)
    assert btc.execute("SELECT count(*) FROM rl_feature_snapshots").fetchone()[0] == 744


def test_a_later_candle_changes_nothing_in_an_earlier_window(btc, ta_v2):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    before = _snapshot_bytes(btc)
    btc.execute(
        "UPDATE market_candles SET close = close * 1.05, high = high * 1.05 WHERE ts >= %s",
        (_dt(APRIL.start),),
    )
    _, stats = materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    assert stats.updated == 0 and _snapshot_bytes(btc) == before


def _dt(ts_us: int):
    from rl_lifecycle.windows import from_us

    return from_us(ts_us)


def test_editing_a_candle_in_the_window_fails_determinism_until_rewritten(btc, ta_v2, database_url):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    edited = _dt(MARCH.start + 300 * BTC.interval_us)
    btc.execute("UPDATE market_candles SET close = close * 1.01, high = high * 1.01 WHERE ts = %s", (edited,))
    stored = stored_window(btc, BTC, ta_v2, MARCH)
    fresh = recompute_in_fresh_process(database_url, ta_v2, SCHEME, [(BTC, MARCH)])[0]
    report = check_deterministic(stored, fresh)
    assert not report.passed
    assert report.details and report.details[0]["ts"].startswith("2024-03-13T12:00")
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)  # rewrite the window
    report = check_deterministic(stored_window(btc, BTC, ta_v2, MARCH), recompute_in_fresh_process(database_url, ta_v2, SCHEME, [(BTC, MARCH)])[0])
    assert report.passed, report.summary


def test_lookahead_and_warmup_gates_pass_on_stored_snapshots(btc, ta_v2):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    stored = stored_window(btc, BTC, ta_v2, MARCH)
    assert check_no_lookahead(ta_v2, SCHEME, window_input(btc, BTC, ta_v2, MARCH), MARCH.start).passed
    assert check_warmup_flagged(stored).passed


def _logret_reading_the_next_close(close: np.ndarray, period: int) -> np.ndarray:
    """A defective LOGRET: the return from t to t + period, written at t (it reads the future)."""
    out = np.full(len(close), np.nan)
    if len(close) > period:
        out[:-period] = np.log(close[period:] / close[:-period])
    return out


def test_lookahead_gate_catches_a_feature_that_reads_the_future(btc, ta_v2, monkeypatch):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)  # honest snapshots: the gate must not rely on them
    candles = window_input(btc, BTC, ta_v2, MARCH)
    monkeypatch.setattr(pipeline, "_logret", _logret_reading_the_next_close)
    report = check_no_lookahead(ta_v2, SCHEME, candles, MARCH.start)
    assert not report.passed
    assert "logret_1" in report.summary
    assert {d["kind"] for d in report.details} == {"lookahead"}
    assert {d["variant"] for d in report.details} == {"truncated", "perturbed"}
    assert all(d["features"] == ["logret_1"] for d in report.details)
    # cut off at t, the defective feature has no next close: NaN, so the row is no longer warm
    truncated = [d for d in report.details if d["variant"] == "truncated"]
    assert all(d["is_warm"] == {"reference": True, "recomputed": False} for d in truncated)
    # 8 samples; the last row of the window has no next candle either way, so it is not flagged
    assert len(truncated) == 7
    assert int(candles.ts[-1]) not in {d["ts_us"] for d in report.details}
    monkeypatch.undo()
    assert check_no_lookahead(ta_v2, SCHEME, candles, MARCH.start).passed


def test_a_candle_edited_after_materialization_is_staleness_not_lookahead(btc, ta_v2):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    stored = stored_window(btc, BTC, ta_v2, MARCH)
    edited = sample_timestamps(stored.ts, 8, 0)[3]  # a row the lookahead gate samples (default seed 0)
    btc.execute("UPDATE market_candles SET close = close * 1.01, high = high * 1.01 WHERE ts = %s", (_dt(edited),))
    candles = window_input(btc, BTC, ta_v2, MARCH)
    # features_deterministic's comparison: the stored bytes no longer match the candles
    determinism = check_deterministic(stored, compute_window(btc, BTC, ta_v2, SCHEME, MARCH).frame)
    assert not determinism.passed and determinism.details[0]["ts_us"] == edited
    # comparing against the stored rows would call the stale row lookahead ...
    assert lookahead_violations(ta_v2, candles, SCHEME, stored, [edited], seed=0)
    # ... the gate recomputes its reference from the same candles, so the pipeline is still causal
    report = check_no_lookahead(ta_v2, SCHEME, candles, MARCH.start)
    assert report.passed, report.summary


def test_lookahead_gate_needs_candles(btc, ta_v2):
    candles = window_input(btc, BTC, ta_v2, MARCH)
    report = check_no_lookahead(ta_v2, SCHEME, candles, APRIL.end)
    assert not report.passed and "no candles from 2024-05-01" in report.summary


def test_first_window_of_history_is_flagged_not_filled(conn, ta_v2):
    ingest_synthetic(conn, BTC, MARCH.start, MARCH.end, seed=7)
    computed, _ = materialize_window(conn, BTC, ta_v2, SCHEME, MARCH)
    stored = stored_window(conn, BTC, ta_v2, MARCH)
    assert not stored.is_warm[: ta_v2.warmup].any() and stored.is_warm[ta_v2.warmup :].all()
    assert np.isnan(stored.values[0]).any() and stored.missing[0].any()
    assert check_warmup_flagged(stored).passed


def test_window_write_drops_rows_whose_candles_disappeared(btc, ta_v2):
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    btc.execute("DELETE FROM market_candles WHERE ts = %s", (_dt(MARCH.start + 10 * BTC.interval_us),))
    _, stats = materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    assert stats.deleted == 1
    assert len(read_snapshots(btc, BTC, ta_v2, MARCH.start, MARCH.end)) == 743


def test_feature_sets_are_registered_and_kept_apart(btc, ta_v2):
    core = load_feature_set("core_v1")
    materialize_window(btc, BTC, ta_v2, SCHEME, MARCH)
    materialize_window(btc, BTC, core, SCHEME, MARCH)
    names = dict(btc.execute("SELECT name, feature_names FROM feature_sets").fetchall())
    assert names["ta_v2"] == list(ta_v2.feature_names) and names["core_v1"] == list(core.feature_names)
    assert len(stored_window(btc, BTC, core, MARCH).feature_names) == len(core.feature_names)
    assert btc.execute("SELECT count(DISTINCT feature_set_id) FROM rl_feature_snapshots").fetchone()[0] == 2


def test_first_writes_and_merges_store_the_same_bytes(btc, ta_v2):
    frame = compute_window(btc, BTC, ta_v2, SCHEME, MARCH).frame
    register_feature_set(btc, ta_v2)
    half = frame.slice_ts(MARCH.start, MARCH.start + 372 * BTC.interval_us)
    first = upsert_snapshots(btc, BTC, ta_v2.fingerprint, half)  # empty range: plain insert
    assert (first.inserted, first.updated, first.unchanged) == (372, 0, 0)
    merged = upsert_snapshots(btc, BTC, ta_v2.fingerprint, frame)  # overlaps: ON CONFLICT merge
    assert (merged.inserted, merged.updated, merged.unchanged) == (372, 0, 372)
    assert read_snapshots(btc, BTC, ta_v2, MARCH.start, MARCH.end).digest() == frame.digest()


def test_reading_a_range_without_snapshots_gives_an_empty_frame(btc, ta_v2):
    register_feature_set(btc, ta_v2)
    frame = read_snapshots(btc, BTC, ta_v2, MARCH.start, MARCH.end)  # nothing materialized yet
    assert len(frame) == 0
    assert frame.values.shape == (0, len(ta_v2.feature_names)) and frame.missing.shape == frame.values.shape
