"""Apply the ordered plain-SQL migrations in `sql/` with yoyo-migrations.

A PostgreSQL advisory lock serialises concurrent starts (two processes migrating at once wait for
each other, and the second finds nothing left to apply).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from rl_lifecycle.db.connection import resolve_database_url, yoyo_url
from rl_lifecycle.settings import Settings

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_MIGRATION_LOCK_KEY = 0x726C5F6D6967  # "rl_mig"


def apply_migrations(url: str) -> list[str]:
    """Apply pending migrations; returns the ids applied by this call (empty when up to date)."""
    from yoyo import get_backend, read_migrations

    if not SQL_DIR.is_dir():
        raise RuntimeError(f"migrations directory {SQL_DIR} is missing")
    with psycopg.connect(url, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            backend = get_backend(yoyo_url(url))
            pending = backend.to_apply(read_migrations(str(SQL_DIR)))
            ids = [m.id for m in pending]
            if pending:
                with backend.lock():
                    backend.apply_migrations(pending)
            return ids
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))


def pending_migrations(url: str) -> list[str]:
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_url(url))
    return [m.id for m in backend.to_apply(read_migrations(str(SQL_DIR)))]


def open_database(settings: Settings) -> str:
    """URL of the database in use (RL_DATABASE_URL, or the embedded server, started on demand), migrated."""
    url = resolve_database_url(settings)
    apply_migrations(url)
    return url
