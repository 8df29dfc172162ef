"""`rl-lifecycle db ...`: the embedded PostgreSQL (or RL_DATABASE_URL), its URL and migrations."""

from __future__ import annotations

import typer

from rl_lifecycle.db.connection import connect, server_versions
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.settings import load_settings

db_app = typer.Typer(no_args_is_help=True, help="The database: embedded PostgreSQL or RL_DATABASE_URL.")


@db_app.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL in the background (it keeps running) and migrate it."""
    settings = load_settings()
    if settings.database_url:
        typer.echo("RL_DATABASE_URL is set: using the external database, nothing to start.")
        return
    url = open_database(settings)
    typer.echo(f"embedded PostgreSQL running under {settings.pgdata}\nurl: {url}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    from rl_lifecycle.db import embedded

    settings = load_settings()
    stopped = embedded.stop(settings.pgdata)
    typer.echo("stopped" if stopped else f"not running ({settings.pgdata})")


@db_app.command("status")
def db_status() -> None:
    """Which database is in use and whether it is up."""
    from rl_lifecycle.db import embedded
    from rl_lifecycle.db.migrate import pending_migrations

    settings = load_settings()
    if settings.database_url:
        from rl_lifecycle.db.connection import plain_postgres_url

        url = plain_postgres_url(settings.database_url)
        typer.echo("database: external (RL_DATABASE_URL)")
    else:
        state = embedded.status(settings.pgdata)
        typer.echo(f"database: embedded PostgreSQL 16 under {settings.pgdata}")
        typer.echo(f"running: {'yes, pid ' + str(state.pid) if state.running else 'no'}")
        if not state.running:
            return
        url = embedded.url_if_running(settings.pgdata)
    with connect(url) as conn:
        version, timescale = server_versions(conn)
    typer.echo(f"server: PostgreSQL {version}; timescaledb: {'not installed' if timescale is None else timescale}")
    pending = pending_migrations(url)
    typer.echo(f"migrations pending: {', '.join(pending) if pending else 'none'}")


@db_app.command("url")
def db_url() -> None:
    """Print a URL for psql and other clients (starts the embedded server if needed)."""
    typer.echo(open_database(load_settings()))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations from sql/ (idempotent)."""
    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.migrate import apply_migrations

    applied = apply_migrations(resolve_database_url(load_settings()))
    typer.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")
