"""`make bench`: speed targets measured beside a baseline in the same run, on a scratch database.

Results go to $RL_HOME/bench/latest.json as {"<name>": {"value", "unit", "baseline", "ratio",
"target", "met", ...}} and to the generated section of docs/benchmarks.md (machine and date).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg

from rl_lifecycle.markets import Market
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import WindowScheme, to_us

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
MONTHLY = WindowScheme("monthly")


def _median_seconds(action: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def scratch_database(server_url: str):
    """A migrated, throw-away database on the configured server."""
    from rl_lifecycle.db.migrate import apply_migrations

    name = f"rl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    try:
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _frame_for_rows(rows: int):
    """`rows` ta_v2 snapshot rows of one 1m market (synthetic candles, canonical pipeline)."""
    from rl_lifecycle.candles.frame import CandleArrays
    from rl_lifecycle.candles.synthetic import synthetic_candles
    from rl_lifecycle.features.pipeline import compute_features
    from rl_lifecycle.features.spec import load_feature_set

    spec = load_feature_set("ta_v2")
    market = Market("BTCUSDT", "1m")
    start = to_us("2024-01-01")
    candles = CandleArrays.from_frame(synthetic_candles(market, start, start + rows * market.interval_us, seed=3))
    return spec, market, compute_features(spec, candles, MONTHLY, start)


def bench_snapshots(url: str, rows: int = 100_000, executemany_rows: int = 20_000, repeats: int = 3) -> dict:
    from rl_lifecycle.db import binary_copy as bc
    from rl_lifecycle.features.store import (
        _fields,
        feature_set_id,
        read_snapshots,
        register_feature_set,
        upsert_snapshots,
    )
    from rl_lifecycle.registry import add_market

    spec, market, frame = _frame_for_rows(rows)
    k = len(spec.feature_names)
    results = {}
    with psycopg.connect(url, autocommit=True) as conn:
        add_market(conn, market)
        register_feature_set(conn, spec)

        def clear():
            conn.execute("TRUNCATE rl_feature_snapshots")

        upsert_s = _median_seconds(lambda: upsert_snapshots(conn, market, spec.fingerprint, frame), repeats, clear)
        rewrite_s = _median_seconds(lambda: upsert_snapshots(conn, market, spec.fingerprint, frame), repeats)

        conn.execute("CREATE TABLE bench_copy (LIKE rl_feature_snapshots INCLUDING ALL)")
        columns = {
            "ts": bc.us_to_pg(frame.ts), "vector": frame.values, "is_warm": frame.is_warm,
            "missing_mask": np.packbits(frame.missing, axis=1, bitorder="little"),
        }
        set_id = feature_set_id(conn, spec.fingerprint)
        key_fields = [bc.Field("pair", "S7"), bc.Field("interval", "S2"), bc.Field("feature_set_id", ">i4")]
        copy_columns = {"pair": np.full(rows, b"BTCUSDT"), "interval": np.full(rows, b"1m"),
                        "feature_set_id": np.full(rows, set_id), **columns}
        copy_s = _median_seconds(
            lambda: bc.copy_in(conn, "bench_copy", [*key_fields, *_fields(k)], copy_columns), repeats,
            lambda: conn.execute("TRUNCATE bench_copy"),
        )

        # Baseline: the common approach, a psycopg2 cursor.executemany of INSERT ... ON CONFLICT, one
        # statement per row. (psycopg 3's executemany pipelines; it is reported beside, for reference.)
        conn.execute("CREATE TABLE bench_many (LIKE rl_feature_snapshots INCLUDING ALL)")
        masks = np.packbits(frame.missing[:executemany_rows], axis=1, bitorder="little")
        params = [
            (market.pair, market.interval, set_id, datetime.fromtimestamp(int(t) / 1e6, UTC),
             frame.values[i].tobytes(), bool(frame.is_warm[i]), masks[i].tobytes())
            for i, t in enumerate(frame.ts[:executemany_rows])
        ]
        insert = """INSERT INTO bench_many (pair, interval, feature_set_id, ts, vector, is_warm, missing_mask)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (pair, interval, feature_set_id, ts) DO UPDATE
                    SET vector = EXCLUDED.vector, is_warm = EXCLUDED.is_warm, missing_mask = EXCLUDED.missing_mask"""

        def executemany_psycopg2():
            import psycopg2

            with psycopg2.connect(url) as legacy, legacy.cursor() as cur:
                cur.executemany(insert, [(*p[:4], psycopg2.Binary(p[4]), p[5], psycopg2.Binary(p[6])) for p in params])

        def executemany_psycopg3():
            with conn.cursor() as cur:
                cur.executemany(insert, params)

        truncate = lambda: conn.execute("TRUNCATE bench_many")  # noqa: E731
        many_s = _median_seconds(executemany_psycopg2, repeats, truncate)
        pipelined_s = _median_seconds(executemany_psycopg3, repeats, truncate)

        upsert_rate, copy_rate = rows / upsert_s, rows / copy_s
        many_rate = executemany_rows / many_s
        results["snapshots.upsert_vs_copy"] = {
            "value": round(upsert_rate), "unit": "rows/s", "baseline": round(copy_rate),
            "ratio": round(upsert_rate / copy_rate, 3), "target": ">= 0.4", "met": upsert_rate / copy_rate >= 0.4,
            "rows": rows, "identical_rewrite_rows_per_s": round(rows / rewrite_s),
        }
        results["snapshots.upsert_vs_executemany"] = {
            "value": round(upsert_rate), "unit": "rows/s", "baseline": round(many_rate),
            "ratio": round(upsert_rate / many_rate, 2), "target": ">= 20", "met": upsert_rate / many_rate >= 20,
            "baseline_rows": executemany_rows,
            "psycopg3_pipelined_executemany_rows_per_s": round(executemany_rows / pipelined_s),
        }
        upsert_snapshots(conn, market, spec.fingerprint, frame)
        end = int(frame.ts[50_000]) if rows > 50_000 else int(frame.ts[-1]) + 1
        read_s = _median_seconds(lambda: read_snapshots(conn, market, spec, int(frame.ts[0]), end), max(5, repeats))
        read_rows = len(read_snapshots(conn, market, spec, int(frame.ts[0]), end))
        results["snapshots.read_50k_ms"] = {
            "value": round(read_s * 1000, 1), "unit": "ms", "baseline": None, "ratio": None,
            "target": "<= 100", "met": read_s * 1000 <= 100, "rows": read_rows,
        }
    return results


def bench_datasets(url: str, months: int = 12, repeats: int = 3) -> dict:
    """The same >= 500k-row dataset built cold (empty snapshot store) and warm (all cached)."""
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.spec import DatasetSpec

    market = Market("BTCUSDT", "1m")
    windows = [MONTHLY.parse("2024-01-01")]
    while len(windows) < months:
        windows.append(MONTHLY.next(windows[-1]))
    spec = DatasetSpec.create(market=market.key, first_window=windows[0].key, last_window=windows[-1].key,
                              feature_set="ta_v2", window_cadence="monthly")
    out_dir = load_settings().bench_dir / "datasets"
    with psycopg.connect(url, autocommit=True) as conn:
        ingest_synthetic(conn, market, MONTHLY.previous(windows[0]).start, windows[-1].end, seed=5)

        def cold_setup():
            conn.execute("TRUNCATE rl_feature_snapshots, rl_feature_windows, dataset_versions")

        builds = []
        cold_s = _median_seconds(lambda: builds.append(build_dataset(conn, spec, out_dir)), repeats, cold_setup)
        warm_s = _median_seconds(lambda: builds.append(build_dataset(conn, spec, out_dir)), repeats)
    rows = builds[-1].rows
    same_hash = len({b.dataset_hash for b in builds}) == 1
    ratio = cold_s / warm_s
    return {
        "datasets.warm_vs_cold": {
            "value": round(warm_s, 3), "unit": "s (warm build)", "baseline": round(cold_s, 3),
            "ratio": round(ratio, 1), "target": ">= 20 (cold/warm)", "met": ratio >= 20 and same_hash and rows >= 500_000,
            "rows": rows, "same_hash_every_build": same_hash,
        }
    }


def bench_pipeline() -> dict:
    from rl_lifecycle.features.bench import bench_pipeline_vs_talib

    return {"features.pipeline_vs_talib": bench_pipeline_vs_talib()}


def bench_training() -> dict:
    from rl_lifecycle.models.bench import bench_inference, bench_sb3_fps

    print("rl.sb3_fps_vs_trivial_env, rl.infer_rows_per_s ...", flush=True)
    return {"rl.sb3_fps_vs_trivial_env": bench_sb3_fps(), "rl.infer_rows_per_s": bench_inference()}


def bench_evaluation(scratch_url: str) -> dict:
    from rl_lifecycle.evaluation.bench import bench_rl_vs_trivial, bench_walkforward_speedup

    print("backtest.rl_vs_trivial_strategy, walkforward.speedup_2_workers ...", flush=True)
    return {**bench_rl_vs_trivial(scratch_url), **bench_walkforward_speedup(scratch_url)}


def _core_work_seconds(url: str, market: Market, windows: list) -> float:
    """What the market data assets and their checks compute for these windows, called directly in
    this process (the determinism recompute too): the work a backfill cannot avoid."""
    from rl_lifecycle.assets.datasets import TrainingDatasetConfig
    from rl_lifecycle.candles.service import load_window
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import check_no_unwarm_rows, check_reproducible, spec_ending_at
    from rl_lifecycle.features import service as features
    from rl_lifecycle.features.spec import active_feature_set
    from rl_lifecycle.registry import add_market, get_market

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
            dataset = spec_ending_at(market, window, MONTHLY, spec.name, config.span_windows,
                                     forward_return_horizon=config.forward_return_horizon,
                                     transaction_cost_bps=config.transaction_cost_bps)
            build_dataset(conn, dataset, out_dir, spec)
            check_reproducible(conn, market, window)
            check_no_unwarm_rows(conn, market, window)
        return time.perf_counter() - start


@contextmanager
def _environment(values: dict[str, str]):
    """These environment variables set inside, the previous values (or their absence) restored after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bench_backfill(server_url: str, first: str = "2015-01-01", last: str = "2024-12-01") -> dict:
    """`backfill.overhead_ratio`: wall time of a backfill of the market data assets with every check,
    launched through the code location as `rl-lifecycle materialize` does, over the sum of the core's
    own work for the same partitions (each on a fresh database, same run)."""
    import tempfile

    from rl_lifecycle.db import dagster_storage_url
    from rl_lifecycle.instance import STORAGE_URL_ENV, sync_market_partitions
    from rl_lifecycle.registry import add_market
    from rl_lifecycle.runner import materialize

    market = Market("BTCUSDT", "1h")
    windows = MONTHLY.range(first, last)
    print(f"backfill.overhead_ratio ({len(windows)} windows) ...", flush=True)
    with scratch_database(server_url) as url:
        core_s = _core_work_seconds(url, market, windows)
    with scratch_database(server_url) as url, tempfile.TemporaryDirectory() as home:
        from dagster import DagsterInstance

        shutil.copyfile(REPO_ROOT / "dagster.yaml", Path(home, "dagster.yaml"))  # the deployed instance config
        # the code server and its runs inherit the environment: point both at the scratch database
        with _environment({"RL_DATABASE_URL": url, STORAGE_URL_ENV: dagster_storage_url(url)}):
            with psycopg.connect(url, autocommit=True) as conn:
                add_market(conn, market, source="synthetic", seed=7)
            with DagsterInstance.from_config(home) as instance:
                sync_market_partitions(instance, [market.key])
                start = time.perf_counter()
                runs = materialize(instance, ["candles", "feature_snapshots", "training_dataset"],
                                   [f"{market.key}|{w.key}" for w in windows])
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


