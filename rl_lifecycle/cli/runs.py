"""Runs launched from the CLI and `make run`: through the code location, one line per run and a progress bar."""

from __future__ import annotations

import sys

from rl_lifecycle.db.connection import connect
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import market_of
from rl_lifecycle.markets.table import list_markets
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.instance import get_instance
from rl_lifecycle.orchestration.launcher import PartitionRun, materialize, run_checks
from rl_lifecycle.orchestration.partitions import sync_market_partitions
from rl_lifecycle.settings import Settings


def materialize_with_progress(
    settings: Settings, url: str, assets: list[str], keys: list[str], run_config: dict | None = None
) -> list[PartitionRun]:
    """Materialize each partition, printing one line per run and a progress bar on stderr."""
    return _with_progress(settings, url, keys, lambda instance, report: materialize(
        instance, defs, assets, keys, on_done=report, run_config=run_config))


def check_with_progress(settings: Settings, url: str, checks: list[str], keys: list[str]) -> list[PartitionRun]:
    """Evaluate checks on their own for each partition, printing one line per run."""
    return _with_progress(settings, url, keys, lambda instance, report: run_checks(
        instance, defs, checks, keys, on_done=report))


def _with_progress(settings: Settings, url: str, keys: list[str], launch) -> list[PartitionRun]:
    from tqdm import tqdm

    with connect(url) as conn:
        registered = {r.market.key for r in list_markets(conn)}
    unregistered = sorted({market_of(k) for k in keys} - registered)
    if unregistered:
        raise UserInputError(f"market(s) not registered: {', '.join(unregistered)}; add them with `rl-lifecycle market add`")
    if settings.executor == "celery":  # lifecycle steps go to the broker: a clear error before any run waits on it
        from rl_lifecycle.cluster.broker import broker_url, require_reachable

        require_reachable(broker_url(settings))
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
