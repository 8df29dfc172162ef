"""The embedded PostgreSQL survives a kill -9 during its first start, and a state dir left broken says
exactly what to do (issue 22, point 6). Real pgserver clusters in temporary directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from rl_lifecycle.db import embedded
from rl_lifecycle.errors import UserInputError

RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")
START = "import sys; from pathlib import Path; from rl_lifecycle.db import embedded; embedded.start(Path(sys.argv[1]))"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _initialising(proc: subprocess.Popen) -> bool:
    """initdb's bootstrap or single-user backend runs: the data directory is being written."""
    for child in _descendants(proc.pid):
        try:
            if child.name() == "postgres" and {"--boot", "--single"} & set(child.cmdline()):
                return True
        except psutil.Error:
            pass
    return False


def _stop_servers_of(pgdata: Path) -> None:
    """Kill whatever PostgreSQL still runs on `pgdata` (a test's leftovers)."""
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if process.info["name"] == "postgres" and str(pgdata) in " ".join(process.info["cmdline"] or []):
                process.kill()
        except psutil.Error:
            pass


@pytest.fixture
def cleanup():
    dirs: list[Path] = []
    yield dirs
    for pgdata in dirs:
        try:
            embedded.stop(pgdata)
        except Exception:  # noqa: BLE001 - a broken directory may not stop cleanly
            pass
        _stop_servers_of(pgdata)


def _works(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == embedded.DATABASE_NAME


def test_a_first_start_killed_during_initdb_leaves_nothing_the_next_start_trips_on(tmp_path, cleanup):
    pgdata = tmp_path / "state" / "pgdata"
    cleanup.append(pgdata)
    proc = subprocess.Popen([sys.executable, "-c", START, str(pgdata)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _initialising(proc):
        assert proc.poll() is None, "the first start ended before initdb was seen"
        assert time.monotonic() < deadline, "initdb never ran"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and initdb with it, mid-way
    proc.wait(timeout=30)
    time.sleep(0.5)
    assert not (pgdata / "PG_VERSION").exists()  # nothing half-made where the next start looks

    url = embedded.start(pgdata)  # recovers by itself
    _works(url)
    assert list(pgdata.parent.glob(".pgdata.init-*")) == []  # the killed attempt's staging dir is gone


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> Path:
    """A stopped, complete data directory to copy broken shapes from."""
    pgdata = tmp_path_factory.mktemp("template") / "pgdata"
    embedded.start(pgdata)
    embedded.stop(pgdata)
    return pgdata


def _copy(template: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(template), str(target)], check=True)  # keeps the owner (pgserver when root)
    return target


def test_a_data_directory_half_written_in_place_names_the_commands_that_repair_it(tmp_path):
    pgdata = tmp_path / "state" / "pgdata"
    (pgdata / "global").mkdir(parents=True)  # what an older first start killed during initdb left
    (pgdata / "base").mkdir()
    (pgdata / "postgresql.conf").write_text("# half written\n")
    with pytest.raises(UserInputError) as raised:
        embedded.start(pgdata)
    message = str(raised.value)
    assert str(pgdata) in message and "incomplete" in message
    assert f"mv {pgdata} {pgdata}.broken && rl-lifecycle db start" in message

    # the CLI says the same, with exit code 2 and no traceback
    env = {k: v for k, v in os.environ.items() if k != "RL_DATABASE_URL"} | {"RL_HOME": str(pgdata.parent)}
    done = subprocess.run([str(RL_LIFECYCLE), "db", "start"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"mv {pgdata} {pgdata}.broken && rl-lifecycle db start" in done.stderr
    assert "Traceback" not in done.stderr and "AssertionError" not in done.stderr

    # following the advice works
    subprocess.run(f"mv {pgdata} {pgdata}.broken", shell=True, check=True)
    try:
        _works(embedded.start(pgdata))
    finally:
        embedded.stop(pgdata)


def test_a_postmaster_pid_left_by_a_dead_process_is_cleared(initialised, tmp_path, cleanup):
    pgdata = _copy(initialised, tmp_path / "state" / "pgdata")
    cleanup.append(pgdata)
    gone = subprocess.Popen(["true"])
    gone.wait()
    # cut short, as a server killed while it started writes it (pgserver's AssertionError `_lines` before)
    (pgdata / "postmaster.pid").write_text(f"{gone.pid}\n{pgdata}\n1796300000\n5432\n")
    assert embedded.status(pgdata).running is False  # `db status` reads it without failing
    _works(embedded.start(pgdata))


def test_a_data_directory_without_the_postgres_database_names_the_commands_that_repair_it(initialised, tmp_path, cleanup):
    pgdata = _copy(initialised, tmp_path / "state" / "pgdata")
    cleanup.append(pgdata)
    url = embedded.start(pgdata)
    template1 = url.replace(f"/{embedded.DATABASE_NAME}?", "/template1?")
    with psycopg.connect(template1, autocommit=True) as conn:  # what an initdb killed before its end leaves
        conn.execute('DROP DATABASE postgres WITH (FORCE)')
    with pytest.raises(UserInputError) as raised:
        embedded.start(pgdata)
    message = str(raised.value)
    assert str(pgdata) in message and "no `postgres` database" in message
    assert f"rl-lifecycle db stop && mv {pgdata} {pgdata}.broken && rl-lifecycle db start" in message
