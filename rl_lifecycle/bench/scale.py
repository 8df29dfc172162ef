"""`make scale`: how the platform grows with markets, and fold steps spread over Celery workers (issue 19).

* `cluster.speedup_2_workers`: the fan-out of a 4-fold `fold_report` (first fold step started to last fold
  step ended, from the run's event log) on one Celery worker over the same on two, each worker with a state
  dir of its own (each rebuilds the dataset), over the embedded Redis broker; the same partition, challenger
  and folds both times. MLflow is the bench's own store on this machine, not a tracking server (the
  no-shared-disk form is what `test_celery_executor.py` tests; this measures the speed-up).
* `growth`: for 5, 20 and 50 synthetic 1h markets of 10 years each, a backfill of the market data assets with
  every check through the code location (as `rl-lifecycle materialize` launches it): wall time, rows written
  per second, database size; the time the UI's GraphQL API takes to return `candles`' partition status; and
  the online-learning sensor's tick (first tick over every stored window, then a tick with nothing new).

Results go to `$RL_HOME/bench/scale.json` and the generated scale section of docs/benchmarks.md. A run of
5/20/50 markets takes about an hour on 2 cores; `--markets 2,4 --years 1` shows the shape in minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import yaml

from rl_lifecycle.bench.harness import (
    MONTHLY,
    REPO_ROOT,
    _environment,
    _machine,
    scratch_database,
    write_report,
)
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.orchestration.measurements import (
    fold_fan_out_seconds,
    online_tick_seconds,
    partition_status_seconds,
)
from rl_lifecycle.settings import default_window_start, load_settings

SCALE_BEGIN, SCALE_END = "<!-- scale:begin -->", "<!-- scale:end -->"
DAGSTER_PARTITION_ADVICE = 100_000  # partitions per asset Dagster advises staying under
MARKET_DATA_ASSETS = ["candles", "feature_snapshots", "training_dataset"]


@contextmanager
def _instance_on(url: str, extra_env: dict[str, str] | None = None):
    """A Dagster instance with the deployed dagster.yaml on the scratch database, in a throw-away home; the
    code server and its runs inherit the environment."""
    from rl_lifecycle.db import dagster_storage_url
    from rl_lifecycle.orchestration.instance import STORAGE_URL_ENV, instance_from_config

    with tempfile.TemporaryDirectory() as home:
        shutil.copyfile(REPO_ROOT / "dagster.yaml", Path(home, "dagster.yaml"))
        env = {"RL_DATABASE_URL": url, STORAGE_URL_ENV: dagster_storage_url(url), "DAGSTER_HOME": home,
               "RL_HOME": str(Path(home, "rl_home")), **(extra_env or {})}
        with _environment(env), instance_from_config(Path(home)) as instance:
            yield instance, Path(home)


# -- growth with markets -----------------------------------------------------------------------------------
def grow(server_url: str, markets: int, years: int, last: str = "2024-12-01") -> dict:
    """One size of the growth table: `markets` synthetic 1h markets of `years` years each, backfilled."""
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.orchestration.definitions import defs
    from rl_lifecycle.orchestration.launcher import materialize
    from rl_lifecycle.orchestration.partitions import sync_market_partitions

    last_window = MONTHLY.parse(last)
    first_window = last_window
    for _ in range(12 * years - 1):
        first_window = MONTHLY.previous(first_window)
    windows = MONTHLY.range(first_window.key, last_window.key)
    keys = [Market(f"S{i:03d}USDT", "1h") for i in range(markets)]
    with scratch_database(server_url) as url, _instance_on(url) as (instance, _):
        with psycopg.connect(url, autocommit=True) as conn:
            for i, market in enumerate(keys):
                add_market(conn, market, source="synthetic", seed=100 + i)
        sync_market_partitions(instance, [m.key for m in keys])
        started = time.perf_counter()
        runs = materialize(instance, defs, MARKET_DATA_ASSETS,
                           [partition_key(m, w) for m in keys for w in windows])
        backfill_s = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as conn:
            candles = conn.execute("SELECT count(*) FROM market_candles").fetchone()[0]
            snapshots = conn.execute("SELECT count(*) FROM rl_feature_snapshots").fetchone()[0]
            dataset_rows = conn.execute("SELECT coalesce(sum(rows), 0) FROM dataset_versions").fetchone()[0]
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        status_s, stats = partition_status_seconds(instance)
        first_tick_s, next_tick_s, requests = online_tick_seconds(instance, url)
    ok = all(r.ok for r in runs)
    return {
        "markets": markets, "windows": len(windows), "partitions": markets * len(windows), "all_ok": ok,
        "failed_runs": sum(not r.ok for r in runs), "backfill_s": round(backfill_s, 1),
        "s_per_market": round(backfill_s / markets, 1), "candles": candles, "snapshot_rows": snapshots,
        "dataset_rows": int(dataset_rows), "rows_per_s": round((candles + snapshots) / backfill_s),
        "db_mb": round(size / 2**20), "partition_status_ms": round(status_s * 1000),
        "partition_stats": stats, "online_first_tick_s": round(first_tick_s, 2),
        "online_next_tick_s": round(next_tick_s, 2), "online_first_tick_requests": requests,
    }


def first_limit(window_cadence: str = "monthly") -> dict:
    """Markets at which one asset passes Dagster's advised 100,000 partitions, at the default RL_WINDOW_START."""
    start = default_window_start(window_cadence)
    scheme = MONTHLY if window_cadence == "monthly" else None
    now = datetime.now(UTC).strftime("%Y-%m-01")
    windows = len(scheme.range(start, now)) if scheme else None
    return {"window_start": start, "windows_to_now": windows,
            "markets_at_advised_limit": None if not windows else math.ceil(DAGSTER_PARTITION_ADVICE / windows)}


