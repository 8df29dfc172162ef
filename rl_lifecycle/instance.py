"""The Dagster instance on PostgreSQL: DAGSTER_HOME under RL_HOME, storage on the same database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dagster import DagsterInstance

from rl_lifecycle.db import dagster_storage_url
from rl_lifecycle.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
STORAGE_URL_ENV = "RL_DAGSTER_STORAGE_URL"


def prepare_dagster_env(settings: Settings, database_url: str) -> Path:
    """Point DAGSTER_HOME at $RL_HOME/dagster holding the repo's dagster.yaml; set the storage URL."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ[STORAGE_URL_ENV] = dagster_storage_url(database_url)
    return home


def get_instance(settings: Settings, database_url: str) -> DagsterInstance:
    prepare_dagster_env(settings, database_url)
    return DagsterInstance.get()


def sync_market_partitions(instance: DagsterInstance, market_keys: list[str]) -> list[str]:
    """Add markets missing from the `market` dynamic partition dimension; returns the keys added."""
    from rl_lifecycle.partitions import MARKET_DIMENSION

    existing = set(instance.get_dynamic_partitions(MARKET_DIMENSION))
    missing = [k for k in market_keys if k not in existing]
    if missing:
        instance.add_dynamic_partitions(MARKET_DIMENSION, missing)
    return missing
