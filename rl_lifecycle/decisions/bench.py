"""`decide.latency_p99_ms`: p99 latency of the decide use case on a 1m market with a month of history.

The decision is measured end to end as the paper schedule makes it with its champion loaded (audit read,
newest-candle probe, candle read and canonical pipeline over the still-open window, OOD, `Policy.act`,
append to `rl_decisions`), at the last bar of the month: the longest window input there is. The baseline is
the bare pipeline call, `compute_features` on the same candle rows, timed in the same run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from rl_lifecycle.markets import Market
from rl_lifecycle.windows import WindowScheme

TARGET_MS = 50.0


def _p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 99))


def bench_decide(server_url: str, repeats: int = 200) -> dict:
    from rl_lifecycle.bench import scratch_database
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.candles.store import load_candles_with_warmup
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import spec_ending_at
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
    at = window.end  # the month's last bar (23:59) has just closed: the whole month is the window's input
    print("decide.latency_p99_ms ...", flush=True)
    with scratch_database(server_url) as url, tempfile.TemporaryDirectory(prefix="rl-bench-decide-") as tmp:
        mlflow_url = mlflow_database_url(url)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                ingest_synthetic(conn, market, scheme.previous(window).start, window.end, seed=21)
                build_dataset(conn, spec_ending_at(market, window, scheme, spec.name, 1), Path(tmp) / "datasets", spec)
                registry = open_registry(url, artifacts_uri=(Path(tmp) / "mlflow").as_uri())
                base = load_model_spec("ppo_small").model_dump(mode="json")
                model_spec = parse_model_spec(
                    {**base, "total_timesteps": 256,
                     "hyperparameters": {**base.get("hyperparameters", {}), "n_steps": 128, "batch_size": 64}},
                    "bench")
                trained = train_challenger(conn, registry, market, window, model_spec)
                manual_promote(conn, registry, market, trained.version.version, "decide benchmark", "bench",
                               override=True)
                champions = ChampionCache()
                cold_started = time.perf_counter()
                first = decide(conn, market, registry=registry, at_us=at, feature_set=spec, champions=champions)
                cold_ms = (time.perf_counter() - cold_started) * 1000

                candles = load_candles_with_warmup(conn, market, window.start, window.end, spec.warmup)
                decide_ms, pipeline_ms = [], []
                for _ in range(repeats):  # interleaved: both see the same machine state
                    started = time.perf_counter()
                    decision = decide(conn, market, registry=registry, at_us=at, feature_set=spec, champions=champions)
                    decide_ms.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    compute_features(spec, candles, scheme, window.start)
                    pipeline_ms.append((time.perf_counter() - started) * 1000)
                same_vector = decision.record.vector_sha256 == first.record.vector_sha256
        finally:
            with psycopg.connect(server_url, autocommit=True) as admin:
                name = mlflow_url.rsplit("/", 1)[-1].split("?")[0]
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    value, baseline = _p99(decide_ms), _p99(pipeline_ms)
    return {
        "decide.latency_p99_ms": {
            "value": round(value, 2), "unit": "ms (p99)", "baseline": round(baseline, 2),
            "ratio": round(value / baseline, 2), "target": f"<= {TARGET_MS:g}", "met": value <= TARGET_MS and same_vector,
            "repeats": repeats, "candle_rows": len(candles), "median_ms": round(float(np.median(decide_ms)), 2),
            "pipeline_median_ms": round(float(np.median(pipeline_ms)), 2), "cold_first_decision_ms": round(cold_ms, 1),
            "action": decision.record.action, "reason_codes": list(decision.record.reason_codes),
            "same_vector_every_decision": same_vector,
        }
    }


if __name__ == "__main__":
    import json
    from urllib.parse import urlsplit, urlunsplit

    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.connection import plain_postgres_url

    parts = urlsplit(plain_postgres_url(resolve_database_url()))
    print(json.dumps(bench_decide(urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))), indent=2))
