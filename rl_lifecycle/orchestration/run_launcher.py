"""The instance's run launcher: Dagster's `DefaultRunLauncher`, plus a health check of each run's worker.

Dagster's run monitoring (dagster.yaml `run_monitoring`, run by the daemon) marks a STARTED run failed
when the run launcher reports its worker dead, but `DefaultRunLauncher` (a process per run, started by
the code server) cannot tell: it reports nothing, so a run whose processes were killed together with
the command that launched them (`kill -9` of the process group, a closed terminal, an OOM kill, a
reboot) stayed STARTED for good, holding a `max_concurrent_runs` slot and its `promotion/market` slot.
(A run worker killed while its code server lives is marked failed by the code server itself.)

`LocalRunLauncher` launches exactly as `DefaultRunLauncher` does and tags each run with the host it was
launched on. Its `check_run_worker_health` reads the worker's pid from the run's own event log (the
"Started process for run (pid: N)" engine event the worker writes before the run starts) and reports:

- RUNNING while that process lives (a process with the same pid started after the event is another
  process: the pid was reused, the worker is gone);
- FAILED when it is gone: the monitor then marks the run failed (`instance.report_run_failed`), which
  frees its queue slots, and `run_failure_alert_sensor` sends one `run_failed` alert;
- RUNNING (unchecked) when it cannot tell: a run launched on another host, or one without a recorded
  pid. Dagster's monitor fails a run for any other answer, so "unknown" must not be one.

Runs executed in the launching process (`execute_in_process`, the tests' `in_process=True`) write no
such event; `IN_PROCESS_TAGS` gives them the pid and host to check instead.
"""

from __future__ import annotations

import os
import socket

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DefaultRunLauncher

from rl_lifecycle.orchestration.dagster_internals import CheckRunHealthResult, LaunchRunContext, WorkerStatus

HOST_TAG = "rl_lifecycle/run_host"  # the host whose processes run the run (local code servers only)
PID_TAG = "rl_lifecycle/run_pid"  # runs executed in the launching process: that process
STARTED_PROCESS_PREFIX = "Started process for run"  # dagster/_grpc/impl.py, dagster/_cli/api.py
PID_REUSE_SLACK_S = 2.0  # the worker starts before it records its pid; a process started later is another


def this_host() -> str:
    return socket.gethostname()


def in_process_tags() -> dict[str, str]:
    """Tags of a run this process executes itself."""
    return {HOST_TAG: this_host(), PID_TAG: str(os.getpid())}


def recorded_worker(instance: DagsterInstance, run: DagsterRun) -> tuple[int, float | None] | None:
    """(pid, when it was recorded) of the run's worker process: the latest "Started process" engine
    event (a resumed run has one per attempt), else the run's pid tag; None when neither exists."""
    found, cursor = None, None
    while True:
        page = instance.get_records_for_run(run.run_id, cursor=cursor, of_type=DagsterEventType.ENGINE_EVENT,
                                            limit=1000)
        for record in page.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if not (entry.message or "").startswith(STARTED_PROCESS_PREFIX) or event is None:
                continue
            metadata = getattr(event.event_specific_data, "metadata", None) or {}
            pid = metadata.get("pid")
            value = getattr(pid, "value", pid)
            if value is not None and str(value).isdigit():
                found = (int(value), entry.timestamp)
        if not page.has_more:
            break
        cursor = page.cursor
    if found is None and str((run.tags or {}).get(PID_TAG, "")).isdigit():
        found = (int(run.tags[PID_TAG]), None)
    return found


def process_alive(pid: int, recorded_at: float | None) -> bool:
    """Whether process `pid` runs (not a zombie) and is the one that recorded itself at `recorded_at`."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return recorded_at is None or process.create_time() <= recorded_at + PID_REUSE_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def worker_health(instance: DagsterInstance, run: DagsterRun) -> CheckRunHealthResult:
    host = (run.tags or {}).get(HOST_TAG)
    if host is None:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "not checked: the run records no launch host")
    if host != this_host():
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"not checked: the run's worker is on host {host}")
    worker = recorded_worker(instance, run)
    if worker is None:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "not checked: the run records no worker pid")
    pid, recorded_at = worker
    if process_alive(pid, recorded_at):
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} on {host} is running")
    return CheckRunHealthResult(
        WorkerStatus.FAILED,
        f"the run's worker process (pid {pid} on {host}) is gone: it was killed or crashed "
        "(e.g. kill -9 of the command that launched it) without recording an end",
        run_worker_id=str(pid),
    )


class LocalRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose workers Dagster's run monitoring can check (see the module docstring)."""

    def launch_run(self, context: LaunchRunContext) -> None:
        # before the worker starts, so that the monitor never sees a started run without its host
        self._instance.add_run_tags(context.dagster_run.run_id, {HOST_TAG: this_host()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return worker_health(self._instance, run)
