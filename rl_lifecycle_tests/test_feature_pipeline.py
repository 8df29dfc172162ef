"""The feature pipeline and the canonical rule: bit-for-bit parity, warm flags, check helpers."""

from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import talib

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.db import binary_copy as bc
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.checks import (
    diff_frames,
    lookahead_violations,
    perturb_after,
    sample_timestamps,
    unflagged_nan_rows,
)
from rl_lifecycle.features.pipeline import FeatureFrame, compute_features, compute_segment
from rl_lifecycle.features.spec import FeatureSetSpec, load_feature_set, parse_feature_set
from rl_lifecycle.features.store import _fields, _stage_columns
from rl_lifecycle.windows import WindowScheme, to_us

HOUR = 3_600_000_000
MONTHLY = WindowScheme("monthly")
SETS = ("ta_v2", "core_v1")


def make_candles(n: int = 3000, seed: int = 11, start: str = "2024-01-15T05:00:00") -> CandleArrays:
    """Seeded hourly random walk with valid OHLCV; the default spans mid-January to early May."""
    rng = np.random.default_rng(seed)
    ts = to_us(start) + np.arange(n, dtype=np.int64) * HOUR
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate(([100.0], close[:-1])) * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    return CandleArrays(ts, open_, high, low, close, rng.lognormal(3.0, 0.5, n))


def _digest_in_fresh_process(name: str) -> str:
    candles = make_candles()
    return compute_features(load_feature_set(name), candles, MONTHLY, int(candles.ts[0])).digest()


def _same(a: FeatureFrame, b: FeatureFrame) -> None:
    assert diff_frames(a, b) == []
    assert a.digest() == b.digest()


def _rows(frame: FeatureFrame, lo: int, hi: int) -> FeatureFrame:
    return frame.slice_ts(int(frame.ts[lo]), int(frame.ts[hi - 1]) + 1)


def _window_start_rows(candles: CandleArrays) -> list[int]:
    anchors = MONTHLY.anchors(candles.ts)
    return np.flatnonzero(np.diff(anchors)).tolist()  # last row of each window but the last one


@pytest.fixture(scope="module")
def candles() -> CandleArrays:
    return make_candles()


@pytest.fixture(scope="module", params=SETS)
def spec(request: pytest.FixtureRequest) -> FeatureSetSpec:
    return load_feature_set(request.param)


@pytest.fixture(scope="module")
def batch(spec: FeatureSetSpec, candles: CandleArrays) -> FeatureFrame:
    return compute_features(spec, candles, MONTHLY, int(candles.ts[0]))


# -- the frame ---------------------------------------------------------------------------


