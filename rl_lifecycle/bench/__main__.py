"""`make bench`: speed targets measured beside a baseline in the same run, on a scratch database.

Results go to $RL_HOME/bench/latest.json as {"<name>": {"value", "unit", "baseline", "ratio",
"target", "met", ...}} and to the generated section of docs/benchmarks.md (machine and date).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from rl_lifecycle.bench.harness import _machine, scratch_database, write_report
from rl_lifecycle.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m rl_lifecycle.bench",
        description="Run every benchmark beside its baseline on a scratch database (about 5 minutes on 2 cores), write "
                    "$RL_HOME/bench/latest.json and the results section of docs/benchmarks.md; exit 1 if a "
                    "target is not met. `make scale` measures growth with markets.",
    ).parse_args(argv)
    # imported when run, not when this module is: some groups load torch, SB3 or NautilusTrader at import
    from rl_lifecycle.bench.backfill import bench_backfill
    from rl_lifecycle.bench.decisions import bench_decide
    from rl_lifecycle.bench.evaluation import bench_accountant, bench_rl_vs_replay, bench_walkforward_speedup
    from rl_lifecycle.bench.features import bench_pipeline_vs_talib
    from rl_lifecycle.bench.gates import bench_gates
    from rl_lifecycle.bench.models import bench_inference, bench_sb3_fps
    from rl_lifecycle.bench.storage import bench_datasets, bench_snapshots
    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.connection import plain_postgres_url

    settings = load_settings()
    url = resolve_database_url(settings)
    parts = urlsplit(plain_postgres_url(url))
    server_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    results: dict = {}
    print("features.pipeline_vs_talib ...", flush=True)
    results["features.pipeline_vs_talib"] = bench_pipeline_vs_talib()
    print("rl.sb3_fps_vs_trivial_env, rl.infer_rows_per_s ...", flush=True)
    results["rl.sb3_fps_vs_trivial_env"] = bench_sb3_fps()
    results["rl.infer_rows_per_s"] = bench_inference()
    results.update(bench_backfill(server_url))  # prints its own progress line
    results.update(bench_decide(server_url))  # prints its own progress line
    with scratch_database(server_url) as scratch:
        print("snapshots ...", flush=True)
        results.update(bench_snapshots(scratch))
        print("datasets.warm_vs_cold ...", flush=True)
        results.update(bench_datasets(scratch))
        print("backtest.rl_vs_replay_strategy, backtest.rl_vs_trivial_strategy, walkforward.speedup_2_workers ...",
              flush=True)
        results.update(bench_rl_vs_replay(scratch))
        results.update(bench_walkforward_speedup(scratch))
    print("backtest.accountant_bars_per_s ...", flush=True)
    results.update(bench_accountant())
    print("gates.false_promotion_rate, gates.power (500 + 500 calibration decisions) ...", flush=True)
    results.update(bench_gates())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings.bench_dir.mkdir(parents=True, exist_ok=True)
    (settings.bench_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(results, _machine(), when)
    for name, r in results.items():
        print(f"{name:32} {r['value']} {r['unit']:<16} ratio {r['ratio']} target {r['target']} {'met' if r['met'] else 'NOT MET'}")
    return 0 if all(r["met"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
