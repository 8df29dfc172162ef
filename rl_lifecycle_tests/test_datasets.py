"""Training datasets on a real PostgreSQL: snapshot-first builds, write-back, reproducible hashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.datasets.builder import build_dataset, rebuild_hash
from rl_lifecycle.datasets.service import check_no_unwarm_rows, check_reproducible, spec_ending_at
from rl_lifecycle.datasets.spec import DatasetSpec
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.service import materialize_window
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import WindowScheme, from_us

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")


def _spec(**overrides) -> DatasetSpec:
    fields = dict(market="BTCUSDT-1h", first_window="2024-02-01", last_window="2024-04-01", feature_set="ta_v2")
    return DatasetSpec.create(**{**fields, **overrides})


@pytest.fixture
def btc(conn):
    ingest_synthetic(conn, BTC, SCHEME.parse("2024-01-01").start, SCHEME.parse("2024-04-01").end, seed=7)
    return conn


def test_cold_build_computes_and_writes_back_then_warm_build_reads_the_cache(btc, tmp_path):
    spec = _spec()
    cold = build_dataset(btc, spec, tmp_path)
    assert cold.computed_windows == ["2024-02-01", "2024-03-01", "2024-04-01"] and cold.cached_windows == []
    assert btc.execute("SELECT count(*) FROM rl_feature_windows").fetchone()[0] == 3
    warm = build_dataset(btc, spec, tmp_path)
    assert warm.cached_windows == ["2024-02-01", "2024-03-01", "2024-04-01"] and warm.computed_windows == []
    assert warm.dataset_hash == cold.dataset_hash and warm.reused
    assert btc.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 1
    # the full rebuild from stored bytes agrees with the recorded hash
    assert rebuild_hash(btc, spec, load_feature_set("ta_v2")) == cold.dataset_hash


def test_dataset_rows_are_warm_snapshots_with_labels(btc, tmp_path):
    spec = _spec(forward_return_horizon=4)
    build = build_dataset(btc, spec, tmp_path)
    frame = pl.read_parquet(build.storage_uri)
    features = load_feature_set("ta_v2")
    assert frame.columns == ["ts", *features.feature_names, "close", "forward_return_4"]
    assert frame.height == build.rows == (29 + 31 + 30) * 24  # January supplies the warmup: all rows warm
    assert not np.isnan(frame.select(features.feature_names).to_numpy()).any()
    label = frame["forward_return_4"].to_numpy()
    close = frame["close"].to_numpy()
    assert np.allclose(label[:-4], np.log(close[4:] / close[:-4]))
    assert np.isnan(label[-4:]).all()  # beyond the span: unknown, never filled
    assert spec.min_purge_bars == 4


def test_changing_one_candle_recomputes_exactly_that_window_and_changes_the_hash(btc, tmp_path):
    spec = _spec()
    first = build_dataset(btc, spec, tmp_path)
    ts = from_us(SCHEME.parse("2024-03-01").start + 100 * BTC.interval_us)
    btc.execute("UPDATE market_candles SET close = close * 1.001, high = high * 1.001 WHERE ts = %s", (ts,))
    second = build_dataset(btc, spec, tmp_path)
    # March holds the candle; April's warmup reaches back into March, so April's input changed too
    assert "2024-03-01" in second.computed_windows and "2024-02-01" in second.cached_windows
    assert second.dataset_hash != first.dataset_hash
    third = build_dataset(btc, spec, tmp_path)
    assert third.computed_windows == [] and third.dataset_hash == second.dataset_hash


def test_a_change_far_from_other_windows_recomputes_only_its_window(btc, tmp_path):
    spec = _spec()
    build_dataset(btc, spec, tmp_path)
    ts = from_us(SCHEME.parse("2024-03-01").start + 20 * BTC.interval_us)  # before April's 200-bar warmup
    btc.execute("UPDATE market_candles SET volume = volume * 2 WHERE ts = %s", (ts,))
    rebuilt = build_dataset(btc, spec, tmp_path)
    assert rebuilt.computed_windows == ["2024-03-01"]
    assert rebuilt.cached_windows == ["2024-02-01", "2024-04-01"]


def test_hash_changes_with_spec_and_feature_set(btc, tmp_path):
    base = build_dataset(btc, _spec(), tmp_path).dataset_hash
    assert build_dataset(btc, _spec(forward_return_horizon=2), tmp_path).dataset_hash != base
    assert build_dataset(btc, _spec(feature_set="core_v1"), tmp_path).dataset_hash != base


def test_stale_snapshots_from_the_asset_are_reused_when_current(btc, tmp_path):
    features = load_feature_set("ta_v2")
    for key in ("2024-02-01", "2024-03-01"):
        materialize_window(btc, BTC, features, SCHEME, SCHEME.parse(key))
    build = build_dataset(btc, _spec(), tmp_path)
    assert build.cached_windows == ["2024-02-01", "2024-03-01"] and build.computed_windows == ["2024-04-01"]


def test_gates_pass_and_catch_a_tampered_file(btc, tmp_path):
    spec = _spec()
    build = build_dataset(btc, spec, tmp_path)
    april = SCHEME.parse("2024-04-01")
    assert check_reproducible(btc, BTC, april).passed
    assert check_no_unwarm_rows(btc, BTC, april).passed
    frame = pl.read_parquet(build.storage_uri)
    frame.with_columns(pl.col("rsi_14") * 1.0000001).write_parquet(build.storage_uri)
    report = check_reproducible(btc, BTC, april)
    assert not report.passed and "stored file" in report.summary


def test_spec_ending_at_a_window():
    spec = spec_ending_at(BTC, SCHEME.parse("2024-04-01"), SCHEME, "ta_v2", 3, forward_return_horizon=2)
    assert (spec.first_window, spec.last_window, spec.forward_return_horizon) == ("2024-02-01", "2024-04-01", 2)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"market": "BTCUSDT-9x"}, "market"),
        ({"first_window": "2024-05-01"}, "empty"),
        ({"first_window": "2024-02-15"}, "not the start"),
        ({"forward_return_horizon": 0}, "forward_return_horizon"),
        ({"transaction_cost_bps": -1}, "transaction_cost_bps"),
        ({"window_cadence": "hourly"}, "window_cadence"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(overrides, fragment):
    with pytest.raises(UserInputError) as info:
        _spec(**overrides)
    assert fragment in str(info.value)


def test_unknown_feature_set_is_refused(btc, tmp_path):
    with pytest.raises(UserInputError, match="nope"):
        build_dataset(btc, _spec(feature_set="nope"), tmp_path)


def test_rewriting_identical_candles_keeps_windows_cached(btc, tmp_path):
    spec = _spec()
    first = build_dataset(btc, spec, tmp_path)
    # an identical re-ingest writes nothing; a no-op UPDATE moves the stamp but not the checksum
    ingest_synthetic(btc, BTC, SCHEME.parse("2024-01-01").start, SCHEME.parse("2024-04-01").end, seed=7)
    btc.execute("UPDATE market_candles SET close = close WHERE ts = %s", (from_us(SCHEME.parse("2024-03-01").start),))
    again = build_dataset(btc, spec, tmp_path)
    assert again.computed_windows == [] and again.dataset_hash == first.dataset_hash
    assert build_dataset(btc, spec, tmp_path).cached_windows == ["2024-02-01", "2024-03-01", "2024-04-01"]


def test_the_gates_verify_the_build_of_this_run_even_when_reused(btc, tmp_path):
    april = SCHEME.parse("2024-04-01")
    first = build_dataset(btc, _spec(), tmp_path)
    build_dataset(btc, _spec(forward_return_horizon=4), tmp_path)
    again = build_dataset(btc, _spec(), tmp_path)  # reused: must become the latest build of the span
    assert again.reused and again.dataset_hash == first.dataset_hash
    from rl_lifecycle.datasets.service import latest_version

    assert latest_version(btc, BTC, april).dataset_hash == first.dataset_hash
    assert check_reproducible(btc, BTC, april).passed


def test_a_feature_set_given_by_path_builds_and_verifies(btc, tmp_path):
    import yaml

    from rl_lifecycle.features.spec import SETS_DIR

    data = yaml.safe_load((SETS_DIR / "core_v1.yaml").read_text())
    data["name"] = "custom_v1"
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    features = load_feature_set(path)
    build = build_dataset(btc, _spec(feature_set="custom_v1"), tmp_path, features)
    assert build.rows > 0
    assert check_reproducible(btc, BTC, SCHEME.parse("2024-04-01")).passed  # spec loaded from the registry


def test_the_window_cadence_is_part_of_the_feature_identity(btc):
    monthly = load_feature_set("ta_v2", anchor="monthly")
    weekly = load_feature_set("ta_v2", anchor="weekly")
    assert monthly.fingerprint != weekly.fingerprint
    from rl_lifecycle.features.service import compute_window

    with pytest.raises(ValueError, match="anchored on monthly"):
        compute_window(btc, BTC, monthly, WindowScheme("weekly"), WindowScheme("weekly").parse("2024-04-01"))
    with pytest.raises(ValueError, match="wants ta_v2 on monthly"):
        build_dataset(btc, _spec(), Path("/tmp/unused"), weekly)


def test_the_builder_and_the_asset_feed_the_pipeline_the_same_candles(btc):
    """The builder slices window inputs out of one span read; the asset reads each window: same bytes."""
    from rl_lifecycle.features.service import window_input
    from rl_lifecycle.features.vectors import SpanCandles

    features = load_feature_set("ta_v2")
    spec = _spec()
    windows = spec.windows()
    span = SpanCandles(btc, BTC, windows[0].start, windows[-1].end, features.warmup)
    for window in spec.windows():
        assert span.window_input(window).checksum() == window_input(btc, BTC, features, window).checksum()
