"""The model commands: `train` a challenger, `models list` the registered versions, `mlflow ui`.

`train` is a top-level command registered by `rl_lifecycle.cli.main`; `models_app` and `mlflow_app` are
its sub-apps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from rl_lifecycle.cli.common import (
    SpanWindowsOption,
    check_windows_exist,
    dataset_span_config,
    say_dataset_built_first,
    span_to_build,
)
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.settings import load_settings

models_app = typer.Typer(no_args_is_help=True, help="Registered policies (MLflow model `rl-<market>`).")
mlflow_app = typer.Typer(no_args_is_help=True, help="MLflow tracking and registry on the project's PostgreSQL.")


def train(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    window: Annotated[str, typer.Option(help="window key, e.g. 2024-06-01: trains on that partition's training dataset")],
    spec: Annotated[str, typer.Option(help="model spec: a name under rl_lifecycle/models/specs/ or a YAML file")] = "ppo_small",
    span_windows: SpanWindowsOption = None,
) -> None:
    """Train a challenger (materializes `challenger_model` with its checks; the run shows in the UI). With
    --span-windows N the run builds (or reuses) the N-window `training_dataset` first and trains on it; a partition
    without a dataset gets one first too, over the market's span."""
    from rl_lifecycle.models.spec import load_model_spec
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME

    parsed_market, parsed_window = Market.parse(market), WINDOW_SCHEME.parse(window)
    key = partition_key(parsed_market, parsed_window)
    check_windows_exist([key])
    model_spec = load_model_spec(spec)  # a bad spec is refused before anything runs
    dataset_ops = dataset_span_config(span_windows)
    from rl_lifecycle.cli.runs import materialize_with_progress

    settings = load_settings()
    url = open_database(settings)
    span = span_to_build(url, parsed_market, parsed_window, span_windows)
    say_dataset_built_first(key, span, span_windows)
    run_config = {"ops": {**dataset_ops, "challenger_model": {"config": {
        "spec": str(Path(spec).resolve()) if Path(spec).is_file() else spec}}}}
    assets = ["challenger_model"] if span is None else ["training_dataset", "challenger_model"]
    # one run per job: the dataset's first when it is built, then the model's (not run if the first failed)
    runs = materialize_with_progress(settings, url, assets, [key], run_config=run_config)
    trained = runs[-1].metadata.get("challenger_model", {})
    if trained:
        typer.echo(f"{parsed_market.key}: {model_spec.name} registered as version {trained['model_version']} "
                   f"(weights {str(trained['weights_hash'])[:12]}, dataset {str(trained['dataset_hash'])[:12]}; "
                   f"{trained['episodes']})")
    if not all(run.ok for run in runs):
        raise typer.Exit(1)


@models_app.command("list")
def models_list(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, newest first")] = False,
) -> None:
    """Model versions of a market: version, aliases, weights, dataset, feature set, created."""
    import json

    from rl_lifecycle.models.tracking import open_registry

    parsed = Market.parse(market)
    versions = [v.summary() for v in open_registry(open_database(load_settings())).versions(parsed)]
    if as_json:
        typer.echo(json.dumps(versions, indent=2))
        return
    if not versions:
        typer.echo(f"{parsed.key} has no model versions; train one with `rl-lifecycle train --market {parsed.key} --window W`")
        return
    typer.echo(f"{'version':>7}  {'aliases':<20} {'weights':<12} {'dataset':<12} {'feature set':<12} {'fingerprint':<12} created")
    for v in versions:
        typer.echo(f"{v['version']:>7}  {','.join(v['aliases']) or '-':<20} {str(v['weights_hash'])[:12]:<12} "
                   f"{str(v['dataset_hash'])[:12]:<12} {str(v['feature_set']):<12} {str(v['fingerprint'])[:12]:<12} {v['created']}")


@mlflow_app.command("ui")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes (`mlflow server --workers`)")] = 1,
) -> None:
    """Serve the MLflow UI on the project's tracking database and artifact root."""
    from rl_lifecycle.cli.common import check_port
    from rl_lifecycle.models.tracking import mlflow_server_command, open_registry

    check_port("--port", port)
    registry = open_registry(open_database(load_settings()), direct=True)
    typer.echo(f"MLflow UI on http://{host}:{port} (backend: its own database on the project's PostgreSQL)")
    argv, env = mlflow_server_command(registry, host, port, workers)
    os.execve(argv[0], argv, env)  # the store URI (with its password) in the environment, not in `ps`


@mlflow_app.command("server")
def mlflow_server(
    port: Annotated[int, typer.Option(help="port of the tracking server")] = 5000,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: other machines)")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes (`mlflow server --workers`)")] = 2,
) -> None:
    """Serve MLflow tracking, registry and artifacts for processes that share no disk: point every one of them
    at it with RL_MLFLOW_TRACKING_URI=http://HOST:PORT (docs/deployment.md). Its UI is the MLflow UI too."""
    import socket

    from rl_lifecycle.cli.common import check_port
    from rl_lifecycle.models.tracking import mlflow_server_command, open_registry

    check_port("--port", port)
    registry = open_registry(open_database(load_settings()), direct=True)
    address = socket.getfqdn() if host in ("0.0.0.0", "::") else host  # what other machines reach
    typer.echo(f"MLflow tracking server on http://{host}:{port}: runs and models in the project's PostgreSQL, "
               f"artifacts under {registry.artifacts_uri}, served to clients; set RL_MLFLOW_TRACKING_URI=http://"
               f"{address}:{port} in every process")
    argv, env = mlflow_server_command(registry, host, port, workers, serve_artifacts=True)
    os.execve(argv[0], argv, env)
