"""`rl-lifecycle`: the small CLI around the platform.

Exit codes: 0 success, 1 a run or a blocking check failed, 2 bad input (nothing was written) or a
database that cannot be reached or went away under the command.
"""

from __future__ import annotations

import sys

import typer

from rl_lifecycle.cli import (
    ablation,
    cluster,
    data,
    database,
    decisions,
    evaluation,
    lifecycle,
    markets,
    models,
    ops,
    paper,
    promotion,
    switches,
)
from rl_lifecycle.errors import UserInputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)

# Top-level commands, in the order `--help` lists them; each group module holds its commands as plain
# functions (their names, parameters and docstrings are the CLI) and its sub-apps.
app.command("ingest")(data.ingest)
app.command("materialize")(data.materialize)
app.command("check")(data.check)
app.command("train")(models.train)
app.command("evaluate")(evaluation.evaluate)
app.command("ablation")(ablation.ablation)
app.command("promote")(promotion.promote)
app.command("rollback")(promotion.rollback)
app.command("reconcile")(promotion.reconcile)
app.command("audit")(promotion.audit)
app.command("decide")(decisions.decide)
app.command("status")(ops.status)
app.command("backfill")(data.backfill)
app.command("run")(lifecycle.run)
app.command("dev")(lifecycle.dev)
app.command("worker")(cluster.worker)

app.add_typer(database.db_app, name="db")
app.add_typer(cluster.broker_app, name="broker")
app.add_typer(markets.market_app, name="market")
app.add_typer(data.candles_app, name="candles")
app.add_typer(models.models_app, name="models")
app.add_typer(models.mlflow_app, name="mlflow")
app.add_typer(evaluation.report_app, name="report")
app.add_typer(ablation.feature_set_app, name="feature-set")
decisions.paper_app.command("pnl")(paper.pnl)
decisions.paper_app.command("replay")(paper.replay)
decisions.paper_app.command("watch")(paper.watch_command)
app.add_typer(decisions.paper_app, name="paper")
app.add_typer(ops.metrics_app, name="metrics")
app.add_typer(promotion.gates_app, name="gates")
app.add_typer(switches.switch_app, name="switch")


def main() -> None:
    try:
        app()
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        message = _database_unreachable(exc)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)


def _database_unreachable(exc: Exception) -> str | None:
    """The one-line error for a database that cannot be reached or went away under the command (a
    psycopg/psycopg2 connection error anywhere in the chain), or None for any other error."""
    from rl_lifecycle.db.connection import lost_connection, unreachable_message
    from rl_lifecycle.settings import load_settings

    lost = lost_connection(exc)
    if lost is None:
        return None
    try:
        settings = load_settings()
    except UserInputError:  # pragma: no cover - the command read them already
        return None
    return unreachable_message(lost, settings)


if __name__ == "__main__":
    main()
