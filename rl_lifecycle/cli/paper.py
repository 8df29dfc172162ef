"""`paper pnl`, `paper watch` and `paper replay`: how the champion does on its paper decisions, and whether they match the
backtest bar by bar (registered on `decisions.paper_app` by `rl_lifecycle.cli.main`)."""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings


def _pct(value) -> str:
    return "-" if value is None else f"{value:+.2%}"


def pnl(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quantile: Annotated[float, typer.Option(min=0.5, max=0.9999,
                                            help="the band's drawdown limit: this quantile of its windows")] = 0.99,
    alert: Annotated[bool, typer.Option(help="record a breach as an alert (once per breach) and store the gauges' "
                                             "figures, as the paper_performance asset does")] = True,
) -> None:
    """The market's paper P&L per champion segment (fill at the deciding bar's close, the champion's cost),
    each against the band its walk-forward evaluation gives (PAPER_DRAWDOWN_BEYOND_BACKTEST when beyond)."""
    import json

    from rl_lifecycle.evaluation.report import json_safe
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.ops.paper import paper_performance, watch

    parsed = Market.parse(market)
    url = open_database(load_settings())
    registry = _cached(lambda: open_registry(url))
    with connect(url) as conn:
        if alert:
            watched = watch(conn, parsed, registry=registry, quantile=quantile)
            performance, alerted = watched.performance, watched.alerted
        else:
            performance, alerted = paper_performance(conn, parsed, registry=registry, quantile=quantile), []
        if alerted:
            from rl_lifecycle.ops.alerts import deliver_safely, load_alert_config

            if load_alert_config().webhook_url:
                deliver_safely(conn, keys=[a.dedupe_key for a in alerted])
    figures = json_safe(performance.to_json())
    for a in alerted:
        typer.echo(f"alert: {a.summary}", err=True)
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    if not figures["segments"]:
        typer.echo(f"{parsed.key}: no paper decision of a champion yet")
        return
    for s in figures["segments"]:
        e = s["expected"]
        band = (f"band p05..p95 {_pct(e['total_return']['p05'])}..{_pct(e['total_return']['p95'])}, drawdown limit "
                f"{e['drawdown_limit']:.2%} (report {e['report_id']})" if e.get("available") else e.get("reason"))
        state = "" if not e.get("available") else ("  within" if e["within"] else f"  BREACH x{len(e['breaches'])}")
        typer.echo(f"v{s['champion_version']}  {s['from']} .. {s['to']}  {s['bars']} bars  return {_pct(s['total_return'])}"
                   f"  max dd {s['max_drawdown']:.2%}  trades {s['trades']}  | {band}{state}")


def watch_command(
    market: Annotated[str | None, typer.Option(help="one market (default: every market with paper decisions)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON array")] = False,
) -> None:
    """What `paper_watch_sensor` does on each tick: every market's champion against its walk-forward band, each
    breach alerted once and, with the rollout switch auto_rollback on, a breached champion rolled back to the
    previous one (once per breach, actor auto-rollback, in the audit)."""
    import json

    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.ops.watch import watch_markets
    from rl_lifecycle.switches import settings_in_force

    url = open_database(load_settings())
    with connect(url) as conn:
        settings = settings_in_force(conn)
        watched = watch_markets(conn, registry=_cached(lambda: open_registry(url)), auto_rollback=settings.auto_rollback,
                                markets=None if market is None else [Market.parse(market)])
        if any(w.alerted or w.rolled_back for w in watched):
            from rl_lifecycle.ops.alerts import deliver_safely, load_alert_config

            if load_alert_config().webhook_url:
                deliver_safely(conn)
    if as_json:
        typer.echo(json.dumps([w.to_json() for w in watched], indent=2))
        return
    if not watched:
        typer.echo("no market has paper decisions of a champion")
    for w in watched:
        typer.echo(w.describe())
    if not settings.auto_rollback:
        typer.echo("auto rollback is off: breaches are only alerted (`rl-lifecycle switch set auto_rollback true`)")


def replay(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    from_: Annotated[str, typer.Option("--from", help="first decided bar (ISO, UTC when naive)")],
    to: Annotated[str, typer.Option(help="end of the span, exclusive (ISO, UTC when naive)")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Re-run the champion over the decided bars of [--from, --to) through the backtest's path (stored feature
    snapshots, the recorded champion version, the rollout) and list every difference from the recorded
    decisions (action, vector hash). Exit code 1 when there is one."""
    import json

    from rl_lifecycle.decisions.replay import replay_decisions
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.windows import to_us

    parsed = Market.parse(market)
    try:
        start, end = to_us(from_), to_us(to)
    except (UserInputError, ValueError, OverflowError):
        raise UserInputError(f"--from {from_!r} / --to {to!r}: expected ISO dates or datetimes") from None
    url = open_database(load_settings())
    with connect(url) as conn:
        result = replay_decisions(conn, parsed, registry=_cached(lambda: open_registry(url)), from_us=start, to_us=end)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        typer.echo(f"{result.market}: {result.decisions} decision(s) in {result.to_json()['from']} .. "
                   f"{result.to_json()['to']}: {result.compared} re-run, {result.held} held (vector compared); "
                   + ("paper and backtest agree bar by bar" if result.agrees else f"{len(result.differences)} difference(s)"))
        for d in result.differences:
            typer.echo(f"  {d.to_json()['bar_ts']} (decision #{d.decision_id}): {d.field} recorded {d.recorded} "
                       f"replayed {d.replayed}")
    if not result.agrees:
        raise typer.Exit(1)


def _cached(make):
    made = []

    def get():
        if not made:
            made.append(make())
        return made[0]

    return get
