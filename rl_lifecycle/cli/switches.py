"""`rl-lifecycle switch ...`: the rollout switches, stored in the database for every process alike.

A stored value wins over the environment in the Dagster daemon, the code location and the CLI; `unset`
hands a switch back to its environment variable (or default). Every change is audited (who, when,
previous -> new) in `rollout_switch_changes` (`rl_lifecycle.switches`).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.settings import load_settings

switch_app = typer.Typer(
    no_args_is_help=True,
    help="Rollout switches (feature_set, paper_decisions, strict_backtest, online_learning, auto_promotion): "
    "stored in the database they hold for the daemon, the code location and the CLI alike.")

NameArgument = Annotated[str, typer.Argument(
    help="feature_set, paper_decisions, strict_backtest, online_learning, auto_promotion, auto_rollback (or RL_AUTO_PROMOTION, ...)")]
ActorOption = Annotated[str | None, typer.Option(help="who changes it, for the audit [default: cli:$USER]")]
ReasonOption = Annotated[str | None, typer.Option(help="why, for the audit")]


@switch_app.command("list")
def switch_list(as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False) -> None:
    """Every switch in rollout order: the value in force and where it comes from (stored, environment, default)."""
    from rl_lifecycle.ops.status import switch_lines
    from rl_lifecycle.switches import switch_states

    with connect(open_database(load_settings())) as conn:
        states = switch_states(conn)
    if as_json:
        typer.echo(json.dumps({"switches": [s.to_json() for s in states]}, indent=2))
        return
    for line in switch_lines(states):
        typer.echo(line)


@switch_app.command("set")
def switch_set(
    name: NameArgument,
    value: Annotated[str, typer.Argument(help="true/false for a flag; a known feature set (core_v1, ta_v2) for feature_set")],
    actor: ActorOption = None,
    reason: ReasonOption = None,
) -> None:
    """Store a switch's value: it wins over the environment everywhere from the next sensor tick / run on."""
    from rl_lifecycle.cli.common import actor as cli_actor
    from rl_lifecycle.switches import normalized_value, set_switch, switch_state, switch_variable

    normalized_value(switch_variable(name), value)  # bad input is refused before the database is touched
    with connect(open_database(load_settings())) as conn:
        change = set_switch(conn, name, value, actor or cli_actor(), reason)
        state = switch_state(conn, name)
    typer.echo(f"{state.switch}: {change.previous or '(not stored)'} -> {change.value} (stored)" if change
               else f"{state.switch}: {state.value} was stored already; nothing changed")
    typer.echo(f"in force: {state.switch} = {state.value} ({state.origin_text()})")


@switch_app.command("unset")
def switch_unset(name: NameArgument, actor: ActorOption = None, reason: ReasonOption = None) -> None:
    """Forget the stored value: the environment variable (or the default) is in force again."""
    from rl_lifecycle.cli.common import actor as cli_actor
    from rl_lifecycle.switches import switch_state, switch_variable, unset_switch

    switch_variable(name)
    with connect(open_database(load_settings())) as conn:
        change = unset_switch(conn, name, actor or cli_actor(), reason)
        state = switch_state(conn, name)
    typer.echo(f"{state.switch}: {change.previous} -> (not stored)" if change
               else f"{state.switch}: nothing was stored; nothing changed")
    typer.echo(f"in force here: {state.switch} = {state.value} ({state.origin_text()}); every other process "
               f"reads its own environment")


@switch_app.command("history")
def switch_history_command(
    name: Annotated[str | None, typer.Argument(help="one switch (default: all)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many changes")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """The changes, newest first: when, which switch, previous -> new, by whom and why."""
    from rl_lifecycle.switches import switch_history, switch_variable

    if name is not None:
        switch_variable(name)
    with connect(open_database(load_settings())) as conn:
        changes = switch_history(conn, name, limit=limit)
    if as_json:
        typer.echo(json.dumps({"history": [c.to_json() for c in changes]}, indent=2))
        return
    if not changes:
        typer.echo("no switch was ever changed with `rl-lifecycle switch set`: the environment (or the default) "
                   "is in force")
    for change in changes:
        typer.echo(change.describe())
