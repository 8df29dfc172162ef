"""Observability: `metrics serve` / `metrics log` (Prometheus figures) and the per-market `status`.

`status` is a top-level command registered by `rl_lifecycle.cli.main`; `metrics_app` is its sub-app.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.settings import load_settings

metrics_app = typer.Typer(no_args_is_help=True, help="Prometheus metrics (every metric named rl_...).")


@metrics_app.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option(help="port of the /metrics endpoint (0: a free one)")] = 9464,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    log_interval: Annotated[float, typer.Option(help="also log the figures as JSON lines every N seconds (0: never)")] = 0.0,
) -> None:
    """Serve the figures for Prometheus; the database is queried at each scrape. Ctrl-C stops it."""
    import logging

    from rl_lifecycle.cli.common import check_port
    from rl_lifecycle.ops.metrics import serve_metrics, wait_forever

    check_port("--port", port, free_port=True)
    url = open_database(load_settings())
    if log_interval:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    server, _ = serve_metrics(url, port, host)
    typer.echo(f"metrics on http://{host}:{server.server_port}/metrics; Ctrl-C stops it", err=True)
    try:
        wait_forever(log_interval or None, url)
    except KeyboardInterrupt:
        server.shutdown()


@metrics_app.command("log")
def metrics_log() -> None:
    """Print the same figures once, as JSON lines (one per metric)."""
    import logging

    from rl_lifecycle.ops.metrics import log_metrics, registry_opener

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    url = open_database(load_settings())
    with connect(url) as conn:
        log_metrics(conn, registry=registry_opener(url))


def status(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    challengers: Annotated[bool, typer.Option(help="look up challengers in the MLflow registry")] = True,
) -> None:
    """Per market: champion, challenger, last decision and its reasons, feature freshness, open alerts;
    and the rollout switches in rollout order, as in force (stored, else environment, else default)."""
    import json

    from rl_lifecycle.ops.status import market_status, status_lines
    from rl_lifecycle.switches import switch_states

    url = open_database(load_settings())
    registry = None
    if challengers:
        from rl_lifecycle.models.tracking import open_registry

        registry = open_registry(url)
    with connect(url) as conn:
        statuses = market_status(conn, registry)
        switches = switch_states(conn)
    if as_json:
        typer.echo(json.dumps({"switches": [s.to_json() for s in switches], "markets": statuses},
                              indent=2, default=str))
        return
    for line in status_lines(statuses, switches):
        typer.echo(line)
