"""The main job behind `make run`: demo markets through every asset, a champion, then a readable summary.

Two synthetic markets without an edge (`BTCUSDT-1h`, `ETHUSDT-1h`) and one imported market with a planted,
learnable edge (`EDGEDEMO-1h`, `rl_lifecycle.candles.planted`) go through the data assets, a challenger,
its walk-forward folds and its promotion decision. The edge's challenger passes every gate and, in manual
mode, waits; the demo promotes it as `rl-lifecycle promote` does, makes paper decisions with it on the
month after its training data, and then judges a second challenger (`dqn_small`) against it on the same
folds: the paired gates, and a deflated Sharpe ratio over two trials.
"""

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
EDGE_MARKET = Market("EDGEDEMO", "1h")
DEMO_WINDOWS = ("2024-01-01", "2024-06-01")
# December warms January's features; July is the month after the last window: the champion's paper decisions.
EDGE_CANDLES = ("2023-12-01", "2024-08-01")
PAPER_DECISIONS = ("2024-07-01T01:00:00Z", 24)  # the first instant, and how many hourly decisions
DEMO_ASSETS = ["candles", "feature_snapshots", "training_dataset"]
SECOND_CHALLENGER = "dqn_small"
FOLDS = {"ops": {"fold_report": {"config": {"folds": 3}}}}
# `make run` ends with what the champion's features are worth on the edge market (`rl-lifecycle ablation`):
# the planted edge is a momentum signal, so these two groups tell it apart (every variant is a trial)
DEMO_ABLATION_GROUPS = ("momentum", "volume")
LIFECYCLE_ASSETS = ["fold_report", "promotion_decision"]


def run_demo(settings: Settings) -> bool:
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME
    from rl_lifecycle.switches import settings_in_force

    url = open_database(settings)
    with connect(url) as conn:
        settings = settings_in_force(conn, settings)  # the rollout switches as the runs will read them
    where = "RL_DATABASE_URL" if settings.database_url else f"embedded PostgreSQL under {settings.pgdata}"
    typer.echo(f"database: {where}; feature set: {settings.feature_set}")
    for market, seed in DEMO_MARKETS.items():
        register_market(url, settings, market, source="synthetic", seed=seed)
    import_edge_market(settings, url)
    markets = [*DEMO_MARKETS, EDGE_MARKET]
    windows = WINDOW_SCHEME.range(*DEMO_WINDOWS)
    keys = [partition_key(m, w) for m in markets for w in windows]
    runs = materialize_with_progress(settings, url, DEMO_ASSETS, keys)
    print_summary(runs)
    last_windows = [partition_key(m, windows[-1]) for m in markets]
    trained = materialize_with_progress(settings, url, ["challenger_model"], last_windows)
    print_challengers(trained)
    evaluated = materialize_with_progress(settings, url, LIFECYCLE_ASSETS, last_windows, run_config=FOLDS)
    print_evaluations(url, evaluated)
    print_decisions(url, evaluated, settings)
    edge_key = partition_key(EDGE_MARKET, windows[-1])
    edge_decision = next(r for r in evaluated if r.partition_key == edge_key).metadata.get("promotion_decision", {})
    promote_if_pending(edge_decision)
    print_paper_decisions(url)
    second = materialize_with_progress(settings, url, ["challenger_model", *LIFECYCLE_ASSETS], [edge_key],
                                       run_config={"ops": {**FOLDS["ops"], "challenger_model": {
                                           "config": {"spec": SECOND_CHALLENGER}}}})
    typer.echo(f"\na second challenger ({SECOND_CHALLENGER}) for {EDGE_MARKET.key}, judged against its champion "
               "on the same folds")
    print_evaluations(url, second)
    print_decisions(url, second, settings)
    print_champions(url, markets)
    ablated = print_champion_ablation(settings, url, edge_key)
    runs += trained + evaluated + second + ablated
    failed = [r for r in runs if not r.ok]
    typer.echo(f"\n{len(runs) - len(failed)}/{len(runs)} partition runs succeeded; browse them with `make dev`.")
    return not failed


