"""Celery as `lifecycle_job`'s executor (`RL_EXECUTOR=celery`), and the worker that runs its steps.

With the Celery executor every step of a lifecycle run (the challenger's training, each fold's training
and backtest, the report, the decision) is a task on the broker's `dagster` queue, taken by whichever
`rl-lifecycle worker` listens; the run's own process only submits steps and waits, honouring the
instance's concurrency pools (dagster-celery's execution loop does). A worker loads the code location by
module (`rl_lifecycle.orchestration.definitions`) and the Dagster instance from the reference each task
carries, so it needs this package installed and the database reachable; docs/deployment.md says what
else it needs.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from dagster import executor, multiple_process_executor_requirements
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

from rl_lifecycle.cluster import heartbeat
from rl_lifecycle.cluster.broker import broker_url
from rl_lifecycle.orchestration.dagster_internals import RetryMode
from rl_lifecycle.settings import Settings

CONFIG_MODULE = "dagster_celery_config"  # the module dagster-celery's app reads its settings from


class StepWorkerLost(Exception):
    """The worker running a step stopped beating: killed, or its machine lost."""


class WatchedResult:
    """A step's Celery result that also ends when the worker running it stops beating (cluster/heartbeat.py):
    `ready()` then says True and `get()` raises, so dagster-celery's loop fails the step, by name, and the run
    (a killed worker's task is gone: acknowledged on receipt, it would never report)."""

    def __init__(self, result, step_key: str, broker: str, check_seconds: float = heartbeat.BEAT_SECONDS):
        self._result, self.step_key, self._broker, self._every = result, step_key, broker, check_seconds
        self._checked, self.lost_node = 0.0, None

    def ready(self) -> bool:
        if self._result.ready():
            return True
        now = time.monotonic()
        if now - self._checked < self._every:
            return False
        self._checked = now
        info = self._result.info if self._result.state == "STARTED" else None
        node = info.get("hostname") if isinstance(info, dict) else None
        if node and heartbeat.alive(self._broker, node) is False:
            self.lost_node = node
            return True
        return False

    def get(self):
        if self.lost_node is not None:
            raise StepWorkerLost(
                f"the Celery worker {self.lost_node} running step {self.step_key} stopped beating for "
                f"{heartbeat.TTL_SECONDS} s (killed, or its machine lost): the step's work is lost and nothing of it "
                "was stored; re-run the partition")
        return self._result.get()

    def revoke(self):
        return self._result.revoke()


def _submit_watched(app, plan_context, step, queue, priority, known_state):
    from dagster_celery.executor import _submit_task

    return WatchedResult(_submit_task(app, plan_context, step, queue, priority, known_state), step.key,
                         app.conf.broker_url)


class WatchedCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor whose steps fail when their worker dies (`WatchedResult`)."""

    def execute(self, plan_context, execution_plan):
        from dagster_celery.core_execution_loop import core_celery_execution_loop

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=_submit_watched)


@executor(name="celery_lifecycle_executor", config_schema=CELERY_CONFIG,
          requirements=multiple_process_executor_requirements())
def watched_celery_executor(init_context):
    config = init_context.executor_config
    return WatchedCeleryExecutor(broker=config.get("broker"), backend=config.get("backend"),
                                 config_source=config.get("config_source"), include=config.get("include"),
                                 retries=RetryMode.from_config(config["retries"]))


def celery_lifecycle_executor(settings: Settings):
    """The watched Celery executor on the configured broker (results over the same Redis)."""
    url = broker_url(settings)
    return watched_celery_executor.configured(
        {"broker": url, "backend": url,
         "config_source": {"broker_connection_retry_on_startup": True, "task_track_started": True}},
        name="celery_lifecycle_executor",
    )


def worker_config_dir(settings: Settings, url: str) -> Path:
    """A directory holding `dagster_celery_config.py` for the worker's app: the broker and result backend."""
    directory = settings.home / "celery"
    directory.mkdir(parents=True, exist_ok=True)
    text = (f"broker_url = {url!r}\nresult_backend = {url!r}\nbroker_connection_retry_on_startup = True\n"
            # a node takes a step only when it is free (no task waits in a busy or killed node), reports
            # when it starts one (with its node name: what the run watches), and beats (cluster/heartbeat.py)
            "worker_prefetch_multiplier = 1\nworker_disable_prefetch = True\ntask_track_started = True\n"
            "imports = ('rl_lifecycle.cluster.celery_worker',)\n")
    path = directory / f"{CONFIG_MODULE}.py"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return directory


def worker_names(name: str | None, concurrency: int) -> list[str]:
    """One Celery node per step at once: `NAME@host`, or `NAME-1@host` .. `NAME-K@host`."""
    base = name or f"rl-{os.getpid()}"
    base, _, host = base.partition("@")
    host = host or socket.gethostname()
    return [f"{base}@{host}"] if concurrency == 1 else [f"{base}-{i}@{host}" for i in range(1, concurrency + 1)]


def worker_command(node: str, queue: str, loglevel: str = "INFO") -> list[str]:
    """One Celery worker running one step at a time in its main process (`--pool solo`): a fold's step starts
    a backtest process of its own, which the daemonic children of Celery's prefork pool may not."""
    return [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "--pool", "solo",
            "--prefetch-multiplier=1", "-Q", queue, "-n", node, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle"]


def worker_env(config_dir: Path, node: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (DAGSTER_HOME, the storage URL, RL_HOME as the CLI prepared them) with the
    worker's config module importable, and its node name (RL_WORKER_NAME: recorded with what it runs)."""
    env = dict(os.environ if base is None else base)
    env["RL_WORKER_NAME"] = node
    env["PYTHONPATH"] = os.pathsep.join([str(config_dir), *filter(None, [env.get("PYTHONPATH")])])
    return env
