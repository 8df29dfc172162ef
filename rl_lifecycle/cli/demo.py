"""The main job behind `make run`: demo markets through every asset, then a readable summary."""

from __future__ import annotations

import typer

from rl_lifecycle.cli.runs import materialize_with_progress
from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.markets.keys import Market, market_of, partition_key
from rl_lifecycle.orchestration.instance import register_market
from rl_lifecycle.orchestration.launcher import PartitionRun
from rl_lifecycle.settings import Settings

DEMO_MARKETS = {Market("BTCUSDT", "1h"): 7, Market("ETHUSDT", "1h"): 11}
DEMO_WINDOWS = ("2024-01-01", "2024-06-01")
DEMO_ASSETS = ["candles", "feature_snapshots", "training_dataset"]


def run_demo(settings: Settings) -> bool:
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME

    url = open_database(settings)
    where = "RL_DATABASE_URL" if settings.database_url else f"embedded PostgreSQL under {settings.pgdata}"
    typer.echo(f"database: {where}; feature set: {settings.feature_set}")
    for market, seed in DEMO_MARKETS.items():
        register_market(url, settings, market, source="synthetic", seed=seed)
    windows = WINDOW_SCHEME.range(*DEMO_WINDOWS)
    keys = [partition_key(m, w) for m in DEMO_MARKETS for w in windows]
    runs = materialize_with_progress(settings, url, DEMO_ASSETS, keys)
    print_summary(runs)
    last_windows = [partition_key(m, windows[-1]) for m in DEMO_MARKETS]
    trained = materialize_with_progress(settings, url, ["challenger_model"], last_windows)
    print_challengers(trained)
    evaluated = materialize_with_progress(settings, url, ["fold_report", "promotion_decision"], last_windows,
                                          run_config={"ops": {"fold_report": {"config": {"folds": 3}}}})
    print_evaluations(url, evaluated)
    print_decisions(url, evaluated, settings)
    runs += trained + evaluated
    failed = [r for r in runs if not r.ok]
    typer.echo(f"\n{len(runs) - len(failed)}/{len(runs)} partition runs succeeded; browse them with `make dev`.")
    return not failed


def print_summary(runs: list[PartitionRun]) -> None:
    typer.echo("\nwhat was stored, per market x window")
    header = f"  {'partition':<24} {'candles':>7} {'gaps':>4} {'features':>8} {'warm':>6}  {'checks':<13} {'dataset':<12} {'rows':>6} {'cached/computed':>15}"
    typer.echo(header)
    for run in runs:
        candles = run.metadata.get("candles", {})
        features = run.metadata.get("feature_snapshots", {})
        dataset = run.metadata.get("training_dataset", {})
        checks = run.checks
        passed = sum(c.passed for c in checks)
        typer.echo(
            f"  {run.partition_key:<24} {candles.get('rows', '-'):>7} {candles.get('gaps', '-'):>4} "
            f"{features.get('rows', '-'):>8} {features.get('warm_rows', '-'):>6}  "
            f"{f'{passed}/{len(checks)} passed':<13} {str(dataset.get('dataset_hash', '-'))[:12]:<12} "
            f"{dataset.get('rows', '-'):>6} {str(dataset.get('windows_from_cache', '-')) + '/' + str(dataset.get('windows_computed', '-')):>15}"
        )
        for check in checks:
            if not check.passed:
                typer.echo(f"    FAILED {check.check}: {check.description}")
        for error in run.errors:
            typer.echo(f"    error: {error}")


def print_challengers(runs: list[PartitionRun]) -> None:
    typer.echo("\nchallengers trained on each market's last window (MLflow: `make mlflow`)")
    typer.echo(f"  {'partition':<24} {'version':>7} {'weights hash':<16} {'dataset':<12} {'timesteps':>9} {'fps':>6}  checks")
    for run in runs:
        model = run.metadata.get("challenger_model", {})
        passed = sum(c.passed for c in run.checks)
        typer.echo(
            f"  {run.partition_key:<24} {model.get('model_version', '-'):>7} {str(model.get('weights_hash', '-'))[:16]:<16} "
            f"{str(model.get('dataset_hash', '-'))[:12]:<12} {model.get('timesteps', '-'):>9} {model.get('fps', '-'):>6}  "
            f"{passed}/{len(run.checks)} passed"
        )
        for check in run.checks:
            if not check.passed:
                typer.echo(f"    FAILED {check.check}: {check.description}")
        for error in run.errors:
            typer.echo(f"    error: {error}")


def print_evaluations(url: str, runs: list[PartitionRun]) -> None:
    from rl_lifecycle.evaluation.service import FOLD_TABLE_HEADERS, fold_table
    from rl_lifecycle.evaluation.store import read_report

    typer.echo("\nwalk-forward evaluation of each challenger (NautilusTrader, purged folds; `rl-lifecycle report show`)")
    with connect(url) as conn:
        for run in runs:
            report_id = run.metadata.get("fold_report", {}).get("report_id")
            report = read_report(conn, report_id) if report_id is not None else None
            if report is None:
                typer.echo(f"  {run.partition_key}: no report")
            else:
                agg = report.aggregates
                typer.echo(f"  {run.partition_key}: report {report.id}, {report.status}; "
                           f"psr {_number(agg.get('psr'))}, dsr {_number(agg.get('dsr'))}")
                typer.echo("    " + " | ".join(FOLD_TABLE_HEADERS))
                for row in fold_table(report):
                    typer.echo("    " + " | ".join(str(c) for c in row))
            for check in run.checks:
                if not check.passed:
                    typer.echo(f"    FAILED {check.check}: {check.description}")
            for error in run.errors:
                typer.echo(f"    error: {error}")


def print_decisions(url: str, runs: list[PartitionRun], settings: Settings) -> None:
    from rl_lifecycle.promotion.audit import history
    from rl_lifecycle.promotion.gates import GATE_TABLE_HEADERS, gate_rows

    mode = "auto promotion" if settings.auto_promotion else "manual mode (RL_AUTO_PROMOTION=false): passing challengers wait"
    typer.echo(f"\npromotion decisions ({mode}; `rl-lifecycle audit --market M --gates`)")
    with connect(url) as conn:
        for run in runs:
            decision = run.metadata.get("promotion_decision")
            if not decision:
                typer.echo(f"  {run.partition_key}: no decision")
                continue
            record = next(r for r in history(conn, market_of(run.partition_key)) if r.id == decision["audit_id"])
            typer.echo(f"  {run.partition_key}: {decision['outcome']} v{decision['challenger_version']}; champion "
                       f"{decision['champion_before']} -> {decision['champion_after']}; reasons {decision['reason_codes']}")
            widths = (38, 10, 30)
            for row in [GATE_TABLE_HEADERS, *gate_rows(record.gates)]:
                typer.echo("    " + " ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _number(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"
