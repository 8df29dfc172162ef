"""Migrations and the embedded/external database switch, on a real PostgreSQL."""

from __future__ import annotations

import multiprocessing

import psycopg
import pytest

from rl_lifecycle.db.connection import dagster_storage_url, plain_postgres_url
from rl_lifecycle.db.migrate import apply_migrations, pending_migrations

MIGRATIONS = ["0001.markets-candles", "0002.feature-store", "0003.datasets", "0004.candle-change-stamps",
              "0005.market-calendars", "0006.evaluations", "0007.promotion-audit", "0008.decisions", "0009.alerts",
              "0010.alert-failure-times", "0011.cpcv-backtests", "0012.inbox-alerts", "0013.rollout-switches",
              "0014.market-span-windows", "0015.paper-and-promotion-events",
              "0016.auto-rollback-and-stability", "0017.market-fill",
              "0018.cluster-state-in-the-database"]
EXPECTED_TABLES = {
    "markets", "market_candles", "candles_quarantine", "feature_sets", "rl_feature_snapshots",
    "rl_feature_windows", "dataset_versions", "evaluation_reports", "evaluation_folds",
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


TIME_SERIES_KEYS = {
    "market_candles": ["pair", "interval", "ts"],
    "rl_feature_snapshots": ["pair", "interval", "feature_set_id", "ts"],
}


def _primary_key(conn: psycopg.Connection, table: str) -> list[str] | None:
    return conn.execute(
        """SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = %s::regclass AND i.indisprimary""",
        (table,),
    ).fetchone()[0]


def test_primary_keys_and_plain_tables_without_timescale(migrated_url):
    with psycopg.connect(migrated_url) as conn:
        timescale = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert {t: _primary_key(conn, t) for t in TIME_SERIES_KEYS} == TIME_SERIES_KEYS
        kinds = dict(conn.execute(
            """SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relname = ANY(%s)""",
            (list(TIME_SERIES_KEYS),),
        ).fetchall())
        if timescale is None:
            # ordinary heap tables: not views, not declaratively partitioned
            assert kinds == dict.fromkeys(TIME_SERIES_KEYS, "r")
        else:
            hypertables = {r[0] for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'"
            )}
            assert set(TIME_SERIES_KEYS) <= hypertables


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
