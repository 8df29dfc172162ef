"""The champion by hand: `promote`, `rollback`, `reconcile`, and the promotion `audit`; `gates calibrate`.

Top-level commands, registered on the root app by `rl_lifecycle.cli.main`; `gates_app` is a sub-app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lifecycle.cli.common import actor, check_range, v
from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings


def promote(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    version: Annotated[int, typer.Option(help="model version to make champion")],
    reason: Annotated[str, typer.Option(help="why, for the audit")],
    override: Annotated[bool, typer.Option(help="promote even though its gates failed or never ran (audited)")] = False,
) -> None:
    """Promote a model version to champion by hand (a pending_manual decision, or an override)."""
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.promotion.service import manual_promote

    url = open_database(load_settings())
    with connect(url) as conn:
        result = manual_promote(conn, open_registry(url), Market.parse(market), version, reason, actor(), override=override)
        _send_event(conn, result)
    _print_promotion(result)


def rollback(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    reason: Annotated[str, typer.Option(help="why, for the audit")],
    to_version: Annotated[int | None, typer.Option(help="version to restore (default: the previous champion)")] = None,
) -> None:
    """Restore the previous champion (or --to-version), whatever feature set it was trained on."""
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.promotion.service import rollback as rollback_champion

    url = open_database(load_settings())
    with connect(url) as conn:
        result = rollback_champion(conn, open_registry(url), Market.parse(market), reason, actor(), to_version=to_version)
        _send_event(conn, result)
    _print_promotion(result)


def _send_event(conn, result) -> None:
    """POST the action's promotion event now (rl_lifecycle.ops.events; the alert delivery sensor retries)."""
    from rl_lifecycle.ops.alerts import deliver_safely, load_alert_config
    from rl_lifecycle.ops.events import event_key

    if result.record is not None and result.record.id is not None and load_alert_config().webhook_url:
        deliver_safely(conn, keys=[event_key(result.record.id)])


def _print_promotion(result) -> None:
    record = result.record
    aliases = ", ".join(f"{alias}={v(version)}" for alias, version in result.aliases.items())
    moved = _moves(result.alias_changes)
    if result.completed:
        if moved:
            typer.echo(f"{record.market}: completed the {record.action.replace('_', ' ')} the audit already recorded "
                       f"(audit #{record.id}, champion {v(record.resulting_champion_version)}): moved {moved}; "
                       f"nothing new recorded; aliases {aliases}")
        else:
            typer.echo(f"{record.market}: {v(record.resulting_champion_version)} is already the champion (audit "
                       f"#{record.id}); nothing to do; aliases {aliases}")
        return
    typer.echo(f"{record.market}: {record.action} (audit #{record.id}); champion "
               f"{v(record.champion_version)} -> {v(record.resulting_champion_version)}; aliases " + aliases)


def _moves(changes: dict) -> str:
    return ", ".join(f"{alias} {v(before)} -> {v(after)}" for alias, (before, after) in changes.items())


def reconcile(
    market: Annotated[str | None, typer.Option(help="market key, e.g. BTCUSDT-1h (default: every market)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, one object per market")] = False,
) -> None:
    """Point the MLflow aliases where their truth says: champion / previous_champion from the promotion
    audit, challenger from the model checks; prints what it changed. The daemon does the same every minute."""
    import json

    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.promotion.service import markets_to_reconcile
    from rl_lifecycle.promotion.service import reconcile as reconcile_market

    parsed = None if market is None else Market.parse(market)  # bad input is refused before any work
    url = open_database(load_settings())
    registry = open_registry(url)
    with connect(url) as conn:
        keys = [parsed.key] if parsed is not None else markets_to_reconcile(conn)
        results = [reconcile_market(conn, registry, key) for key in keys]
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        if not results:
            typer.echo("no markets: nothing to reconcile")
        for r in results:
            state = ", ".join(f"{alias}={v(version)}" for alias, version in r.aliases.items())
            if r.error:
                typer.echo(f"{r.market}: cannot reconcile: {r.error}")
            elif r.changes:
                typer.echo(f"{r.market}: moved {_moves(r.changes)}; now {state}")
            else:
                typer.echo(f"{r.market}: aliases in agreement ({state})")
    if any(r.error for r in results):
        raise typer.Exit(1)