def bench_decisions(server_url: str) -> dict:
    from rl_lifecycle.decisions.bench import bench_decide

    return bench_decide(server_url)  # prints its own progress line


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_report(results: dict, machine: str, when: str) -> None:
    lines = [BEGIN, f"Last run: {when} on {machine}.", "",
             "| benchmark | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        baseline = "-" if r.get("baseline") is None else r["baseline"]
        ratio = "-" if r.get("ratio") is None else r["ratio"]
        lines.append(f"| `{name}` | {r['value']} {r['unit']} | {baseline} | {ratio} | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    extras = {n: {k: v for k, v in r.items() if k not in {"value", "unit", "baseline", "ratio", "target", "met"}}
              for n, r in results.items()}
    lines += ["", "Details: " + "; ".join(f"`{n}` {json.dumps(e)}" for n, e in extras.items() if e), END]
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + "\n".join(lines) + tail)


def main() -> int:
    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.connection import plain_postgres_url

    settings = load_settings()
    url = resolve_database_url(settings)
    parts = urlsplit(plain_postgres_url(url))
    server_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    results: dict = {}
    print("features.pipeline_vs_talib ...", flush=True)
    results.update(bench_pipeline())
    results.update(bench_training())
    results.update(bench_backfill(server_url))
    results.update(bench_decisions(server_url))
    with scratch_database(server_url) as scratch:
        print("snapshots ...", flush=True)
        results.update(bench_snapshots(scratch))
        print("datasets.warm_vs_cold ...", flush=True)
        results.update(bench_datasets(scratch))
        results.update(bench_evaluation(scratch))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings.bench_dir.mkdir(parents=True, exist_ok=True)
    (settings.bench_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(results, _machine(), when)
    for name, r in results.items():
        print(f"{name:32} {r['value']} {r['unit']:<16} ratio {r['ratio']} target {r['target']} {'met' if r['met'] else 'NOT MET'}")
    return 0 if all(r["met"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
