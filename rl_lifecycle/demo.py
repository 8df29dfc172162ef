"""The main job behind `make run`: demo markets through every asset, then a readable summary."""

from __future__ import annotations

import typer

from rl_lifecycle.markets import Market
from rl_lifecycle.operations import connect, open_database, register_market, run_partitions
from rl_lifecycle.settings import Settings

DEMO_MARKETS = {Market("BTCUSDT", "1h"): 7, Market("ETHUSDT", "1h"): 11}
DEMO_WINDOWS = ("2024-01-01", "2024-06-01")
DEMO_ASSETS = ["candles"]


def run_demo(settings: Settings) -> bool:
    from rl_lifecycle.partitions import WINDOW_SCHEME

    url = open_database(settings)
    typer.echo(f"database: {'RL_DATABASE_URL' if settings.database_url else 'embedded PostgreSQL under ' + str(settings.pgdata)}")
    for market, seed in DEMO_MARKETS.items():
        register_market(url, settings, market, source="synthetic", seed=seed)
    windows = WINDOW_SCHEME.range(*DEMO_WINDOWS)
    keys = [f"{m.key}|{w.key}" for m in DEMO_MARKETS for w in windows]
    runs = run_partitions(settings, url, DEMO_ASSETS, keys)
    print_summary(url, windows[0].start, windows[-1].end)
    failed = [r for r in runs if not r.ok]
    typer.echo(f"\n{len(runs) - len(failed)}/{len(runs)} partition runs succeeded; see them in the UI with `make dev`.")
    return not failed


def print_summary(url: str, start_us: int, end_us: int) -> None:
    from rl_lifecycle.candles.service import summarize_window
    from rl_lifecycle.partitions import WINDOW_SCHEME
    from rl_lifecycle.windows import iso

    typer.echo("\nstored candles")
    typer.echo(f"  {'market':<12} {'window':<10} {'rows':>6} {'gaps':>5}  first .. last")
    with connect(url) as conn:
        for market in DEMO_MARKETS:
            for window in WINDOW_SCHEME.covering(start_us, end_us):
                s = summarize_window(conn, market, window)
                span = f"{iso(s.first_ts)} .. {iso(s.last_ts)}" if s.rows else "-"
                typer.echo(f"  {market.key:<12} {window.key:<10} {s.rows:>6} {len(s.gaps):>5}  {span}")
