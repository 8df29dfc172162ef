"""The embedded PostgreSQL 16 (pgserver) under `$RL_HOME/pgdata`, used when RL_DATABASE_URL is unset.

It listens on a Unix socket only. Started servers keep running after the process exits (pgserver's
cleanup_mode=None) so the Dagster UI, the CLI and the tests share one server; `stop()` ends it.

The data directory appears whole or not at all: `initdb` writes into a temporary directory next to
it (`.pgdata.init-*`), which is renamed to `pgdata` once complete, under a lock file next to it
(`.pgdata.lock`). A command killed during the first start leaves only a temporary directory, which
the next start removes. State dirs broken otherwise (by a version that initialised in place, or by
hand) are refused with a `UserInputError` that names the directory and the commands that repair it,
not pgserver's AssertionError or PostgreSQL's `FATAL: database "postgres" does not exist`; a
`postmaster.pid` left by a process that is gone is removed, as PostgreSQL itself would.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from rl_lifecycle.errors import UserInputError

DATABASE_NAME = "rl_lifecycle"
PID_FILE_LINES = 8  # postmaster.pid of a running server (pgserver's PostmasterInfo reads exactly these)
STARTING_WAIT_S = 15.0  # a server another command is starting gets this long to become ready


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

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / "PG_VERSION").exists() else None
    except (AssertionError, ValueError):  # a postmaster.pid cut short: no server to report
        info = None
    if info is None or not info.is_running():
        return EmbeddedStatus(pgdata, False, None, None)
    return EmbeddedStatus(pgdata, info.status == "ready", info.pid, info.socket_dir)


def _socket_url(socket_dir: Path, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={socket_dir}"


def start(pgdata: Path) -> str:
    """Start (or join) the embedded server and make sure our database exists; returns its URL.

    A fresh data directory is initialised atomically; a broken one raises `UserInputError` saying what to do."""
    _quiet_imports()
    import pgserver

    pgdata = Path(os.path.abspath(pgdata))
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _init_lock(pgdata):
        _remove_stale_pid_file(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            _initialise(pgdata)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise UserInputError(_does_not_start(pgdata, exc)) from exc
    socket_dir = server.get_postmaster_info().socket_dir
    try:
        admin = psycopg.connect(_socket_url(socket_dir, "postgres"), autocommit=True)
    except psycopg.OperationalError as exc:
        if 'database "postgres" does not exist' not in str(exc):
            raise
        raise UserInputError(
            f"the embedded PostgreSQL under {pgdata} was never fully initialised (it has no `postgres` "
            "database: its first start was interrupted), so it holds no data of yours. Set it aside and "
            f"start afresh: rl-lifecycle db stop && mv {pgdata} {pgdata}.broken && rl-lifecycle db start"
        ) from exc
    with admin as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between our check and our CREATE
    return _socket_url(socket_dir, DATABASE_NAME)


@contextmanager
def _init_lock(pgdata: Path) -> Iterator[None]:
    """One process at a time checks and initialises `pgdata` (a lock file next to it)."""
    with open(pgdata.parent / f".{pgdata.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _initialise(pgdata: Path) -> None:
    """`initdb` into a temporary directory next to `pgdata`, then rename it to `pgdata` (under the lock).

    Leftover temporary directories are from initialisations killed on the way: removed. A `pgdata` that
    exists with something in it but without PG_VERSION is half of an initialisation done in place: refused."""
    for leftover in pgdata.parent.glob(f".{pgdata.name}.init-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if pgdata.exists():
        if any(pgdata.iterdir()):
            raise UserInputError(
                f"the embedded PostgreSQL data directory {pgdata} is incomplete (no PG_VERSION: its "
                "initialisation was interrupted), so it holds no data of yours. Set it aside and start "
                f"afresh: mv {pgdata} {pgdata}.broken && rl-lifecycle db start"
            )
        pgdata.rmdir()
    staging = Path(tempfile.mkdtemp(prefix=f".{pgdata.name}.init-", dir=pgdata.parent))
    try:
        _initdb(staging)
        staging.rename(pgdata)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _initdb(target: Path) -> None:
    """pgserver's initdb of a new data directory (as `PostgresServer.ensure_pgdata_inited` runs it), into `target`."""
    from pgserver._commands import POSTGRES_BIN_PATH, initdb

    user = None
    if _running_as_root():  # PostgreSQL refuses to run as root: pgserver runs it as the user `pgserver`
        import pwd
        import stat

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = "pgserver"
        ensure_user_exists(user)
        ensure_prefix_permissions(target)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        entry = pwd.getpwnam(user)
        os.chown(target, entry.pw_uid, entry.pw_gid)
    target.chmod(0o700)
    initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"], pgdata=target, user=user)


def _pid_file_lines(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None


def _postgres_alive(pid: int) -> bool:
    """Whether process `pid` is a live PostgreSQL process (not gone, not a zombie, not another program
    under a reused pid); one this user may not inspect counts as alive."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "postgres" in process.name()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _remove_stale_pid_file(pgdata: Path) -> None:
    """Remove a `postmaster.pid` whose process is gone (pgserver cannot read one cut short and would
    trust one whose pid was reused); wait for, or refuse with what to do, a server that is not ready."""
    deadline = time.monotonic() + STARTING_WAIT_S
    while True:
        lines = _pid_file_lines(pgdata)
        if lines is None:
            return
        first = lines[0].strip() if lines else ""
        pid = abs(int(first)) if first.lstrip("-").isdigit() else None  # single-user backends write -pid
        if not pid or not _postgres_alive(pid):
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
            return
        if len(lines) == PID_FILE_LINES and lines[-1].strip() == "ready":
            return  # a running server: joined
        if time.monotonic() > deadline:
            state = lines[-1].strip() if len(lines) == PID_FILE_LINES else "initialising"
            raise UserInputError(
                f"a PostgreSQL process (pid {pid}) still holds {pgdata} and is not ready ({state}) after "
                f"{STARTING_WAIT_S:.0f} s: wait for it and run the command again, or stop it "
                f"(kill {pid}; if it does not go, kill -9 {pid}) and run the command again"
            )
        time.sleep(0.5)


def _does_not_start(pgdata: Path, exc: BaseException) -> str:
    log = pgdata / "log"
    tail = ""
    if log.exists():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        tail = f"; its log ({log}) ends: {lines[-1][:300]}" if lines else ""
    return (f"the embedded PostgreSQL under {pgdata} does not start ({type(exc).__name__}{tail}). If that "
            f"directory holds nothing you need, set it aside and start afresh: mv {pgdata} {pgdata}.broken "
            "&& rl-lifecycle db start")


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