def audit(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    limit: Annotated[int, typer.Option(help="newest records shown (1..1000000)")] = 20,
    gates: Annotated[bool, typer.Option("--gates", help="also print each decision's gate table")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, newest first")] = False,
) -> None:
    """The promotion audit of a market, newest first: who did what to the champion, and why."""
    import dataclasses
    import json

    from rl_lifecycle.promotion.audit import history
    from rl_lifecycle.promotion.gates import GATE_TABLE_HEADERS, gate_rows

    check_range("--limit", limit, 1, 1_000_000, "the number of records shown")
    parsed = Market.parse(market)
    with connect(open_database(load_settings())) as conn:
        records = history(conn, parsed.key, limit=limit)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo(f"{parsed.key} has no promotion decisions yet")
        return
    for r in records:
        typer.echo(f"#{r.id} {r.created_at:%Y-%m-%d %H:%M:%S} {r.action:<15} challenger {v(r.challenger_version):>4} "
                   f"champion {v(r.champion_version)} -> {v(r.resulting_champion_version)}  {r.actor}"
                   f"{'  OVERRIDE' if r.override else ''}  {', '.join(r.reason_codes) or '-'}"
                   f"{'  ' + r.note if r.note else ''}")
        if gates and r.gates:
            for row in [GATE_TABLE_HEADERS, *gate_rows(r.gates)]:
                typer.echo("    " + "  ".join(f"{c:<38}" if i == 0 else f"{c:<12}" for i, c in enumerate(row)).rstrip())


gates_app = typer.Typer(no_args_is_help=True, help="The promotion gates: how often they let luck through.")


@gates_app.command("calibrate")
def gates_calibrate(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h: its stored candles are traded")],
    nulls: Annotated[int, typer.Option(min=1, help="skill-less challenger/champion decisions")] = 500,
    edge: Annotated[float, typer.Option(min=0.0, max=1.0, help="planted edge: the share of bars on which the "
                                        "challenger knows the next bar's direction")] = 0.4,
    edge_trials: Annotated[int | None, typer.Option(min=1, help="planted-edge decisions [default: --nulls]")] = None,
    trials: Annotated[int, typer.Option(min=2, help="evaluations of the market the DSR deflates by")] = 10,
    windows: Annotated[int, typer.Option(min=1, help="the market's last windows with candles that are traded")] = 3,
    policy: Annotated[str | None, typer.Option(help="gate policy YAML [default: the shipped policy]")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Run the whole gate policy on skill-less challengers (false-promotion rate, 95% interval) and on
    planted-edge challengers (power), over the market's stored candles."""
    import json
    import sys

    from tqdm import tqdm

    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME
    from rl_lifecycle.promotion.calibration import calibrate, market_bars
    from rl_lifecycle.promotion.policy import load_policy

    parsed, gate_policy = Market.parse(market), load_policy(policy)  # bad input is refused before any work
    with connect(open_database(load_settings())) as conn:
        bars = market_bars(conn, parsed, WINDOW_SCHEME, windows)
    total = nulls + (nulls if edge_trials is None else edge_trials)
    with tqdm(total=total, desc="decisions", unit="decision", file=sys.stderr, disable=None) as bar:
        result = calibrate(bars, gate_policy, nulls=nulls, edge=edge, edge_trials=edge_trials, n_trials=trials,
                           seed=seed, progress=lambda done, _: bar.update(done - bar.n))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    low, high = result.ci95
    typer.echo(f"{result.market}: {result.bars} bars, {result.folds} folds, {result.n_trials} trials, "
               f"policy {result.policy_sha256[:12]}")
    typer.echo(f"  false promotions  {result.false_promotions}/{result.nulls} = {result.false_promotion_rate:.2%} "
               f"(95% interval {low:.2%} .. {high:.2%})")
    typer.echo(f"  power at edge {result.edge:g}  {result.edge_promotions}/{result.edge_trials} = {result.power:.2%}")
    typer.echo("  nulls rejected by: " + ", ".join(f"{code} {n}" for code, n in result.null_reasons.items()))
