"""Past one machine: `rl-lifecycle broker start|stop|status|url` (the Celery broker) and `rl-lifecycle worker`.

`worker` is a top-level command registered by `rl_lifecycle.cli.main`; `broker_app` is its sub-app.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Annotated

import typer

from rl_lifecycle.cli.common import check_range
from rl_lifecycle.cluster import broker
from rl_lifecycle.settings import load_settings

broker_app = typer.Typer(no_args_is_help=True, help="The Celery broker: the embedded Redis, or RL_BROKER_URL.")


@broker_app.command("start")
def broker_start() -> None:
    """Start the embedded Redis broker in the background (it keeps running; nothing to do when it runs)."""
    settings = load_settings()
    if settings.broker_url:
        typer.echo("RL_BROKER_URL is set: using that broker, nothing to start.")
        return
    state = broker.start(settings.broker_dir, settings.broker_port)
    typer.echo(f"embedded Redis broker running under {settings.broker_dir} (pid {state.pid})\nurl: {state.url}")


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the embedded Redis broker."""
    settings = load_settings()
    stopped = broker.stop(settings.broker_dir, settings.broker_port)
    typer.echo("stopped" if stopped else f"not running ({settings.broker_dir})")


@broker_app.command("status")
def broker_status() -> None:
    """Which broker is in use, whether it answers, and which executor lifecycle runs use."""
    settings = load_settings()
    state = broker.broker_status(settings)
    where = f"embedded Redis under {settings.broker_dir}" if state.embedded else "external (RL_BROKER_URL)"
    typer.echo(f"broker: {where}\nurl: {state.url}\nanswers: {'yes' if state.running else 'no'}\n"
               f"executor: {settings.executor} (RL_EXECUTOR)")
    if not state.running:
        raise typer.Exit(1)


@broker_app.command("url")
def broker_url() -> None:
    """Print the broker URL the executor and the workers use."""
    typer.echo(broker.broker_url(load_settings()))


def worker(
    name: Annotated[str | None, typer.Option(help="worker name (Celery node NAME@host); default rl-<pid>")] = None,
    concurrency: Annotated[int, typer.Option(help="steps at once: one Celery node (a process) per step")] = 1,
    queue: Annotated[str, typer.Option(help="the queue it takes steps from (dagster-celery's for every step)")] = "dagster",
) -> None:
    """A Celery worker that runs lifecycle steps (RL_EXECUTOR=celery) with this project's environment, until
    Ctrl-C or SIGTERM (a step in hand is finished first)."""
    from rl_lifecycle.db.migrate import open_database
    from rl_lifecycle.orchestration.celery import worker_command, worker_config_dir, worker_env, worker_names
    from rl_lifecycle.orchestration.instance import prepare_dagster_env

    check_range("--concurrency", concurrency, 1, 64, "steps at once")
    settings = load_settings()
    url = broker.broker_url(settings)
    broker.require_reachable(url)
    prepare_dagster_env(settings, open_database(settings))  # the steps' instance and code location, as the CLI's
    config_dir = worker_config_dir(settings, url)
    nodes = worker_names(name, concurrency)
    typer.echo(f"worker {', '.join(nodes)} on {url}, queue {queue}; Ctrl-C stops it", err=True)
    procs = [subprocess.Popen(worker_command(node, queue), env=worker_env(config_dir, node),
                              cwd=settings.dagster_home, start_new_session=True) for node in nodes]

    def forward(signum, _frame):  # Celery's warm shutdown: finish the step in hand, take no more
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    codes = [proc.wait() for proc in procs]
    raise typer.Exit(max(codes))
