"""Training, inference and storage see the same bytes for the same candles (workstream C's acceptance)."""

from __future__ import annotations

import numpy as np

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.datasets.builder import build_dataset, read_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.features.vectors import load_vectors, vectors_from_candles
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.env import MarketEnv, contiguous, observations
from rl_lifecycle.windows import WindowScheme, to_us

BTC = Market("BTCUSDT", "1h")
SCHEME = WindowScheme("monthly")


def test_env_observations_live_vectors_and_stored_snapshots_are_the_same_bytes(conn, tmp_path):
    """March is half finished: candles stop on the 15th at 09:00."""
    ingest_synthetic(conn, BTC, to_us("2024-01-01"), to_us("2024-03-15T10:00"), seed=7)
    features = load_feature_set("ta_v2")
    march = SCHEME.parse("2024-03-01")
    build = build_dataset(conn, spec_ending_at(BTC, march, SCHEME, "ta_v2", 2), tmp_path, features)
    content = read_dataset(build.storage_uri, build.spec, features.feature_names)
    stored = load_vectors(conn, BTC, features, to_us("2024-02-01"), march.end).frame
    warm = stored.values[stored.is_warm]
    assert np.array_equal(content.ts, stored.ts[stored.is_warm])

    # the env observes the float32 cast of the canonical float64 vectors, then the position
    env = MarketEnv.from_dataset(content, contiguous(content.ts, BTC.interval_us), action_set="long_flat", cost_bps=10.0)
    first, _ = env.reset(seed=0)
    batch = observations(content.values, np.zeros(len(content), dtype=np.int8))
    k = len(features.feature_names)
    assert batch.dtype == np.float32 and batch.shape == (len(content), k + 1)
    assert batch[:, :k].tobytes() == warm.astype(np.float32).tobytes()
    row = int(np.flatnonzero((batch == first).all(axis=1))[0])
    assert first[:k].tobytes() == warm[row].astype(np.float32).tobytes()

    # the live path: the newest closed bar of the half-finished window, from candles alone
    newest = to_us("2024-03-15T09:00")
    live = vectors_from_candles(conn, BTC, features, newest, newest + BTC.interval_us)
    assert live.ts.tolist() == [newest]
    assert live.values.tobytes() == stored.values[stored.ts == newest].tobytes()
    assert live.values.astype(np.float32).tobytes() == batch[content.ts == newest, :k].tobytes()
