"""`decide.latency_p99_ms`: p99 latency of the decide use case on a 1m market with a month of history.

Measured as a long-lived decider (`rl-lifecycle paper run`) makes decisions: before each one the next
1m candle is written (untimed), then the decision is timed end to end (audit read, newest-candle probe,
the open window's candles checked against the database and the new one fetched, canonical pipeline over
the whole window, OOD, `Policy.act`, append to `rl_decisions`). The decisions are the month's last bars:
the longest window input there is. The baseline is the bare pipeline call, `compute_features` on the
same candle rows, timed in the same run. `cold_p99_ms` is a decision with nothing cached (what a one-shot
`rl-lifecycle decide` pays for its candles): the whole window read from PostgreSQL.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from rl_lifecycle.bench.harness import scratch_database
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import WindowScheme

TARGET_MS = 50.0


def _p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 99))


def bench_decide(server_url: str, repeats: int = 200) -> dict:
    from rl_lifecycle.candles.input_cache import CandleInputCache
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.candles.store import load_candles_with_warmup, upsert_candles
    from rl_lifecycle.candles.synthetic import synthetic_arrays
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import spec_ending_at
    from rl_lifecycle.decisions.safety import vector_sha256
    from rl_lifecycle.decisions.service import ChampionCache, decide
    from rl_lifecycle.features.pipeline import compute_features
    from rl_lifecycle.features.spec import load_feature_set
    from rl_lifecycle.models.service import train_challenger
    from rl_lifecycle.models.spec import load_model_spec, parse_model_spec
    from rl_lifecycle.models.tracking import mlflow_database_url, open_registry
    from rl_lifecycle.promotion.service import manual_promote

    scheme = WindowScheme("monthly")
    window = scheme.parse("2024-03-01")
    market = Market("BTCUSDT", "1m")
    spec = load_feature_set("ta_v2", anchor="monthly")
    live_from = window.end - repeats * market.interval_us  # these bars arrive one per decision
    print("decide.latency_p99_ms ...", flush=True)
    with scratch_database(server_url) as url, tempfile.TemporaryDirectory(prefix="rl-bench-decide-") as tmp:
        mlflow_url = mlflow_database_url(url)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                ingest_synthetic(conn, market, scheme.previous(window).start, live_from, seed=21)
                build_dataset(conn, spec_ending_at(market, scheme.previous(window), scheme, spec.name, 1),
                              Path(tmp) / "datasets", spec)
                registry = open_registry(url, artifacts_uri=(Path(tmp) / "mlflow").as_uri())
                base = load_model_spec("ppo_small").model_dump(mode="json")
                model_spec = parse_model_spec(
                    {**base, "total_timesteps": 256,
                     "hyperparameters": {**base.get("hyperparameters", {}), "n_steps": 128, "batch_size": 64}},
                    "bench")
                trained = train_challenger(conn, registry, market, scheme.previous(window), model_spec)
                manual_promote(conn, registry, market, trained.version.version, "decide benchmark", "bench",
                               override=True)
                champions, candle_inputs = ChampionCache(), CandleInputCache()
                arriving = synthetic_arrays(market, live_from, window.end, seed=21)

                def next_bar(i: int) -> int:
                    upsert_candles(conn, market, arriving.slice(i, i + 1).to_frame())
                    return int(arriving.ts[i]) + market.interval_us  # the instant this bar closes

                cold_started = time.perf_counter()
                decide(conn, market, registry=registry, at_us=next_bar(0), feature_set=spec, champions=champions,
                       candle_inputs=candle_inputs)
                cold_ms = (time.perf_counter() - cold_started) * 1000
                decide_ms, pipeline_ms, agree = [], [], True
                for i in range(1, repeats):  # interleaved: both see the same machine state
                    at = next_bar(i)
                    started = time.perf_counter()
                    decision = decide(conn, market, registry=registry, at_us=at, feature_set=spec,
                                      champions=champions, candle_inputs=candle_inputs)
                    decide_ms.append((time.perf_counter() - started) * 1000)
                    candles = load_candles_with_warmup(conn, market, window.start, at, spec.warmup)
                    started = time.perf_counter()
                    frame = compute_features(spec, candles, scheme, window.start)
                    pipeline_ms.append((time.perf_counter() - started) * 1000)
                    agree = agree and decision.record.vector_sha256 == vector_sha256(np.array(frame.values[-1]))
                cold_runs = []
                for _ in range(max(repeats // 10, 5)):  # nothing cached: the whole window comes from PostgreSQL
                    started = time.perf_counter()
                    decide(conn, market, registry=registry, at_us=window.end, feature_set=spec, champions=champions,
                           candle_inputs=CandleInputCache())
                    cold_runs.append((time.perf_counter() - started) * 1000)
                full_reads = candle_inputs.full_reads
        finally:
            with psycopg.connect(server_url, autocommit=True) as admin:
                name = mlflow_url.rsplit("/", 1)[-1].split("?")[0]
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    value, baseline = _p99(decide_ms), _p99(pipeline_ms)
    return {
        "decide.latency_p99_ms": {
            "value": round(value, 2), "unit": "ms (p99)", "baseline": round(baseline, 2),
            "ratio": round(value / baseline, 2), "target": f"<= {TARGET_MS:g}", "met": value <= TARGET_MS and agree,
            "repeats": repeats, "candle_rows": len(candles), "median_ms": round(float(np.median(decide_ms)), 2),
            "pipeline_median_ms": round(float(np.median(pipeline_ms)), 2), "cold_p99_ms": round(_p99(cold_runs), 2),
            "first_decision_ms": round(cold_ms, 1), "full_candle_reads": full_reads,
            "action": decision.record.action, "reason_codes": list(decision.record.reason_codes),
            "vectors_equal_pipeline": agree,
        }
    }


if __name__ == "__main__":
    import json
    from urllib.parse import urlsplit, urlunsplit

    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.connection import plain_postgres_url

    parts = urlsplit(plain_postgres_url(resolve_database_url()))
    print(json.dumps(bench_decide(urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))), indent=2))
