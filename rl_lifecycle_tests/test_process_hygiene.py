"""What processes leave behind (issue 22, point 10): no password in process arguments, MLflow runs of
killed trainings marked FAILED, a CLI stopped with SIGTERM takes its code server and runs with it, and
links from the configured UI address. Real processes, real MLflow and Dagster on the test PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.tracking import HOST_TAG, PID_TAG, mlflow_server_command, open_registry

PASSWORD = "s3cretPW"
REPO = Path(__file__).resolve().parents[1]
RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")


def _with_password(url: str, password: str) -> str:
    """The same database with a password in the URL (the test server trusts local connections: any password works)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


# -- (a) the MLflow UI ------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_mlflow_server_keeps_the_database_password_out_of_its_arguments(database_url, rl_env, tmp_path):
    registry = open_registry(_with_password(database_url, PASSWORD))
    assert PASSWORD in registry.tracking_uri  # what used to go into `--backend-store-uri`
    port = _free_port()
    argv, env = mlflow_server_command(registry, "127.0.0.1", port)
    assert not any(PASSWORD in arg for arg in argv)
    log = tmp_path / "mlflow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # it answers with the project's experiments: it found its store through the environment
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5",
                                            timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server never answered:\n" + log.read_text()[-3000:]
                time.sleep(0.5)
        processes = _tree(proc.pid)
        assert len(processes) >= 2  # the server and its workers
        for process in processes:
            assert PASSWORD not in _cmdline(process.pid), (process.pid, _cmdline(process.pid))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- (c) MLflow runs of killed trainings -------------------------------------------------------------
TRAINING = textwrap.dedent("""
    import sys, time
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.models.tracking import open_registry

    registry = open_registry(sys.argv[1])
    run_id = registry.start_run(Market.parse("HYGUSDT-1h"), "a training that gets killed", {"market": "HYGUSDT-1h"})
    print(run_id, flush=True)
    time.sleep(600)
""")


def test_the_mlflow_run_of_a_killed_training_is_marked_failed_by_the_next_one(database_url, rl_env):
    market = Market.parse("HYGUSDT-1h")
    proc = subprocess.Popen([sys.executable, "-c", TRAINING, database_url], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **rl_env})
    try:
        killed_run = proc.stdout.readline().strip()
        assert killed_run, "the training process started no run"
    finally:
        proc.kill()
        proc.wait()
    registry = open_registry(database_url)
    assert registry.client.get_run(killed_run).info.status == "RUNNING"  # kill -9: nothing ended it
    assert registry.client.get_run(killed_run).data.tags[PID_TAG] == str(proc.pid)

    alive_run = registry.start_run(market, "a training that goes on", {"market": market.key})  # this process: alive
    assert registry.client.get_run(killed_run).info.status == "FAILED"
    assert "killed" in registry.client.get_run(killed_run).data.tags["rl_lifecycle.failed_because"]
    assert registry.client.get_run(alive_run).info.status == "RUNNING"
    assert registry.client.get_run(alive_run).data.tags[HOST_TAG] == socket.gethostname()
    # a second look changes nothing; a run of another host is not this host's to judge
    other = registry.client.create_run(registry.experiment_id(market), tags={HOST_TAG: "elsewhere", PID_TAG: "1"})
    assert registry.fail_orphaned_runs() == []
    assert registry.client.get_run(other.info.run_id).info.status == "RUNNING"
    for run_id in (alive_run, other.info.run_id):
        registry.end_run(run_id)