def print_champion_ablation(settings: Settings, url: str, edge_key: str) -> list[PartitionRun]:
    """`rl-lifecycle ablation --version <champion> --groups momentum,volume` on the edge market's partition, after
    every decision (its variants are trials of the market: they would deflate a later decision)."""
    from rl_lifecycle.cli.ablation import print_ablation
    from rl_lifecycle.promotion.audit import current_champion

    with connect(url) as conn:
        champion = current_champion(conn, EDGE_MARKET.key)
    if champion is None:
        return []
    typer.echo(f"\n$ rl-lifecycle ablation --market {EDGE_MARKET.key} --window {edge_key.split('|')[1]} --version "
               f"{champion} --groups {','.join(DEMO_ABLATION_GROUPS)}")
    config = {"folds": 3, "feature_groups": list(DEMO_ABLATION_GROUPS), "model_version": champion}
    runs = materialize_with_progress(settings, url, ["feature_ablation"], [edge_key],
                                     run_config={"ops": {"feature_ablation": {"config": config}}})
    for run in runs:
        detail = (run.metadata.get("feature_ablation") or {}).get("detail")
        if detail is not None:
            print_ablation(detail)
    return runs


def import_edge_market(settings: Settings, url: str) -> None:
    """`EDGEDEMO-1h`: planted-edge candles written as a CSV under $RL_HOME/demo and imported like any file."""
    from rl_lifecycle.candles.planted import oscillating_candles, write_candle_csv
    from rl_lifecycle.candles.service import ingest_file

    path = write_candle_csv(settings.home / "demo" / f"{EDGE_MARKET.key}.csv", oscillating_candles(
        *EDGE_CANDLES, period=32, amplitude=0.05, noise=0.002, seed=1))
    with connect(url) as conn:
        result = ingest_file(conn, EDGE_MARKET, path)
    if result.refused:
        raise RuntimeError(f"the demo's own candles were refused: {result.report}")
    register_market(url, settings, EDGE_MARKET)  # its `market` partition
    typer.echo(f"{EDGE_MARKET.key}: a planted, learnable edge (a 32-bar oscillation), {result.rows_read} candles "
               f"imported from {path}")


def promote_if_pending(decision: dict) -> None:
    """In manual mode a passing challenger waits: promote it as `rl-lifecycle promote` does."""
    from rl_lifecycle.cli.promotion import promote

    if decision.get("outcome") != "pending_manual":
        return
    version = int(decision["challenger_version"])
    reason = "make run: the demo promotes the challenger that passed every gate"
    typer.echo(f"\n$ rl-lifecycle promote --market {EDGE_MARKET.key} --version {version} --reason '{reason}'")
    promote(market=EDGE_MARKET.key, version=version, reason=reason)


def print_paper_decisions(url: str) -> None:
    """The champion's paper decisions on the month after its training data (`rl-lifecycle decide --at T`)."""
    from rl_lifecycle.decisions.service import decide
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.windows import iso, to_us

    first, count = PAPER_DECISIONS
    typer.echo(f"\npaper decisions on {EDGE_MARKET.key} (`rl-lifecycle decide --market {EDGE_MARKET.key} --at T`; "
               "never routes an order)")
    actions: dict[str, int] = {}
    registry = open_registry(url)
    with connect(url) as conn:
        for i in range(count):
            record = decide(conn, EDGE_MARKET, registry=registry, at_us=to_us(first) + i * EDGE_MARKET.interval_us).record
            actions[record.action] = actions.get(record.action, 0) + 1
            if i < 6 or record.reason_codes:
                reasons = ", ".join(record.reason_codes) or "-"
                typer.echo(f"  {iso(record.as_of_us)}: {record.action:<5} (champion "
                           f"v{record.champion_version}; reasons {reasons})")
    typer.echo(f"  {count} decisions: " + ", ".join(f"{n} {action}" for action, n in sorted(actions.items())))


def print_champions(url: str, markets: list[Market]) -> None:
    from rl_lifecycle.promotion.audit import current_champion

    typer.echo("\nchampions (the audit decides; `rl-lifecycle status`)")
    with connect(url) as conn:
        for market in markets:
            version = current_champion(conn, market.key)
            typer.echo(f"  {market.key:<12} {'v' + str(version) if version is not None else 'none'}")


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

    mode = "auto promotion" if settings.auto_promotion else "manual mode (auto_promotion off): passing challengers wait"
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
