"""Database access: which PostgreSQL is in use, connections, migrations."""

from rl_lifecycle.db.connection import dagster_storage_url, resolve_database_url

__all__ = ["dagster_storage_url", "resolve_database_url"]