# -- (b) SIGTERM stops a command with everything it started ------------------------------------------
@pytest.mark.slow
def test_sigterm_to_materialize_cancels_its_runs_and_stops_its_code_server(database_url, rl_env, tmp_path, monkeypatch):
    from dagster import DagsterRunStatus, RunsFilter

    from rl_lifecycle.orchestration.instance import get_instance, register_market
    from rl_lifecycle.settings import load_settings

    for key in ("DAGSTER_HOME", "RL_DAGSTER_STORAGE_URL", "RL_HOME"):  # get_instance sets them
        monkeypatch.setenv(key, os.environ.get(key, ""))
    settings = load_settings()
    register_market(database_url, settings, Market.parse("SIGUSDT-1h"), source="synthetic", seed=5)
    instance = get_instance(settings, database_url)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONWARNINGS")} | rl_env
    since = time.time()
    with open(tmp_path / "cli.log", "wb") as out:
        cli = subprocess.Popen([str(RL_LIFECYCLE), "materialize", "candles", "feature_snapshots", "--market", "SIGUSDT-1h",
                                "--windows", "2019-01-01..2022-12-01"], cwd=REPO, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from datetime import UTC, datetime

        deadline = time.monotonic() + 180
        while not (runs := list(instance.get_runs(filters=RunsFilter(
                statuses=[DagsterRunStatus.STARTED], created_after=datetime.fromtimestamp(since, UTC))))):
            assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.05)
        (run,) = runs
        group = [p for p in _tree(cli.pid)]
        assert len(group) >= 3  # the command, its code server, the run's worker
        stopped = time.monotonic()
        cli.send_signal(signal.SIGTERM)  # to the command alone, as `kill PID` or a service manager sends it
        cli.wait(timeout=60)
        gone_by = time.monotonic() + 30
        while [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] and time.monotonic() < gone_by:
            time.sleep(0.2)
        left = [(p.pid, _cmdline(p.pid)[:120]) for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        elapsed = time.monotonic() - stopped
        assert not left, f"left running {elapsed:.0f}s after SIGTERM: {left}"
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED
        print(f"SIGTERM: command, code server and run worker gone after {elapsed:.1f}s")
    finally:
        try:
            os.killpg(cli.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- (e) links from the UI's configured address ------------------------------------------------------
def test_backfill_links_follow_the_running_dev_servers_address(rl_env, monkeypatch):
    import json

    from rl_lifecycle.orchestration.backfills import SubmittedBackfill
    from rl_lifecycle.orchestration.dev_server import ui_address_path
    from rl_lifecycle.settings import load_settings

    monkeypatch.delenv("RL_DAGSTER_UI_URL", raising=False)
    submitted = SubmittedBackfill("abc123", ("candles",), ("BTCUSDT-1h|2024-01-01",))
    assert submitted.url == "http://127.0.0.1:3000/runs/b/abc123"  # nothing runs: the default
    address = ui_address_path(load_settings())
    address.parent.mkdir(parents=True, exist_ok=True)
    # `DEV_PORT=3001 make dev` on this state dir (this process stands in for the dev server)
    address.write_text(json.dumps({"url": "http://127.0.0.1:3001", "pid": os.getpid()}))
    assert submitted.url == "http://127.0.0.1:3001/runs/b/abc123"
    gone = subprocess.Popen(["true"])
    gone.wait()
    address.write_text(json.dumps({"url": "http://127.0.0.1:3001", "pid": gone.pid}))  # a dev server killed -9
    assert submitted.url == "http://127.0.0.1:3000/runs/b/abc123"
    monkeypatch.setenv("RL_DAGSTER_UI_URL", "https://dagster.example/")  # said explicitly: wins
    address.write_text(json.dumps({"url": "http://127.0.0.1:3001", "pid": os.getpid()}))
    assert submitted.url == "https://dagster.example/runs/b/abc123"


def test_dev_records_its_address_while_it_runs(rl_env, tmp_path):
    import json

    from rl_lifecycle.orchestration.dev_server import ui_address_path
    from rl_lifecycle.settings import load_settings

    port = _free_port()
    address = ui_address_path(load_settings())
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONWARNINGS", "RL_DAGSTER_UI_URL")} | rl_env
    dev = subprocess.Popen([str(RL_LIFECYCLE), "dev", "--port", str(port)], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not address.exists():
            assert dev.poll() is None and time.monotonic() < deadline, "dev wrote no address"
            time.sleep(0.1)
        assert json.loads(address.read_text()) == {"url": f"http://127.0.0.1:{port}", "pid": dev.pid}
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=30)
        assert not address.exists()  # stopped: links fall back to RL_DAGSTER_UI_URL's default
    finally:
        try:
            os.killpg(dev.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
