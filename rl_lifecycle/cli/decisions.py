"""Paper decisions: one `decide`, or the long-lived `paper run` decider (paper only: no order is routed).

`decide` is a top-level command registered by `rl_lifecycle.cli.main`; `paper_app` is its sub-app.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings

paper_app = typer.Typer(no_args_is_help=True, help="The long-lived paper decider (paper only: no order is routed).")


def decide(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    at: Annotated[str | None, typer.Option(help="decide as of this instant (ISO, UTC when naive); default now")] = None,
    record: Annotated[bool, typer.Option(help="append the decision to rl_decisions (--no-record: only print it)")] = True,
) -> None:
    """One paper decision: the champion acts on the newest closed bar, or holds with every reason; prints one JSON
    object and appends it to rl_decisions."""
    import json

    from rl_lifecycle.decisions.service import decide as decide_now
    from rl_lifecycle.decisions.service import parse_at
    from rl_lifecycle.models.tracking import open_registry

    parsed, at_us = Market.parse(market), parse_at(at)  # bad input is refused before the database starts
    url = open_database(load_settings())
    with connect(url) as conn:
        decision = decide_now(conn, parsed, registry=lambda: open_registry(url), at_us=at_us, record=record)
    typer.echo(json.dumps(decision.to_json()))


@paper_app.command("run")
def paper_run(
    market: Annotated[list[str] | None, typer.Option(help="only these markets (repeatable); default every live market")] = None,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="how often to look for newly closed bars")] = 1.0,
    grace_seconds: Annotated[float, typer.Option(
        min=0.0, help="how long to wait for a closed bar's candle (at most half the market's interval)")] = 20.0,
) -> None:
    """Decide each live market once per closed bar, keeping champions and open-window candles loaded between
    decisions; prints one JSON object per decision. Ctrl-C or SIGTERM stops it."""
    import functools
    import json
    import logging
    import signal
    import threading

    from rl_lifecycle.decisions.live import PAPER_DECISIONS, run_decider
    from rl_lifecycle.markets.table import get_market
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.switches import off_reason, switch_state

    selected = [Market.parse(m).key for m in market or []] or None  # bad keys are refused before anything starts
    url = open_database(load_settings())
    with connect(url) as conn:
        switch = switch_state(conn, PAPER_DECISIONS)  # as the schedule and the decider's polls read it
        if not switch.enabled:
            raise UserInputError(off_reason(switch, "paper decisions are off", "then run the decider (docs/runbook.md)"))
        for key in selected or []:
            get_market(conn, Market.parse(key))  # an unregistered market is refused by name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # finish the decision in hand, then stop
        signal.signal(signum, lambda *_: stop.set())
    typer.echo(f"paper decider on {', '.join(selected) if selected else 'every live market'}; Ctrl-C stops it",
               err=True)
    state = run_decider(url, functools.cache(lambda: open_registry(url)), markets=selected,
                        poll_seconds=poll_seconds, grace_seconds=grace_seconds, stop=stop,
                        on_decision=lambda d: typer.echo(json.dumps(d.to_json())))
    typer.echo(f"stopped after {state.decisions} decision(s), {state.failures} failed attempt(s)", err=True)
