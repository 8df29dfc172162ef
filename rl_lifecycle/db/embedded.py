"""The embedded PostgreSQL 16 (pgserver) under `$RL_HOME/pgdata`, used when RL_DATABASE_URL is unset.

It listens on a Unix socket only. Started servers keep running after the process exits (pgserver's
cleanup_mode=None) so the Dagster UI, the CLI and the tests share one server; `stop()` ends it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg

DATABASE_NAME = "rl_lifecycle"


@dataclass(frozen=True)
class EmbeddedStatus:
    pgdata: Path
    running: bool
    pid: int | None
    socket_dir: Path | None


def _quiet_imports():
    # pgserver imports platformdirs, which warns about XDG_RUNTIME_DIR on headless machines.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def status(pgdata: Path) -> EmbeddedStatus:
    _quiet_imports()
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / "PG_VERSION").exists() else None
    if info is None or not info.is_running():
        return EmbeddedStatus(pgdata, False, None, None)
    return EmbeddedStatus(pgdata, info.status == "ready", info.pid, info.socket_dir)


def _socket_url(socket_dir: Path, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={socket_dir}"


def start(pgdata: Path) -> str:
    """Start (or join) the embedded server and make sure our database exists; returns its URL."""
    _quiet_imports()
    import pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    with psycopg.connect(_socket_url(socket_dir, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between our check and our CREATE
    return _socket_url(socket_dir, DATABASE_NAME)


def url_if_running(pgdata: Path) -> str | None:
    current = status(pgdata)
    if not current.running or current.socket_dir is None:
        return None
    return _socket_url(current.socket_dir, DATABASE_NAME)


def stop(pgdata: Path) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    _quiet_imports()
    if not status(pgdata).running:
        return False
    from pgserver._commands import pg_ctl

    user = "pgserver" if _running_as_root() else None
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
    return True


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
