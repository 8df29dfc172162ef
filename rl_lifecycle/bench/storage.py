"""Benchmarks of the storage paths: feature snapshot upserts and reads, dataset builds cold and warm."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg

from rl_lifecycle.bench.harness import MONTHLY, _median_seconds
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import to_us


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
    from rl_lifecycle.markets.table import add_market

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
