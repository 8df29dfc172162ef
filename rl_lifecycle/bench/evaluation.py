"""Benchmarks of the fold backtests (registered in rl_lifecycle/bench/; results in its format).

Inputs are real: synthetic candles ingested into the benchmark database and the canonical vectors
from the feature read path (`load_vectors`), so the policy sees what a trained one would.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import psycopg

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import ActsOnVectors

BENCH_MARKET = Market("BTCUSDT", "1h")


def fold_inputs(url: str, market: Market = BENCH_MARKET, first: str = "2022-01-01", last: str = "2024-01-01"):
    """(candles, vectors) of the warm rows of [first, last): candles ingested, vectors from the read path."""
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.candles.store import load_candles
    from rl_lifecycle.evaluation.backtest import align_candles
    from rl_lifecycle.features.spec import load_feature_set
    from rl_lifecycle.features.vectors import load_vectors
    from rl_lifecycle.windows import to_us

    spec = load_feature_set("ta_v2")
    start, end = to_us(first), to_us(last)
    with psycopg.connect(url, autocommit=True) as conn:
        ingest_synthetic(conn, market, start - 60 * 86_400_000_000, end, seed=9)  # warmup before the span
        frame = load_vectors(conn, market, spec, start, end).frame
        warm = frame.is_warm
        candles = align_candles(load_candles(conn, market, start, end), frame.ts[warm])
    return candles, np.ascontiguousarray(frame.values[warm]), spec


def trend_policy(spec) -> ActsOnVectors:
    """Long while the close is above its 100-bar SMA: a batched rule on a real feature that trades like
    a cautious trained policy does (every few dozen bars)."""
    from rl_lifecycle.evaluation.policies import FeatureSignPolicy

    return FeatureSignPolicy(feature=spec.feature_names.index("sma_100_dist"), fingerprint=spec.fingerprint)


def bench_rl_vs_trivial(url: str, repeats: int = 3, policy: ActsOnVectors | None = None) -> dict:
    """`backtest.rl_vs_trivial_strategy`: bars/s of the RL strategy / bars/s of a do-nothing strategy,
    same engine, bars and vectors, alternated in the same run (each backtest in its own process)."""
    from rl_lifecycle.evaluation.backtest import FoldJob, run_fold_backtest

    candles, vectors, spec = fold_inputs(url)
    policy = policy or trend_policy(spec)
    rates: dict[str, list[float]] = {"rl": [], "idle": []}
    trades = 0
    for _ in range(repeats):
        for kind in ("idle", "rl"):
            result = run_fold_backtest(FoldJob(BENCH_MARKET.key, 0, candles, vectors, policy, 10.0, strategy=kind))
            if not result.ok:
                raise RuntimeError(f"benchmark backtest failed:\n{result.error}")
            rates[kind].append(len(candles) / result.timings["engine_s"])
            trades = max(trades, len(result.fills))
    rl, idle = statistics.median(rates["rl"]), statistics.median(rates["idle"])
    extra_s = len(candles) / rl - len(candles) / idle  # the RL run's engine time beyond the idle run's
    return {
        "backtest.rl_vs_trivial_strategy": {
            "value": round(rl), "unit": "bars/s", "baseline": round(idle), "ratio": round(rl / idle, 3),
            "target": ">= 0.8", "met": rl / idle >= 0.8, "bars": len(candles), "orders": trades,
            "policy": type(policy).__name__,
            "us_per_order": round(extra_s / trades * 1e6, 1) if trades else None,
        }
    }


def bench_walkforward_speedup(url: str, folds: int = 4, repeats: int = 2, policy: ActsOnVectors | None = None) -> dict:
    """`walkforward.speedup_2_workers`: wall time of `folds` fold backtests with 1 worker / with 2."""
    from rl_lifecycle.evaluation.backtest import FoldJob, run_folds

    candles, vectors, spec = fold_inputs(url)
    policy = policy or trend_policy(spec)
    size = len(candles) // folds
    jobs = [FoldJob(BENCH_MARKET.key, k, candles.slice(k * size, (k + 1) * size), vectors[k * size:(k + 1) * size],
                    policy, 10.0) for k in range(folds)]
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            started = time.perf_counter()
            results = run_folds(jobs, workers)
            seconds[workers].append(time.perf_counter() - started)
            failed = [r for r in results if not r.ok]
            if failed:
                raise RuntimeError(f"benchmark fold failed:\n{failed[0].error}")
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    return {
        "walkforward.speedup_2_workers": {
            "value": round(one / two, 2), "unit": "x", "baseline": None, "ratio": round(one / two, 2),
            "target": ">= 1.6", "met": one / two >= 1.6, "folds": folds, "bars_per_fold": size,
            "one_worker_s": round(one, 2), "two_workers_s": round(two, 2),
        }
    }
