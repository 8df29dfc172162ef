"""The Dagster instance on PostgreSQL: DAGSTER_HOME under RL_HOME, storage on the same database."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

from rl_lifecycle.db import dagster_storage_url
from rl_lifecycle.db.connection import connect
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.orchestration.partitions import sync_market_partitions
from rl_lifecycle.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
STORAGE_URL_ENV = "RL_DAGSTER_STORAGE_URL"


def prepare_dagster_env(settings: Settings, database_url: str) -> Path:
    """Point DAGSTER_HOME at $RL_HOME/dagster holding the repo's dagster.yaml; set the storage URL and an
    absolute RL_HOME for every process started from here."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ[STORAGE_URL_ENV] = dagster_storage_url(database_url)
    # Code servers, the daemon and run workers start in DAGSTER_HOME: a relative RL_HOME (the default
    # `.rl_lifecycle`) would name another state dir there, with another embedded database.
    os.environ["RL_HOME"] = str(settings.home)
    return home


def get_instance(settings: Settings, database_url: str) -> DagsterInstance:
    prepare_dagster_env(settings, database_url)
    return DagsterInstance.get()


def register_market(
    url: str, settings: Settings, market: Market, source: str = "import", seed: int | None = None,
    *, calendar: str | None = None, span_windows: int | None = None, fill: str | None = None,
) -> bool:
    """Register a market in the `markets` table (calendar default crypto, dataset span default 3; another
    than a registered market's is refused) and as a `market` partition; False when it was registered already."""
    with connect(url) as conn:
        added = add_market(conn, market, source=source, seed=seed, calendar=calendar, span_windows=span_windows,
                           fill=fill)
    sync_market_partitions(get_instance(settings, url), [market.key])
    return added


@contextmanager
def instance_from_config(dagster_home: Path) -> Iterator[DagsterInstance]:
    """An instance from the `dagster.yaml` under `dagster_home` (e.g. a benchmark's throw-away home)."""
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance
