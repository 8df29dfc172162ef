"""Runs whose processes were killed (kill -9) are marked failed by Dagster's run monitoring, alerted once,
and free their queue slots (issue 22, point 1).

Real processes are killed; the instance is the repo's `dagster.yaml` (run launcher, run monitoring) on the
test PostgreSQL; the monitor is Dagster's own (its daemon's iteration, or the daemon itself).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from dagster import DagsterRunStatus, RunsFilter, build_sensor_context
from dagster._core.definitions.run_status_sensor_definition import RunStatusSensorCursor
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring import execute_run_monitoring_iteration

from rl_lifecycle.ops.alerts import RUN_FAILED, list_alerts
from rl_lifecycle.orchestration.automation.alerts import run_failure_alert_sensor
from rl_lifecycle.orchestration.instance import get_instance, prepare_dagster_env
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.orchestration.run_launcher import HOST_TAG, LocalRunLauncher, worker_health
from rl_lifecycle.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")
MARKER_TAG = "test/marker"
START = RunStatusSensorCursor(record_id=0, record_timestamp=None).to_json()

# A job executed in a process of its own (as `in_process=True` and tests run them), sleeping in its op
# until it is killed.
SLEEPER = textwrap.dedent("""
    import sys, time
    from dagster import DagsterInstance, job, op
    from rl_lifecycle.orchestration.run_launcher import in_process_tags

    @op
    def sleep_long():
        time.sleep(600)

    @job
    def sleeper():
        sleep_long()

    with DagsterInstance.get() as instance:
        sleeper.execute_in_process(instance=instance, tags={**in_process_tags(), "test/marker": sys.argv[1]})
""")


@pytest.fixture
def instance(database_url, rl_env, monkeypatch):
    """The instance the CLI and the daemon use: the repo's dagster.yaml, storage on the test database."""
    for key in ("DAGSTER_HOME", "RL_DAGSTER_STORAGE_URL", "RL_HOME"):  # prepare_dagster_env sets them
        monkeypatch.setenv(key, os.environ.get(key, ""))
    with get_instance(load_settings(), database_url) as dagster_instance:
        yield dagster_instance


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(poll_s)


def _runs_tagged(instance, key: str, value: str):
    return list(instance.get_runs(filters=RunsFilter(tags={key: value})))


def _monitor_once(instance) -> None:
    """One iteration of the daemon's run monitoring (dagster/_daemon/monitoring), as the daemon runs it."""
    with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
        for error in execute_run_monitoring_iteration(context, logging.getLogger("test.monitor")):
            assert error is None, error


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_the_instance_monitors_runs_with_a_launcher_that_can_see_dead_workers(instance):
    assert instance.run_monitoring_enabled
    assert isinstance(instance.run_launcher, LocalRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health
    assert instance.run_monitoring_max_resume_run_attempts == 0  # the launcher cannot resume runs
    # launched runs reach STARTED within seconds; a stuck one is failed well before Dagster's 180 s default
    assert 30 <= instance.run_monitoring_start_timeout_seconds <= 180
    assert 30 <= instance.run_monitoring_cancel_timeout_seconds <= 180
    assert instance.run_monitoring_poll_interval_seconds <= 60


def test_a_killed_run_process_is_marked_failed_and_alerted_once(instance, conn, rl_env):
    marker = uuid.uuid4().hex
    env = {**os.environ, **rl_env}
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, marker], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (run,) = _wait(lambda: [r for r in _runs_tagged(instance, MARKER_TAG, marker)
                                if r.status == DagsterRunStatus.STARTED], 120, "the run never started")
        assert worker_health(instance, run).status.value == "RUNNING"
        _monitor_once(instance)  # a live worker is left alone
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
        # a run on another host is not this host's to judge
        instance.add_run_tags(run.run_id, {HOST_TAG: "elsewhere"})
        assert worker_health(instance, instance.get_run_by_id(run.run_id)).status.value == "RUNNING"
        instance.add_run_tags(run.run_id, {HOST_TAG: run.tags[HOST_TAG]})
    finally:
        _kill_group(proc)

    killed = time.monotonic()
    # without monitoring the run stays STARTED for good (the issue): here one monitor pass fails it
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    health = worker_health(instance, instance.get_run_by_id(run.run_id))
    assert health.status.value == "FAILED" and f"pid {proc.pid}" in health.msg
    _monitor_once(instance)
    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == DagsterRunStatus.FAILURE, failed.status
    assert time.monotonic() - killed < 30
    # no longer in progress: it holds no queue slot (max_concurrent_runs, tag limits count these)
    in_progress = instance.get_run_ids(filters=RunsFilter(statuses=[
        DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]))
    assert run.run_id not in in_progress

    # the run failure sensor alerts it once, however often it sees the run
    for _ in range(2):
        run_failure_alert_sensor.evaluate_tick(build_sensor_context(
            instance=instance, cursor=START, resources={"database": PostgresResource()}))
    alerts = [a for a in list_alerts(conn) if a.run_id == run.run_id]
    assert [(a.kind, a.dedupe_key) for a in alerts] == [(RUN_FAILED, f"run:{run.run_id}")]
    assert "is gone" in alerts[0].summary


# -- the whole story: the CLI killed with its code server and run workers, the real daemon ---------
def _start_daemon(settings, database_url: str, log: Path) -> subprocess.Popen:
    from rl_lifecycle.orchestration.dev_server import dev_child_env, dev_commands

    home = prepare_dagster_env(settings, database_url)
    with open(log, "wb") as out:
        return subprocess.Popen(dev_commands(0, "127.0.0.1")["dagster-daemon"], cwd=home, env=dev_child_env(settings),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _cli(env, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([str(RL_LIFECYCLE), *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _tree_gone(pid: int) -> bool:
    return not [p for p in psutil.process_iter(["pid"]) if _in_group(p, pid)]


def _in_group(process, pgid: int) -> bool:
    try:
        return os.getpgid(process.pid) == pgid
    except (ProcessLookupError, psutil.Error):
        return False


@pytest.mark.slow
def test_runs_of_a_killed_cli_are_failed_by_the_daemon_alerted_once_and_free_the_queue(
    instance, conn, rl_env, database_url, tmp_path,
):
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.orchestration.instance import register_market

    settings = load_settings()
    for pair in ("KILA/USDT", "KILB/USDT"):
        register_market(database_url, settings, Market.parse(f"{pair.replace('/', '')}-1h"), source="synthetic", seed=3)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONWARNINGS")} | rl_env
    daemon = _start_daemon(settings, database_url, tmp_path / "daemon.log")
    cli = None
    try:
        # two markets side by side: two runs, as many as `max_concurrent_runs`
        windows = [f"2022-{m:02d}-01" for m in range(1, 13)] + [f"2023-{m:02d}-01" for m in range(1, 13)]
        partitions = [arg for market in ("KILAUSDT-1h", "KILBUSDT-1h") for w in windows
                      for arg in ("--partition", f"{market}|{w}")]
        since = time.time()
        cli = _cli(env, "materialize", "candles", "feature_snapshots", *partitions, log=tmp_path / "cli.log")

        def both_started():
            runs = [r for r in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED],
                                                                     created_after=_dt(since)))]
            return runs if len(runs) == 2 else None

        started = _wait(both_started, 180, "two runs never started", poll_s=0.05)
        _kill_group(cli)  # the CLI, its code server and both run workers, at once
        killed = time.monotonic()
        _wait(lambda: _tree_gone(cli.pid), 10, "the killed processes are still there")
        ids = {r.run_id for r in started}
        # not finished: STARTED, or already FAILURE (the monitor's poll fell in the last seconds, or a run worker
        # outlived its killed step long enough to report it)
        assert {instance.get_run_by_id(i).status for i in ids} <= {DagsterRunStatus.STARTED, DagsterRunStatus.FAILURE}

        # a backfill submitted now queues behind the dead runs until they are failed
        submit = subprocess.run([str(RL_LIFECYCLE), "backfill", "candles", "--market", "KILAUSDT-1h",
                                 "--windows", "2024-01-01..2024-01-01"], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=180)
        assert submit.returncode == 0, submit.stdout + submit.stderr

        _wait(lambda: {instance.get_run_by_id(i).status for i in ids} == {DagsterRunStatus.FAILURE}, 150,
              "the daemon did not fail the dead runs", poll_s=1)
        failed_after = time.monotonic() - killed

        backfill_id = submit.stdout.split()[1].rstrip(":")
        from dagster._core.storage.tags import BACKFILL_ID_TAG

        def backfill_run_succeeded():
            return [r for r in _runs_tagged(instance, BACKFILL_ID_TAG, backfill_id)
                    if r.status == DagsterRunStatus.SUCCESS]

        _wait(backfill_run_succeeded, 180, "the backfill's run never ran: the queue stayed full", poll_s=1)
        freed_after = time.monotonic() - killed

        def alerted():
            found = [a for a in list_alerts(conn, limit=200) if a.run_id in ids]
            return found if len(found) >= 2 else None

        _wait(alerted, 420, "no alert for the killed runs", poll_s=2)
        time.sleep(5)  # a second sensor (the sweep) seeing the same runs adds nothing
        alerts = [a for a in list_alerts(conn, limit=200) if a.run_id in ids]
        assert sorted(a.dedupe_key for a in alerts) == sorted(f"run:{i}" for i in ids)
        assert all(a.kind == RUN_FAILED for a in alerts)
        print(f"killed runs failed after {failed_after:.0f}s, the queued backfill run done after {freed_after:.0f}s")
    finally:
        if cli is not None and cli.poll() is None:
            _kill_group(cli)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(daemon.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _dt(timestamp: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)
