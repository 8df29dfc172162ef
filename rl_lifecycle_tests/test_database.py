"""Migrations and the embedded/external database switch, on a real PostgreSQL."""

from __future__ import annotations

import multiprocessing

import psycopg
import pytest

from rl_lifecycle.db.connection import dagster_storage_url, plain_postgres_url
from rl_lifecycle.db.migrate import apply_migrations, pending_migrations

MIGRATIONS = ["0001.markets-candles", "0002.feature-store", "0003.datasets", "0004.candle-change-stamps"]
EXPECTED_TABLES = {
    "markets", "market_candles", "candles_quarantine", "feature_sets", "rl_feature_snapshots",
    "rl_feature_windows", "dataset_versions",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def _migrate(url: str) -> list[str]:
    return apply_migrations(url)


def test_migrations_from_zero_then_rerun(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    first = apply_migrations(empty_database_url)
    assert first == MIGRATIONS
    assert EXPECTED_TABLES <= _tables(empty_database_url)
    assert apply_migrations(empty_database_url) == []
    assert pending_migrations(empty_database_url) == []


def test_two_processes_migrating_at_once(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        applied = pool.map(_migrate, [empty_database_url, empty_database_url])
    # one process applies everything, the other finds nothing left to do
    assert sorted(applied, key=len) == [[], MIGRATIONS]
    assert EXPECTED_TABLES <= _tables(empty_database_url)


def test_primary_keys_and_plain_tables_without_timescale(migrated_url):
    with psycopg.connect(migrated_url) as conn:
        timescale = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        pk = conn.execute(
            """SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE i.indrelid = 'rl_feature_snapshots'::regclass AND i.indisprimary"""
        ).fetchone()[0]
    assert pk == ["pair", "interval", "feature_set_id", "ts"]
    if timescale is None:
        assert _tables(migrated_url) >= {"rl_feature_snapshots", "market_candles"}


@pytest.mark.parametrize(
    ("url", "plain", "dagster"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@/db?host=/tmp/s", "postgresql://u@/db?host=/tmp/s", "postgresql+psycopg2://u@/db?host=/tmp/s"),
    ],
)
def test_url_forms(url, plain, dagster):
    assert plain_postgres_url(url) == plain
    assert dagster_storage_url(url) == dagster
