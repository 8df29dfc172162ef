"""Dagster resources: they own connections. The core receives plain connections from them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource

from rl_lifecycle.db import resolve_database_url
from rl_lifecycle.db.migrate import apply_migrations

_MIGRATED: set[str] = set()  # URLs migrated by this process: migrate once, not on every connection


class PostgresResource(ConfigurableResource):
    """The feature store / audit database: RL_DATABASE_URL, or the embedded server when unset."""

    url: str | None = None

    def database_url(self) -> str:
        return self.url or resolve_database_url()

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        url = self.database_url()
        if url not in _MIGRATED:
            apply_migrations(url)
            _MIGRATED.add(url)
        with psycopg.connect(url, autocommit=True) as conn:
            yield conn


class MlflowResource(ConfigurableResource):
    """MLflow tracking + registry in its own database on the feature store's server; artifacts under RL_HOME."""

    database: PostgresResource
    tracking_uri: str | None = None  # default: `<database>_mlflow` on the same server
    artifacts_uri: str | None = None  # default: RL_MLFLOW_ARTIFACTS, else $RL_HOME/mlflow

    def registry(self):
        from rl_lifecycle.models.tracking import open_registry

        return open_registry(self.database.database_url(), tracking_uri=self.tracking_uri, artifacts_uri=self.artifacts_uri)
