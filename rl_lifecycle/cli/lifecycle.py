"""The whole platform at once: `run` (the demo main job behind `make run`) and `dev` (Dagster UI and daemon).

Top-level commands, registered on the root app by `rl_lifecycle.cli.main`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.settings import load_settings


def run() -> None:
    """The main job on the demo markets: register, materialize, print what was stored."""
    from rl_lifecycle.cli.demo import run_demo

    ok = run_demo(load_settings())
    if not ok:
        raise typer.Exit(1)


def dev(
    port: Annotated[int, typer.Option(help="webserver port")] = 3000,
    host: Annotated[str, typer.Option(help="interface the webserver listens on")] = "127.0.0.1",
) -> None:
    """Start the Dagster UI and daemon against the same PostgreSQL; Ctrl-C or SIGTERM stops both."""
    from rl_lifecycle.cli.common import check_port
    from rl_lifecycle.orchestration.dev_server import serve_dev

    check_port("--port", port)
    settings = load_settings()
    url = open_database(settings)
    typer.echo(f"Dagster UI on http://{host}:{port} (instance storage: PostgreSQL, "
               f"DAGSTER_HOME={settings.dagster_home}); Ctrl-C stops it")
    code = serve_dev(settings, url, port, host, echo=lambda message: typer.echo(message, err=True))
    raise typer.Exit(code)
