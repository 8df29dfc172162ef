"""Shared fixtures: a real PostgreSQL (embedded, or RL_DATABASE_URL) with a scratch database per worker."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from rl_lifecycle.db.connection import plain_postgres_url

REPO = Path(__file__).resolve().parents[1]
# The domain tables: every table the migrations create (Dagster's own tables may share the database).
DOMAIN_TABLES = sorted({
    m.group(1) for path in (REPO / "sql").glob("*.sql")
    for m in re.finditer(r"CREATE TABLE(?: IF NOT EXISTS)?\s+([a-z_][a-z0-9_]*)", path.read_text(), re.IGNORECASE)
})


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> Iterator[str]:
    """An admin URL of the server under test; the embedded one lives only for this session."""
    external = os.environ.get("RL_DATABASE_URL")
    if external:
        yield plain_postgres_url(external)
        return
    from rl_lifecycle.db import embedded

    pgdata = tmp_path_factory.mktemp("pg") / "pgdata"
    url = embedded.start(pgdata)
    yield _with_database(url, "postgres")
    embedded.stop(pgdata)


def _scratch_database(server_url: str, label: str) -> Iterator[str]:
    name = f"rl_test_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def empty_database_url(server_url) -> Iterator[str]:
    """A database with nothing in it: for migration tests."""
    yield from _scratch_database(server_url, "empty")


@pytest.fixture(scope="session")
def migrated_url(server_url) -> Iterator[str]:
    from rl_lifecycle.db.migrate import apply_migrations

    for url in _scratch_database(server_url, "main"):
        apply_migrations(url)
        yield url


@pytest.fixture
def database_url(migrated_url) -> str:
    """The migrated test database, emptied before each test."""
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
            (DOMAIN_TABLES,),
        ).fetchall()]
        if tables:
            # replica role: append-only tables refuse TRUNCATE through triggers, which tests must bypass
            conn.execute("SET session_replication_role = replica")
            conn.execute("TRUNCATE " + ", ".join(tables) + " CASCADE")
    _empty_mlflow_store(migrated_url)
    return migrated_url


def _empty_mlflow_store(database_url: str) -> None:
    """Forget the models and runs an earlier test registered in the database's MLflow store
    (`<db>_mlflow`, made on first use): a partition's model is found by its tags, so a model of the
    same market and window left by another test on this worker would pass for this test's own."""
    parts = urlsplit(database_url)
    name = f"{parts.path.lstrip('/')}_mlflow"
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
    with psycopg.connect(_with_database(database_url, name), autocommit=True) as conn:
        present = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
            (["registered_models", "runs"],),
        ).fetchall()]
        if present:
            conn.execute("TRUNCATE " + ", ".join(present) + " CASCADE")


@pytest.fixture
def conn(database_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def rl_env(database_url, tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for code (and subprocesses) that reads RL_* settings: test database, temp home."""
    env = {"RL_DATABASE_URL": database_url, "RL_HOME": str(tmp_path / "rl_home")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def dagster_database_url(server_url) -> Iterator[str]:
    """A separate database for Dagster's own run/event storage."""
    yield from _scratch_database(server_url, "dagster")


@pytest.fixture
def dagster_instance(dagster_database_url, rl_env, tmp_path: Path):
    """A real PostgreSQL-backed Dagster instance (dagster-postgres, psycopg2 URL)."""
    from dagster import DagsterInstance

    from rl_lifecycle.db import dagster_storage_url

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url: " + dagster_storage_url(dagster_database_url) + "\n"
        "telemetry:\n  enabled: false\n"
        "code_servers:\n  wait_for_local_processes_on_shutdown: true\n"  # no code server outlives its test
    )
    with DagsterInstance.from_config(str(home)) as instance:
        # each test starts from an empty instance: no runs, events or market partitions of earlier tests
        instance.wipe()
        for key in instance.get_dynamic_partitions("market"):
            instance.delete_dynamic_partition("market", key)
        yield instance


@pytest.fixture
def nondeterministic_features(monkeypatch) -> None:
    """The canonical pipeline, in this process only, nudges the last row's first value by one ulp:
    a pipeline whose output depends on the process. A freshly spawned interpreter (the determinism
    check's) computes the true bytes, so runs must execute in this process to see the fault."""
    import numpy as np

    import rl_lifecycle.features.service as service

    real = service.compute_features

    def nondeterministic(*args, **kwargs):
        frame = real(*args, **kwargs)
        values = np.array(frame.values, copy=True)
        values[-1, 0] = np.nextafter(values[-1, 0], np.inf)
        return type(frame)(frame.ts, values, frame.is_warm, frame.missing, frame.feature_names)

    monkeypatch.setattr(service, "compute_features", nondeterministic)
