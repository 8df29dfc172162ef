"""Which database is in use, and connections to it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

from rl_lifecycle.db import embedded
from rl_lifecycle.settings import Settings, load_settings


def resolve_database_url(settings: Settings | None = None, *, start: bool = True) -> str:
    """RL_DATABASE_URL when set; otherwise the embedded server's URL (started on demand)."""
    settings = settings or load_settings()
    if settings.database_url:
        return plain_postgres_url(settings.database_url)
    if start:
        return embedded.start(settings.pgdata)
    url = embedded.url_if_running(settings.pgdata)
    if url is None:
        raise RuntimeError(f"the embedded database under {settings.pgdata} is not running")
    return url


def plain_postgres_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix (`postgresql+psycopg2://`) so libpq clients accept the URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, *parts[1:]))


def dagster_storage_url(url: str) -> str:
    """dagster-postgres needs psycopg2 explicitly: SQLAlchemy 2.1 made psycopg 3 the default driver."""
    return "postgresql+psycopg2" + plain_postgres_url(url)[len("postgresql") :]


def yoyo_url(url: str) -> str:
    return "postgresql+psycopg" + plain_postgres_url(url)[len("postgresql") :]


def connect(url: str) -> psycopg.Connection:
    """An autocommit connection: the core opens its own transactions where it needs them."""
    return psycopg.connect(url, autocommit=True)


def server_versions(conn: psycopg.Connection) -> tuple[str, str | None]:
    """The PostgreSQL server version and the timescaledb extension's (None when it is not installed)."""
    version = conn.execute("SHOW server_version").fetchone()[0]
    timescale = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return version, timescale[0] if timescale else None
