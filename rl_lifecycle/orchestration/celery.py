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
from pathlib import Path

from dagster_celery import celery_executor

from rl_lifecycle.cluster.broker import broker_url
from rl_lifecycle.settings import Settings

CONFIG_MODULE = "dagster_celery_config"  # the module dagster-celery's app reads its settings from


def celery_lifecycle_executor(settings: Settings):
    """dagster-celery's executor on the configured broker (results over the same Redis)."""
    url = broker_url(settings)
    return celery_executor.configured(
        {"broker": url, "backend": url, "config_source": {"broker_connection_retry_on_startup": True}},
        name="celery_lifecycle_executor",
    )


def worker_config_dir(settings: Settings, url: str) -> Path:
    """A directory holding `dagster_celery_config.py` for the worker's app: the broker and result backend."""
    directory = settings.home / "celery"
    directory.mkdir(parents=True, exist_ok=True)
    text = (f"broker_url = {url!r}\nresult_backend = {url!r}\nbroker_connection_retry_on_startup = True\n"
            "worker_prefetch_multiplier = 1\n")
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
