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


def bench_rl_vs_replay(url: str, repeats: int = 5, policy: ActsOnVectors | None = None) -> dict:
    """`backtest.rl_vs_replay_strategy`: bars/s of the RL strategy / bars/s of a strategy that replays its
    identical orders at the same bars (`backtest.ReplayStrategy`: same venue, engine, bars and fills, no
    policy, rollout or sizing), each rate the bars over the engine run's CPU time in its child process, the
    kinds alternated within the run, medians of `repeats` (>= 5). Beside it NautilusTrader's own cost: µs per
    order (replay minus idle, per order) and µs per idle bar; and `backtest.rl_vs_trivial_strategy` (RL /
    do-nothing), information only: its ceiling is set by Nautilus' cost per order."""
    from rl_lifecycle.evaluation.backtest import FoldJob, run_fold_backtest

    if repeats < 5:
        raise ValueError(f"repeats={repeats}: the benchmark takes the median of at least 5 runs")
    candles, vectors, spec = fold_inputs(url)
    policy = policy or trend_policy(spec)

    def run(kind: str, orders=()):
        result = run_fold_backtest(FoldJob(BENCH_MARKET.key, 0, candles, vectors, policy, 10.0, strategy=kind,
                                           orders=orders))
        if not result.ok:
            raise RuntimeError(f"benchmark backtest ({kind}) failed:\n{result.error}")
        return result

    first = run("rl")
    fills = [(f.ts, f.quantity, f.price, f.fee) for f in first.fills]
    orders = tuple((f.bar, f.quantity) for f in first.fills)  # a market order fills whole, at its bar
    cpu: dict[str, list[float]] = {"idle": [], "replay": [], "rl": []}
    for _ in range(repeats):
        for kind in ("idle", "replay", "rl"):
            result = run(kind, orders if kind == "replay" else ())
            if kind != "idle" and [(f.ts, f.quantity, f.price, f.fee) for f in result.fills] != fills:
                raise RuntimeError(f"the {kind} run's fills differ from the first RL run's")
            cpu[kind].append(result.timings["engine_cpu_s"])
    bars, n_orders = len(candles), len(orders)
    rl, replay_, idle = (bars / statistics.median(cpu[k]) for k in ("rl", "replay", "idle"))
    per_order_us = (1 / replay_ - 1 / idle) * bars / n_orders * 1e6 if n_orders else None
    common = {"bars": bars, "orders": n_orders, "policy": type(policy).__name__, "repeats": repeats, "clock": "cpu"}
    return {
        "backtest.rl_vs_replay_strategy": {
            "value": round(rl), "unit": "bars/s", "baseline": round(replay_), "ratio": round(rl / replay_, 3),
            "target": ">= 0.95", "met": rl / replay_ >= 0.95, **common,
            "nautilus_us_per_order": None if per_order_us is None else round(per_order_us, 1),
            "nautilus_us_per_idle_bar": round(1e6 / idle, 2),
            "rl_us_per_order_beyond_replay": round((1 / rl - 1 / replay_) * bars / n_orders * 1e6, 1) if n_orders else None,
        },
        "backtest.rl_vs_trivial_strategy": {
            "value": round(rl), "unit": "bars/s", "baseline": round(idle), "ratio": round(rl / idle, 3),
            "target": ">= 0.6 (information)", "met": rl / idle >= 0.6, **common,
            "us_per_order": round((1 / rl - 1 / idle) * bars / n_orders * 1e6, 1) if n_orders else None,
        },
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


def accountant_inputs(bars: int = 10_000_000, long_short: bool = False, cost_bps: float = 10.0,
                      switch_rate: float = 1.0 / 22.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(closes, positions) for `bench_accountant`: positions a two-state Markov chain that flips with
    probability `switch_rate` per bar (long/flat, or long/short); closes a log random walk (1e-3 per bar,
    0.01 ticks from 40,000) that drifts the policy's way (up after a long bar, down otherwise) by what the
    flips cost: equity stays near the balance over millions of fills instead of paying itself away (sizes
    would round to 0), and the price stays near its start."""
    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.random(bars) < switch_rate) % 2
    positions = (2 * state - 1 if long_short else state).astype(np.int8)
    way = 2.0 * np.concatenate(([0], state[:-1])) - 1.0  # +1 after a long bar, -1 after a flat or short one
    sigma, fee = 1e-3, cost_bps / 1e4
    turnover, exposure = (2.0, 1.0) if long_short else (1.0, 0.5)  # equity traded per flip, share of bars held
    drift = fee * switch_rate * turnover / exposure + sigma**2 / 2
    log_close = np.cumsum(sigma * rng.standard_normal(bars) + drift * way)
    return np.round(40_000.0 * np.exp(log_close), 2), positions


def bench_accountant(bars: int = 10_000_000, repeats: int = 5) -> dict:
    """`backtest.accountant_bars_per_s`: bars/s of `evaluation.accountant.account` (fills, equity curve, per-bar
    fees and notional, the Nautilus account's equity) at 10 bps and one flip every ~22 bars, median of `repeats`."""
    from rl_lifecycle.evaluation.accountant import account

    def run(close: np.ndarray, positions: np.ndarray) -> tuple[float, int, float]:
        """Seconds, fills and final equity of one booking. Only these are kept: the result's ~330 MB of
        arrays are dropped, as a caller booking fold after fold drops them (first use of fresh memory
        costs this VM about as much as the booking itself)."""
        started = time.perf_counter()
        result = account(close, positions, 10.0, 100_000.0, 6, price_precision=2, currency_precision=8)
        result.fees, result.traded_notional, result.quantities  # noqa: B018  (the per-bar arrays, materialised)
        return time.perf_counter() - started, result.fills, result.account_equity

    rates: dict[str, float] = {}
    booked: dict[str, tuple[float, int, float]] = {}
    for kind in ("long_flat", "long_short"):
        close, positions = accountant_inputs(bars, long_short=kind == "long_short")
        runs = [run(close, positions) for _ in range(repeats)]
        rates[kind] = bars / statistics.median(seconds for seconds, _, _ in runs)
        booked[kind] = runs[-1]
    rate = rates["long_flat"]
    return {
        "backtest.accountant_bars_per_s": {
            "value": round(rate), "unit": "bars/s", "baseline": None, "ratio": None, "target": ">= 20000000",
            "met": rate >= 20_000_000, "bars": bars, "fills": booked["long_flat"][1], "cost_bps": 10.0,
            "seconds": round(bars / rate, 3), "long_short_bars_per_s": round(rates["long_short"]),
            "long_short_fills": booked["long_short"][1], "final_equity": round(booked["long_flat"][2], 2),
        }
    }