def test_frame_layout(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    assert len(batch) == len(candles) and batch.feature_names == spec.feature_names
    assert batch.values.shape == (len(candles), len(spec.feature_names))
    assert batch.values.dtype == np.float64 and batch.values.flags.f_contiguous  # column-major: no transpose
    assert batch.missing.flags.f_contiguous
    assert batch.is_warm.dtype == np.bool_ and batch.missing.shape == batch.values.shape
    np.testing.assert_array_equal(batch.ts, candles.ts)
    with pytest.raises(ValueError):
        batch.values[0, 0] = 1.0  # frames are immutable


def test_slice_concat_roundtrip(batch: FeatureFrame) -> None:
    cut = int(batch.ts[1234])
    head, tail = batch.slice_ts(int(batch.ts[0]), cut), batch.slice_ts(cut, int(batch.ts[-1]) + 1)
    assert len(head) == 1234 and len(head) + len(tail) == len(batch)
    _same(FeatureFrame.concat([head, tail]), batch)
    assert len(FeatureFrame.empty(batch.feature_names)) == 0


def _row_major(frame: FeatureFrame) -> FeatureFrame:
    return FeatureFrame(frame.ts.copy(), np.ascontiguousarray(frame.values), frame.is_warm.copy(),
                        np.ascontiguousarray(frame.missing), frame.feature_names)


def test_layout_is_not_content(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    rows = _row_major(batch)
    assert rows.values.flags.c_contiguous and not rows.values.flags.f_contiguous
    _same(rows, batch)  # same digest, no byte difference, in both directions
    _same(batch, rows)
    h = hashlib.sha256()
    for arr in (batch.ts, batch.values, batch.is_warm, batch.missing):
        h.update(np.ascontiguousarray(arr).tobytes())
    assert batch.digest() == h.hexdigest()  # defined over the row-major bytes
    a, b, c = (int(batch.ts[i]) for i in (0, 1234, len(batch) - 1))
    head, tail = batch.slice_ts(a, b), rows.slice_ts(b, c + 1)  # a column-major slice is a view, not a copy
    assert np.shares_memory(head.values, batch.values) and not head.values.flags.c_contiguous
    _same(FeatureFrame.concat([head, tail]), rows)
    _same(head, rows.slice_ts(a, b))
    sample = sample_timestamps(candles.ts, 4, seed=2)
    assert lookahead_violations(spec, candles, MONTHLY, rows, sample, seed=1) == []
    assert unflagged_nan_rows(rows) == [] and unflagged_nan_rows(head) == []
    values = np.array(rows.values)
    values[2000, 1] += 1e-9
    planted = FeatureFrame(rows.ts, values, rows.is_warm, rows.missing, rows.feature_names)
    assert [d["ts_us"] for d in diff_frames(batch, planted)] == [int(batch.ts[2000])]


def test_store_encodes_either_layout_alike(batch: FeatureFrame) -> None:
    fields = _fields(len(batch.feature_names))
    payload = bc.encode(fields, _stage_columns(batch))
    assert payload == bc.encode(fields, _stage_columns(_row_major(batch)))
    rows = bc.decode(payload, fields)
    assert rows["vector"].tobytes() == np.ascontiguousarray(batch.values).tobytes()
    part = batch.slice_ts(int(batch.ts[100]), int(batch.ts[200]))  # a column-major view
    assert bc.encode(fields, _stage_columns(part)) == bc.encode(fields, _stage_columns(_row_major(part)))


def test_frame_refuses_other_strides(batch: FeatureFrame) -> None:
    every_other = batch.slice_ts(int(batch.ts[0]), int(batch.ts[-1]) + 1)
    with pytest.raises(ValueError, match="values"):
        FeatureFrame(every_other.ts[::2].copy(), every_other.values[::2], every_other.is_warm[::2].copy(),
                     np.ascontiguousarray(every_other.missing[::2]), batch.feature_names)
    with pytest.raises(ValueError, match="ts"):
        FeatureFrame(batch.ts[::-1], batch.values, batch.is_warm, batch.missing, batch.feature_names)


def test_digest_sees_one_bit(batch: FeatureFrame) -> None:
    values = batch.values.copy()
    values[-1, -1] = np.nextafter(values[-1, -1], np.inf)
    tampered = FeatureFrame(batch.ts.copy(), values, batch.is_warm.copy(), batch.missing.copy(), batch.feature_names)
    assert tampered.digest() != batch.digest()


# -- determinism and the canonical rule ------------------------------------------------------


def test_same_digest_in_a_fresh_process(spec: FeatureSetSpec, batch: FeatureFrame) -> None:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_digest_in_fresh_process, spec.name).result(timeout=120) == batch.digest()


def test_recompute_is_identical(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    _same(compute_features(spec, candles, MONTHLY, int(candles.ts[0])), batch)


def test_truncation_matches_batch(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    boundaries = _window_start_rows(candles)
    cuts = [0, 5, spec.warmup - 1, spec.warmup, 777, 1500, len(candles) - 2]
    cuts += [b for edge in boundaries for b in (edge, edge + 1, edge + 2)]
    for t in sorted(set(cuts)):
        truncated = compute_features(spec, candles.slice(0, t + 1), MONTHLY, int(candles.ts[0]))
        _same(truncated, _rows(batch, 0, t + 1))
        # the live case: only the half-finished window, from its own first candle
        window = MONTHLY.containing(int(candles.ts[t]))
        live = compute_features(spec, candles.slice(0, t + 1), MONTHLY, window.start)
        _same(live, batch.slice_ts(window.start, int(candles.ts[t]) + 1))


def test_range_from_any_row_matches_batch(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    for row in (1, 300, 1001, 2222):
        start = int(candles.ts[row])
        _same(compute_features(spec, candles, MONTHLY, start), batch.slice_ts(start, int(candles.ts[-1]) + 1))
        stop = int(candles.ts[row + 400])
        _same(compute_features(spec, candles, MONTHLY, start, stop), batch.slice_ts(start, stop))


def test_later_history_start_agrees_once_warmup_is_available(
    spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame
) -> None:
    second_window = _window_start_rows(candles)[0] + 1
    for begin in (second_window - spec.warmup, second_window - spec.warmup - 37):
        later = compute_features(spec, candles.slice(begin, len(candles)), MONTHLY, int(candles.ts[begin]))
        start = int(candles.ts[second_window])
        _same(later.slice_ts(start, int(candles.ts[-1]) + 1), batch.slice_ts(start, int(candles.ts[-1]) + 1))
    # without the warmup the first rows of that window are not warm
    begin = second_window - spec.warmup + 10
    short = compute_features(spec, candles.slice(begin, len(candles)), MONTHLY, int(candles.ts[second_window]))
    assert not short.is_warm[:10].any() and short.is_warm[10:].all()


def test_perturbing_later_candles_leaves_earlier_rows(
    spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame
) -> None:
    for row in (250, 1000, _window_start_rows(candles)[1]):
        perturbed = perturb_after(candles, row + 1, np.random.default_rng(row))
        assert perturbed.close[row + 1] != candles.close[row + 1]
        recomputed = compute_features(spec, perturbed, MONTHLY, int(candles.ts[0]))
        _same(_rows(recomputed, 0, row + 1), _rows(batch, 0, row + 1))
        assert recomputed.digest() != batch.digest()


def test_unsorted_candles_refused(spec: FeatureSetSpec, candles: CandleArrays) -> None:
    swapped = candles.ts.copy()
    swapped[[10, 11]] = swapped[[11, 10]]
    bad = CandleArrays(swapped, candles.open, candles.high, candles.low, candles.close, candles.volume)
    with pytest.raises(UserInputError, match="sorted"):
        compute_features(spec, bad, MONTHLY, int(swapped[0]))


def test_changed_talib_global_state_refused(candles: CandleArrays) -> None:
    spec = load_feature_set("ta_v2")
    talib.set_unstable_period("EMA", 5)
    try:
        with pytest.raises(RuntimeError, match="unstable period of EMA"):
            compute_features(spec, candles, MONTHLY, int(candles.ts[0]))
    finally:
        talib.set_unstable_period("EMA", 0)


# -- warm flags and missing values -----------------------------------------------------------


def test_warm_flags(spec: FeatureSetSpec, batch: FeatureFrame) -> None:
    assert not batch.is_warm[: spec.warmup].any()  # history starts mid-window: no warmup before it
    assert batch.is_warm[spec.warmup :].all()  # clean candles: everything defined after the warmup
    np.testing.assert_array_equal(batch.missing, ~np.isfinite(batch.values))
    assert not batch.missing[batch.is_warm].any()
    assert batch.missing[0].any()  # undefined values stay NaN and flagged, never filled
    assert np.isnan(batch.values[batch.missing]).all()


def test_compute_segment_warm_rule(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    segment = compute_segment(spec, candles.slice(0, 600), 150)
    assert len(segment) == 450 and segment.ts[0] == candles.ts[150]
    np.testing.assert_array_equal(segment.is_warm, np.arange(150, 600) >= spec.warmup)
    first_window_end = _window_start_rows(candles)[0] + 1
    if first_window_end >= 600:  # same segment start as the batch's first window: same bytes
        _same(segment, _rows(batch, 150, 600))


def test_undefined_values_flagged_not_filled(candles: CandleArrays) -> None:
    spec = load_feature_set("core_v1")
    low = candles.low.copy()
    low[1000] = 0.0  # log(high / 0) = inf: undefined, must be flagged and must cool the row
    bad = CandleArrays(candles.ts, candles.open, candles.high, low, candles.close, candles.volume)
    frame = compute_features(spec, bad, MONTHLY, int(candles.ts[0]))
    j = spec.feature_names.index("logrange")
    assert np.isinf(frame.values[1000, j]) and frame.missing[1000, j] and not frame.is_warm[1000]
    assert frame.is_warm[999] and frame.is_warm[1001]
    assert unflagged_nan_rows(frame) == []


def test_native_features_match_their_definition(candles: CandleArrays) -> None:
    spec = load_feature_set("core_v1")
    frame = compute_features(spec, candles, MONTHLY, int(candles.ts[0]))
    col = {name: frame.values[:, j] for j, name in enumerate(spec.feature_names)}
    close, t = candles.close, 500
    assert col["logret_4"][t] == np.log(close[t] / close[t - 4])
    returns = np.log(close[1:] / close[:-1])
    np.testing.assert_allclose(col["rvol_24"][t], np.std(returns[t - 24 : t]), rtol=1e-12)
    np.testing.assert_allclose(col["rvol_96"][t], np.std(returns[t - 96 : t]), rtol=1e-12)
    assert col["logrange"][t] == np.log(candles.high[t] / candles.low[t])
    assert np.isnan(col["rvol_96"][95]) and np.isfinite(col["rvol_96"][96])


def test_talib_features_match_bare_talib_within_a_window(candles: CandleArrays) -> None:
    spec = load_feature_set("ta_v2")
    frame = compute_features(spec, candles, MONTHLY, int(candles.ts[0]))
    end = _window_start_rows(candles)[0] + 1  # first window: the segment starts at the first candle
    close = candles.close[:end]
    rsi = talib.RSI(close, timeperiod=14)
    atr = talib.ATR(candles.high[:end], candles.low[:end], close, timeperiod=14)
    obv = talib.OBV(close, candles.volume[:end])
    z = (obv - talib.SMA(obv, 96)) / talib.STDDEV(obv, 96, 1.0)
    names = spec.feature_names
    np.testing.assert_array_equal(frame.values[:end, names.index("rsi_14")], rsi)
    np.testing.assert_array_equal(frame.values[:end, names.index("atr_14_rel")], atr / close)
    np.testing.assert_array_equal(frame.values[:end, names.index("obv_z96")], z)


def test_zscore_of_flat_series_is_zero_and_difference_works() -> None:
    data = {
        "name": "flat", "version": 1, "description": "OBV on flat prices", "warmup": 20,
        "indicators": [{
            "function": "OBV", "params": {}, "inputs": ["close", "volume"],
            "outputs": [{"output": "real", "feature": "obv_z", "normalise": {"kind": "zscore", "period": 10}},
                        {"output": "real", "feature": "obv_d", "normalise": {"kind": "difference", "period": 3}}],
        }],
    }
    spec = parse_feature_set(data)
    n = 100
    flat = np.full(n, 50.0)
    candles = CandleArrays(to_us("2024-01-01") + np.arange(n, dtype=np.int64) * HOUR, flat, flat, flat, flat,
                           np.full(n, 7.0))
    frame = compute_features(spec, candles, MONTHLY, int(candles.ts[0]))
    assert (frame.values[20:] == 0.0).all() and frame.is_warm[20:].all()
    assert frame.missing[:9, 0].all() and not frame.missing[9:, 0].any()  # zscore(10) defined from row 9
    assert frame.missing[:3, 1].all() and not frame.missing[3:, 1].any()


# -- check helpers -------------------------------------------------------------------------


def test_diff_frames_finds_a_planted_difference(batch: FeatureFrame) -> None:
    assert diff_frames(batch, batch) == []  # NaN rows compare equal bitwise
    values = batch.values.copy()
    values[2000, 1] += 1e-9
    missing = batch.missing.copy()
    planted = FeatureFrame(batch.ts.copy(), values, batch.is_warm.copy(), missing, batch.feature_names)
    found = diff_frames(batch, planted)
    assert len(found) == 1 and found[0]["kind"] == "value"
    assert found[0]["feature"] == batch.feature_names[1] and found[0]["ts_us"] == int(batch.ts[2000])
    assert found[0]["ts"].endswith("Z")


def test_diff_frames_reports_length_and_ts_and_limits(batch: FeatureFrame) -> None:
    shorter = batch.slice_ts(int(batch.ts[0]), int(batch.ts[-10]))
    kinds = [d["kind"] for d in diff_frames(batch, shorter)]
    assert kinds == ["length", "ts"]
    assert diff_frames(batch, shorter)[1]["only_expected"] == 10
    values = batch.values.copy()
    values[500:600] *= 2.0
    planted = FeatureFrame(batch.ts.copy(), values, batch.is_warm.copy(), batch.missing.copy(), batch.feature_names)
    found = diff_frames(batch, planted, limit=5)
    assert len(found) == 6 and found[-1]["kind"] == "truncated" and found[-1]["more"] > 0


def test_lookahead_violations_clean_and_planted(spec: FeatureSetSpec, candles: CandleArrays,
                                                batch: FeatureFrame) -> None:
    sample = sample_timestamps(candles.ts, 6, seed=3)
    sample.append(int(candles.ts[_window_start_rows(candles)[1]]))  # last candle of a window
    assert lookahead_violations(spec, candles, MONTHLY, batch, sample, seed=5) == []
    row = int(np.searchsorted(candles.ts, sample[3]))
    values = batch.values.copy()
    values[row, 0] = np.nextafter(values[row, 0], np.inf)  # a last-bit leak is still a leak
    tampered = FeatureFrame(batch.ts.copy(), values, batch.is_warm.copy(), batch.missing.copy(), batch.feature_names)
    found = lookahead_violations(spec, candles, MONTHLY, tampered, sample, seed=5)
    assert {(d["ts_us"], d["variant"]) for d in found} == {(sample[3], "truncated"), (sample[3], "perturbed")}
    assert all(d["features"] == [spec.feature_names[0]] for d in found)


def test_lookahead_flags_unknown_timestamps(spec: FeatureSetSpec, candles: CandleArrays, batch: FeatureFrame) -> None:
    found = lookahead_violations(spec, candles, MONTHLY, batch, [int(candles.ts[5]) + 1], seed=0)
    assert [d["kind"] for d in found] == ["unknown_ts"]


def test_sample_timestamps() -> None:
    ts = np.arange(1000, dtype=np.int64) * HOUR
    sample = sample_timestamps(ts, 10, seed=1)
    assert sample == sample_timestamps(ts, 10, seed=1) != sample_timestamps(ts, 10, seed=2)
    assert len(sample) == 10 == len(set(sample)) and sample == sorted(sample)
    assert sample[0] == ts[0] and sample[-1] == ts[-1]
    assert sample_timestamps(ts[:3], 10, seed=1) == ts[:3].tolist()


def test_unflagged_nan_rows(batch: FeatureFrame) -> None:
    assert unflagged_nan_rows(batch) == []
    values = batch.values.copy()
    values[700, 2] = np.nan  # a warm row, missing bit not set
    planted = FeatureFrame(batch.ts.copy(), values, batch.is_warm.copy(), batch.missing.copy(), batch.feature_names)
    found = unflagged_nan_rows(planted)
    assert len(found) == 1 and found[0]["ts_us"] == int(batch.ts[700])
    assert found[0]["unflagged"] == [batch.feature_names[2]] and found[0]["warm_with_nan"]
