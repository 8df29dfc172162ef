"""Which database is in use, and connections to it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

from rl_lifecycle.db import embedded
from rl_lifecycle.settings import Settings, load_settings, without_password


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


# SQLSTATEs of a server that is gone: connection exceptions (class 08) and shutdowns (admin, crash,
# cannot connect now). Other operational errors (lock timeouts, a cancelled query, a full disk) are not.
_SERVER_GONE = ("08", "57P01", "57P02", "57P03")


def lost_connection(exc: BaseException) -> BaseException | None:
    """The psycopg (or Dagster's and MLflow's psycopg2) error in `exc`'s chain saying the server is
    unreachable or went away during the command; None when the chain holds none."""
    try:
        import psycopg2
        operational: tuple[type, ...] = (psycopg.OperationalError, psycopg2.OperationalError)
    except ImportError:  # pragma: no cover - psycopg2 ships with dagster-postgres
        operational = (psycopg.OperationalError,)
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, operational):
            code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
            if code is None or code.startswith(_SERVER_GONE):
                return error
        # SQLAlchemy keeps the driver's error as `.orig`
        pending += [getattr(error, "orig", None), error.__cause__, error.__context__]
    return None


def database_location(settings: Settings) -> str:
    """Where the database in use is, for messages: RL_DATABASE_URL without its password, or the
    embedded server's data directory."""
    if settings.database_url:
        return without_password(plain_postgres_url(settings.database_url))
    return f"the embedded PostgreSQL under {settings.pgdata}"


def unreachable_message(exc: BaseException, settings: Settings) -> str:
    """One line: the database is unreachable, where, and the driver's reason (never the password)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    password = urlsplit(settings.database_url or "").password
    if password:
        reason = reason.replace(password, "***")
    return (f"the database is unreachable: {database_location(settings)} ({reason}); check that it is running "
            "(`rl-lifecycle db status`) and run the command again")
