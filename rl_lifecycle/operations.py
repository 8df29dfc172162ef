"""Use cases shared by the CLI and the main job: open the database, register markets, run partitions."""

from __future__ import annotations

import sys

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets import Market
from rl_lifecycle.runner import PartitionRun
from rl_lifecycle.settings import Settings


def open_database(settings: Settings) -> str:
    """URL of the database in use, started on demand and migrated."""
    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.migrate import apply_migrations

    url = resolve_database_url(settings)
    apply_migrations(url)
    return url


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def register_market(
    url: str, settings: Settings, market: Market, source: str = "import", seed: int | None = None,
    *, calendar: str | None = None,
) -> bool:
    """Register a market (calendar default crypto; another than a registered market's is refused) and its partition."""
    from rl_lifecycle.instance import get_instance, sync_market_partitions
    from rl_lifecycle.registry import add_market

    with connect(url) as conn:
        added = add_market(conn, market, source=source, seed=seed, calendar=calendar)
    sync_market_partitions(get_instance(settings, url), [market.key])
    return added


def run_partitions(
    settings: Settings, url: str, assets: list[str], keys: list[str], run_config: dict | None = None
) -> list[PartitionRun]:
    """Materialize each partition, printing one line per run and a progress bar on stderr."""
    from rl_lifecycle.runner import materialize

    return _with_progress(settings, url, keys, lambda instance, report: materialize(
        instance, assets, keys, on_done=report, run_config=run_config))


def check_partitions(settings: Settings, url: str, checks: list[str], keys: list[str]) -> list[PartitionRun]:
    """Evaluate checks on their own for each partition, printing one line per run."""
    from rl_lifecycle.runner import run_checks

    return _with_progress(settings, url, keys, lambda instance, report: run_checks(instance, checks, keys, on_done=report))


def _with_progress(settings: Settings, url: str, keys: list[str], launch) -> list[PartitionRun]:
    from tqdm import tqdm

    from rl_lifecycle.instance import get_instance, sync_market_partitions
    from rl_lifecycle.registry import list_markets

    with connect(url) as conn:
        registered = {r.market.key for r in list_markets(conn)}
    unregistered = sorted({k.split("|")[0] for k in keys} - registered)
    if unregistered:
        raise UserInputError(f"market(s) not registered: {', '.join(unregistered)}; add them with `rl-lifecycle market add`")
    instance = get_instance(settings, url)
    sync_market_partitions(instance, sorted(registered))
    bar = tqdm(total=len(keys), desc="runs", unit="partition", file=sys.stderr, disable=None)  # no bar when not a TTY

    def report(run) -> None:
        bar.update(1)
        status = "ok" if run.ok else "FAILED"
        checks = ", ".join(f"{c.check}={'pass' if c.passed else 'FAIL'}" for c in run.checks)
        bar.write(f"{run.partition_key}: {status}; materialized {', '.join(run.materialized) or '-'}"
                  + (f"; checks {checks}" if checks else "") + f"; run {run.run_id}")
        for error in run.errors:
            bar.write(f"  error: {error}")
        for c in run.checks:
            if not c.passed and c.description:
                bar.write(f"  {c.check}: {c.description}")

    try:
        return launch(instance, report)
    finally:
        bar.close()
