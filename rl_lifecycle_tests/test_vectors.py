"""The one vector read path: stored where current, computed and written back where missing or stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import load_candles_with_warmup
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.spec import DatasetSpec
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.pipeline import compute_features
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.features.vectors import load_vectors
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import WindowScheme, to_us

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")
HOUR = BTC.interval_us
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ta_v2():
    return load_feature_set("ta_v2")


def _pipeline_over(conn, spec, start_us, end_us):
    """The canonical rule applied straight to the candles, no snapshot involved."""
    window = SCHEME.containing(start_us)
    candles = load_candles_with_warmup(conn, BTC, window.start, end_us, spec.warmup)
    return compute_features(spec, candles, SCHEME, start_us, end_us)


def test_cold_read_computes_and_stores_then_warm_read_returns_the_same_bytes(conn, ta_v2):
    ingest_synthetic(conn, BTC, to_us("2024-01-01"), to_us("2024-04-01"), seed=7)
    start, end = to_us("2024-02-10"), to_us("2024-03-20")  # partial windows at both ends
    cold = load_vectors(conn, BTC, ta_v2, start, end)
    assert cold.computed_windows == ["2024-02-01", "2024-03-01"] and cold.cached_windows == []
    assert cold.frame.ts[0] == start and cold.frame.ts[-1] == end - HOUR
    assert conn.execute("SELECT count(*) FROM rl_feature_snapshots").fetchone()[0] == (29 + 31) * 24
    warm = load_vectors(conn, BTC, ta_v2, start, end)
    assert warm.cached_windows == ["2024-02-01", "2024-03-01"] and warm.computed_windows == []
    assert warm.frame.digest() == cold.frame.digest() == _pipeline_over(conn, ta_v2, start, end).digest()


def test_a_changed_candle_recomputes_only_the_windows_whose_input_it_is(conn, ta_v2):
    ingest_synthetic(conn, BTC, to_us("2024-01-01"), to_us("2024-05-01"), seed=7)
    load_vectors(conn, BTC, ta_v2, to_us("2024-02-01"), to_us("2024-05-01"))
    conn.execute("UPDATE market_candles SET close = close * 1.01 WHERE ts = '2024-03-28 10:00+00'")
    again = load_vectors(conn, BTC, ta_v2, to_us("2024-02-01"), to_us("2024-05-01"))
    # March holds the candle; April's warmup (200 bars) reaches back to March 23
    assert again.computed_windows == ["2024-03-01", "2024-04-01"] and again.cached_windows == ["2024-02-01"]
    assert again.frame.digest() == _pipeline_over(conn, ta_v2, to_us("2024-02-01"), to_us("2024-05-01")).digest()


def test_the_open_window_follows_the_same_rule_as_it_grows(conn, ta_v2):
    """Vectors of a half-finished window equal those of the finished window, bit for bit."""
    ingest_synthetic(conn, BTC, to_us("2024-02-01"), to_us("2024-03-10"), seed=7)
    partial = load_vectors(conn, BTC, ta_v2, to_us("2024-03-01"), to_us("2024-04-01"))
    assert len(partial.frame) == 9 * 24
    ingest_synthetic(conn, BTC, to_us("2024-03-10"), to_us("2024-04-01"), seed=7)
    full = load_vectors(conn, BTC, ta_v2, to_us("2024-03-01"), to_us("2024-04-01"))
    assert full.computed_windows == ["2024-03-01"]  # new candles made the stored window stale
    assert full.frame.slice_ts(to_us("2024-03-01"), to_us("2024-03-10")).digest() == partial.frame.digest()


def test_windows_without_candles_say_so_and_a_dataset_refuses_to_be_built_from_nothing(conn, ta_v2, tmp_path):
    ingest_synthetic(conn, BTC, to_us("2024-03-01"), to_us("2024-04-01"), seed=7)
    read = load_vectors(conn, BTC, ta_v2, to_us("2024-01-01"), to_us("2024-04-01"))
    assert read.empty_windows == ["2024-01-01", "2024-02-01"] and read.computed_windows == ["2024-03-01"]
    spec = DatasetSpec.create(market=BTC.key, first_window="2024-01-01", last_window="2024-03-01", feature_set="ta_v2")
    build = build_dataset(conn, spec, tmp_path, ta_v2)  # March has rows; the empty windows are named, not "computed"
    assert build.empty_windows == ["2024-01-01", "2024-02-01"] and build.computed_windows == []
    nothing = DatasetSpec.create(market=BTC.key, first_window="2023-11-01", last_window="2024-02-01", feature_set="ta_v2")
    with pytest.raises(UserInputError, match=r"built from nothing: no window of the span holds a candle"):
        build_dataset(conn, nothing, tmp_path, ta_v2)
    assert conn.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 1


def test_nothing_outside_the_feature_package_reads_snapshots_or_computes_indicators():
    """Training, inference and backtests see the same bytes only if there is one way to get them."""
    offenders = []
    forbidden = ("import talib", "from talib", "FROM rl_feature_snapshots", "read_snapshots", "compute_features",
                 "compute_segment")
    for path in (REPO / "rl_lifecycle").rglob("*.py"):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("rl_lifecycle/features/") or relative.startswith("rl_lifecycle/bench/"):
            continue  # the feature store itself; benchmarks time against the bare pipeline or TA-Lib
        text = path.read_text()
        offenders += [f"{relative}: {word}" for word in forbidden if word in text]
    assert offenders == []


def test_vectors_are_float64_rows_in_the_feature_sets_order(conn, ta_v2):
    ingest_synthetic(conn, BTC, to_us("2024-01-01"), to_us("2024-02-01"), seed=7)
    frame = load_vectors(conn, BTC, ta_v2, to_us("2024-01-01"), to_us("2024-02-01")).frame
    assert frame.values.dtype == np.float64 and frame.feature_names == ta_v2.feature_names
    assert frame.values.shape == (31 * 24, len(ta_v2.feature_names))
