"""`backfill.overhead_ratio`: a backfill of the market data assets through the code location, over
the core's own work for the same partitions called directly."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg

from rl_lifecycle.bench.harness import MONTHLY, REPO_ROOT, _environment, scratch_database
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.settings import load_settings


def _core_work_seconds(url: str, market: Market, windows: list) -> float:
    """What the market data assets and their checks compute for these windows, called directly in
    this process (the determinism recompute too): the work a backfill cannot avoid."""
    from rl_lifecycle.candles.service import load_window
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import (
        check_no_unwarm_rows,
        check_reproducible,
        market_span_windows,
        spec_ending_at,
    )
    from rl_lifecycle.features import service as features
    from rl_lifecycle.features.spec import active_feature_set
    from rl_lifecycle.markets.table import add_market, get_market
    from rl_lifecycle.orchestration.assets.datasets import TrainingDatasetConfig

    spec, config = active_feature_set(), TrainingDatasetConfig()
    out_dir = load_settings().bench_dir / "backfill-datasets"
    with psycopg.connect(url, autocommit=True) as conn:
        add_market(conn, market, source="synthetic", seed=7)
        record = get_market(conn, market)
        start = time.perf_counter()
        for window in windows:
            load_window(conn, record, window)
        for window in windows:
            features.materialize_window(conn, market, spec, MONTHLY, window)
            stored = features.stored_window(conn, market, spec, window)
            features.check_deterministic(stored, features.compute_window(conn, market, spec, MONTHLY, window).frame)
            features.check_no_lookahead(spec, MONTHLY, features.window_input(conn, market, spec, window), window.start)
            features.check_warmup_flagged(stored)
        for window in windows:
            dataset = spec_ending_at(market, window, MONTHLY, spec.name, market_span_windows(conn, market, config.span_windows),
                                     forward_return_horizon=config.forward_return_horizon,
                                     transaction_cost_bps=config.transaction_cost_bps)
            build_dataset(conn, dataset, out_dir, spec)
            check_reproducible(conn, market, window)
            check_no_unwarm_rows(conn, market, window)
        return time.perf_counter() - start


def bench_backfill(server_url: str, first: str = "2015-01-01", last: str = "2024-12-01") -> dict:
    """`backfill.overhead_ratio`: wall time of a backfill of the market data assets with every check,
    launched through the code location as `rl-lifecycle materialize` does, over the sum of the core's
    own work for the same partitions (each on a fresh database, same run)."""
    import tempfile

    from rl_lifecycle.db import dagster_storage_url
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.orchestration.definitions import defs
    from rl_lifecycle.orchestration.instance import STORAGE_URL_ENV, instance_from_config
    from rl_lifecycle.orchestration.launcher import materialize
    from rl_lifecycle.orchestration.partitions import sync_market_partitions

    market = Market("BTCUSDT", "1h")
    windows = MONTHLY.range(first, last)
    print(f"backfill.overhead_ratio ({len(windows)} windows) ...", flush=True)
    with scratch_database(server_url) as url:
        core_s = _core_work_seconds(url, market, windows)
    with scratch_database(server_url) as url, tempfile.TemporaryDirectory() as home:
        shutil.copyfile(REPO_ROOT / "dagster.yaml", Path(home, "dagster.yaml"))  # the deployed instance config
        # the code server and its runs inherit the environment: point both at the scratch database
        with _environment({"RL_DATABASE_URL": url, STORAGE_URL_ENV: dagster_storage_url(url)}):
            with psycopg.connect(url, autocommit=True) as conn:
                add_market(conn, market, source="synthetic", seed=7)
            with instance_from_config(Path(home)) as instance:
                sync_market_partitions(instance, [market.key])
                start = time.perf_counter()
                runs = materialize(instance, defs, ["candles", "feature_snapshots", "training_dataset"],
                                   [partition_key(market, w) for w in windows])
                backfill_s = time.perf_counter() - start
    ok = all(r.ok for r in runs) and len(runs) == len(windows)
    ratio = backfill_s / core_s
    return {
        "backfill.overhead_ratio": {
            "value": round(backfill_s, 1), "unit": "s (backfill)", "baseline": round(core_s, 1),
            "ratio": round(ratio, 2), "target": "<= 3 (backfill / core work)", "met": ok and ratio <= 3,
            "windows": len(windows), "runs": len({r.run_id for r in runs}), "all_ok": ok,
        }
    }