# -- fold steps over Celery workers --------------------------------------------------------------------------
SPEEDUP_SPEC = {"name": "scale_ppo", "algorithm": "PPO", "policy": {"net_arch": [64, 64], "activation": "tanh"},
                "hyperparameters": {"learning_rate": 0.0003, "n_steps": 512, "batch_size": 64, "n_epochs": 4,
                                    "gamma": 0.99}, "total_timesteps": 32768, "seed": 3, "action_set": "long_flat",
                "cost_bps": 10.0, "episode_length": 512, "feature_set": "ta_v2"}


def _start_workers(names: list[str], home: Path, broker_url: str) -> list[subprocess.Popen]:
    rl = str(Path(sys.executable).with_name("rl-lifecycle"))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"RL_BROKER_URL": broker_url}
    return [subprocess.Popen([rl, "worker", "--name", name], cwd=REPO_ROOT, start_new_session=True,
                             env={**env, "RL_HOME": str(home / f"machine-{name}")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in names]


def stop_process_groups(procs: list[subprocess.Popen], timeout_s: float = 60.0) -> None:
    """SIGTERM each process group started (`start_new_session`), SIGKILL what is left after `timeout_s` in all."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def cluster_speedup(server_url: str, folds: int = 4) -> dict:
    """`cluster.speedup_2_workers`: the fold fan-out on 1 Celery worker over the same on 2."""
    from rl_lifecycle.cluster import broker
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.orchestration.definitions import defs
    from rl_lifecycle.orchestration.launcher import materialize
    from rl_lifecycle.orchestration.partitions import sync_market_partitions

    market = Market("CLUSTERUSDT", "1h")
    windows = MONTHLY.range("2024-01-01", "2024-06-01")
    partition = partition_key(market, windows[-1])
    with scratch_database(server_url) as url, _instance_on(url) as (instance, home):
        settings = load_settings()
        port = settings.broker_port + 1  # not a broker `rl-lifecycle broker start` may be running on
        broker.start(home / "broker", port)
        url_of_broker = broker.embedded_url(port)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                add_market(conn, market, source="synthetic", seed=21, span_windows=6)
            sync_market_partitions(instance, [market.key])
            data = materialize(instance, defs, MARKET_DATA_ASSETS, [partition_key(market, w) for w in windows])
            if not all(r.ok for r in data):
                raise RuntimeError(f"market data: {[r.errors for r in data if not r.ok]}")
            spec = home / "scale_ppo.yaml"
            spec.write_text(yaml.safe_dump(SPEEDUP_SPEC))
            (trained,) = materialize(instance, defs, ["challenger_model"], [partition],
                                     run_config={"ops": {"challenger_model": {"config": {"spec": str(spec)}}}})
            if not trained.ok:
                raise RuntimeError(f"challenger: {trained.errors}")
            fold_config = {"ops": {"fold_report": {"config": {"folds": folds}}}}
            seconds, placement = {}, {}
            with _environment({"RL_EXECUTOR": "celery", "RL_BROKER_URL": url_of_broker}):
                for names in (["solo"], ["alpha", "beta"]):
                    workers = _start_workers(names, home, url_of_broker)
                    try:
                        (run,) = materialize(instance, defs, ["fold_report"], [partition], run_config=fold_config)
                        if not run.ok:
                            raise RuntimeError(f"fold_report on {names}: {run.errors}")
                        seconds[len(names)], placement[len(names)] = fold_fan_out_seconds(instance, run.run_id)
                    finally:
                        stop_process_groups(workers)
        finally:
            broker.stop(home / "broker", port)
    speedup = seconds[1] / seconds[2]
    spread = sorted({node.split("@")[0] for node in placement[2].values()})
    return {"cluster.speedup_2_workers": {
        "value": round(seconds[2], 1), "unit": "s (2 workers)", "baseline": round(seconds[1], 1),
        "ratio": round(speedup, 2), "target": ">= 1.6 (1 worker / 2 workers)",
        "met": speedup >= 1.6 and spread == ["alpha", "beta"], "folds": folds, "workers_used": spread,
    }}


def growth_table(rows: list[dict], limit: dict) -> list[str]:
    lines = ["", "Growth with markets (1h synthetic markets, market data assets and every check, through the code "
             "location):", "",
             "| markets | partitions backfilled (defined) | backfill s | s per market | rows/s | database MB | "
             "partition status ms | online tick s (first, next) | failed runs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        defined = r["partition_stats"].get("numPartitions")
        lines.append(f"| {r['markets']} | {r['partitions']:,} ({defined:,}) | {r['backfill_s']} | {r['s_per_market']} | "
                     f"{r['rows_per_s']:,} | {r['db_mb']:,} | {r['partition_status_ms']} | "
                     f"{r['online_first_tick_s']}, {r['online_next_tick_s']} | {r['failed_runs']} |")
    lines += ["", f"First limit: at the default RL_WINDOW_START ({limit['window_start']}, "
              f"{limit['windows_to_now']} monthly windows to now) one asset passes the {DAGSTER_PARTITION_ADVICE:,} "
              f"partitions Dagster advises at {limit['markets_at_advised_limit']} markets."]
    return lines


def main(argv: list[str] | None = None) -> int:
    from urllib.parse import urlsplit, urlunsplit

    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.connection import plain_postgres_url

    parser = argparse.ArgumentParser(prog="python -m rl_lifecycle.bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--markets", default="5,20,50", help="market counts of the growth table (comma separated)")
    parser.add_argument("--years", type=int, default=10, help="years of 1h candles per market")
    parser.add_argument("--skip-cluster", action="store_true", help="the growth table only")
    parser.add_argument("--skip-growth", action="store_true", help="cluster.speedup_2_workers only")
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in args.markets.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--markets {args.markets!r}: give market counts such as 5,20,50")
    if not sizes or min(sizes) < 1 or args.years < 1:
        parser.error("--markets and --years must be positive")

    settings = load_settings()
    parts = urlsplit(plain_postgres_url(resolve_database_url(settings)))
    server_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    stored = settings.bench_dir / "scale.json"
    previous = json.loads(stored.read_text()) if stored.is_file() else {}
    # a part skipped keeps its figures of the previous run
    results = previous.get("results", {}) if args.skip_cluster else {}
    rows = previous.get("growth", []) if args.skip_growth else []
    if not args.skip_cluster:
        print("cluster.speedup_2_workers (4 folds on 1, then 2 Celery workers) ...", flush=True)
        results.update(cluster_speedup(server_url))
    if not args.skip_growth:
        for n in sizes:
            print(f"growth: {n} markets x {args.years} years of 1h candles ...", flush=True)
            rows.append(grow(server_url, n, args.years))
            print(f"  {json.dumps(rows[-1])}", flush=True)
    limit = first_limit(settings.window_cadence)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings.bench_dir.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps({"results": results, "growth": rows, "limit": limit},
                                                              indent=2, default=str))
    write_report(results, _machine(), when, begin=SCALE_BEGIN, end=SCALE_END,
                 extra_lines=growth_table(rows, limit) if rows else [])
    for name, r in results.items():
        print(f"{name:32} {r['value']} {r['unit']:<16} ratio {r['ratio']} target {r['target']} "
              f"{'met' if r['met'] else 'NOT MET'}")
    return 0 if all(r["met"] for r in results.values()) and all(r["all_ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
