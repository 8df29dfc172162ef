"""Rollout switches: one truth for the daemon, the code location and the CLI.

The switches are the `rl_lifecycle.settings.VARIABLES` with a `stage` (`feature_set`, `paper_decisions`,
`strict_backtest`, `online_learning`, `auto_promotion`). What is in force, for every process alike:

1. the value **stored** in the database (`rl-lifecycle switch set NAME VALUE`), else
2. the **environment** variable of the process reading it (`RL_AUTO_PROMOTION=...`), else
3. its **default** (`VARIABLES`).

Every change is a row of the append-only `rollout_switch_changes` (who, when, previous -> new); an unset
(`rl-lifecycle switch unset NAME`) is a row with no value, handing the switch back to the environment.
`settings_in_force(conn)` is `load_settings()` with the switch fields replaced by what is in force: the
Dagster shell and the CLI read it wherever a switch decides behaviour. `load_settings()` itself never
touches the database.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import FeatureSetSpec, active_feature_set, available_feature_sets
from rl_lifecycle.settings import (
    ROLLOUT_STAGES,
    Settings,
    Variable,
    load_settings,
    parse_flag,
    rollout_switches,
)

STORED, ENVIRONMENT, DEFAULT = "stored", "environment", "default"
_LOCK_KEY = 0x726C5F737763  # "rl_swc": one switch change at a time, so `previous` is what was stored


def is_flag(variable: Variable) -> bool:
    return Settings.__dataclass_fields__[variable.field].type == "bool"


def switch_variable(name: str) -> Variable:
    """The switch a person named: its switch name (`auto_promotion`), its variable (`RL_AUTO_PROMOTION`) or its
    settings field (`online_learning_enabled`), in any case, `-` for `_`."""
    wanted = name.strip().lower().replace("-", "_")
    for variable in rollout_switches():
        if wanted in (variable.switch, variable.name.lower(), variable.field):
            return variable
    names = ", ".join(v.switch for v in rollout_switches())
    envs = ", ".join(v.name for v in rollout_switches())
    raise UserInputError(f"unknown rollout switch {name!r}; the switches are {names} (or their variables {envs})")


def normalized_value(variable: Variable, value: str) -> str:
    """`value` as stored and shown: `true`/`false` for a flag, a known feature set's name for `feature_set`."""
    text = value.strip()
    if is_flag(variable):
        flag = parse_flag(text)
        if flag is None:
            raise UserInputError(f"switch {variable.switch}: {value!r} is not a boolean; use true or false")
        return "true" if flag else "false"
    if variable.switch == "feature_set":
        known = available_feature_sets()
        if text.lower() not in known:
            raise UserInputError(f"switch feature_set: {value!r} is not a known feature set; available: "
                                 f"{', '.join(known)} (a feature-set YAML path stays a choice of RL_FEATURE_SET)")
        return text.lower()
    return text  # pragma: no cover - every switch is a flag or the feature set today


def _typed(variable: Variable, value: str) -> bool | str:
    return parse_flag(value) if is_flag(variable) else value


def _shown(value: bool | str) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# -- the record of changes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwitchChange:
    """One row of `rollout_switch_changes`: `value` None is an unset (back to the environment or default)."""

    id: int
    switch: str
    value: str | None
    previous: str | None
    actor: str
    reason: str | None
    changed_at: datetime

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "changed_at": self.changed_at.isoformat()}

    def describe(self) -> str:
        before = self.previous if self.previous is not None else "(not stored)"
        after = self.value if self.value is not None else "(not stored: environment or default)"
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.changed_at:%Y-%m-%d %H:%M:%S %Z} {self.switch}: {before} -> {after} by {self.actor}{why}"


_COLUMNS = "id, switch, value, previous, actor, reason, changed_at"


def _change(row) -> SwitchChange:
    *fields, changed_at = row
    return SwitchChange(*fields, changed_at.astimezone(UTC))


def _newest(conn: psycopg.Connection) -> dict[str, SwitchChange]:
    rows = conn.execute(
        f"SELECT DISTINCT ON (switch) {_COLUMNS} FROM rollout_switch_changes ORDER BY switch, id DESC").fetchall()
    return {row[1]: _change(row) for row in rows}


def stored_switches(conn: psycopg.Connection) -> dict[str, SwitchChange]:
    """The switches with a stored value, by switch name: the change that stored it."""
    return {name: change for name, change in _newest(conn).items() if change.value is not None}


def switch_history(conn: psycopg.Connection, name: str | None = None, limit: int = 50) -> list[SwitchChange]:
    """The changes, newest first (of one switch when `name` is given)."""
    switch = switch_variable(name).switch if name is not None else None
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM rollout_switch_changes WHERE %(switch)s::text IS NULL OR switch = %(switch)s "
        "ORDER BY id DESC LIMIT %(limit)s", {"switch": switch, "limit": limit}).fetchall()
    return [_change(row) for row in rows]


def last_changed(conn: psycopg.Connection, name: str | None = None) -> datetime | None:
    """When the switch `name` (any switch when None) was last set or unset with `rl-lifecycle switch`; None
    when never. The start of "running at the current rollout stage" for the stability rule; a change of an
    environment variable alone is not recorded here."""
    switch = switch_variable(name).switch if name is not None else None
    row = conn.execute(
        "SELECT max(changed_at) FROM rollout_switch_changes WHERE %(switch)s::text IS NULL OR switch = %(switch)s",
        {"switch": switch}).fetchone()
    return row[0]


def _record(conn: psycopg.Connection, variable: Variable, value: str | None, actor: str,
            reason: str | None) -> SwitchChange | None:
    if not actor.strip():
        raise UserInputError("a switch change needs an actor (who changes it)")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        newest = _newest(conn).get(variable.switch)
        previous = newest.value if newest is not None else None
        if previous == value:  # nothing changes: no row, so the time of the last change stays true
            return None
        row = conn.execute(
            f"INSERT INTO rollout_switch_changes (switch, value, previous, actor, reason) VALUES (%s, %s, %s, %s, %s) "
            f"RETURNING {_COLUMNS}", (variable.switch, value, previous, actor.strip(), (reason or "").strip() or None),
        ).fetchone()
    return _change(row)


def set_switch(conn: psycopg.Connection, name: str, value: str, actor: str,
               reason: str | None = None) -> SwitchChange | None:
    """Store `value` for the switch `name` (validated; it then wins over the environment everywhere).
    Returns the change, or None when that value was stored already."""
    variable = switch_variable(name)
    return _record(conn, variable, normalized_value(variable, value), actor, reason)


def unset_switch(conn: psycopg.Connection, name: str, actor: str, reason: str | None = None) -> SwitchChange | None:
    """Forget the stored value: the environment variable (or the default) is in force again. Returns the
    change, or None when nothing was stored."""
    return _record(conn, switch_variable(name), None, actor, reason)


# -- what is in force ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwitchState:
    """A switch as it is in force now, and where that comes from. `environment` is the raw value in the
    environment of the process that read it (None: unset)."""

    stage: int
    stage_name: str
    switch: str
    variable: str
    value: str
    origin: str  # STORED, ENVIRONMENT or DEFAULT
    default: str
    environment: str | None
    stored_by: str | None
    stored_at: datetime | None
    meaning: str

    @property
    def enabled(self) -> bool:
        return parse_flag(self.value) is True

    def origin_text(self) -> str:
        """Where the value comes from, for people: `stored by alice at ...`, `environment RL_X=...`, `default`."""
        if self.origin == STORED:
            text = f"stored by {self.stored_by} at {self.stored_at:%Y-%m-%d %H:%M:%S %Z}"
            if self.environment is not None:
                text += f"; overrides {self.variable}={self.environment} in this process's environment"
            return text
        if self.origin == ENVIRONMENT:
            return f"environment {self.variable}={self.environment}; nothing stored"
        return f"default; {self.variable} unset and nothing stored"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "stored_at": self.stored_at.isoformat() if self.stored_at else None,
                "origin_text": self.origin_text()}


def switch_states(conn: psycopg.Connection, settings: Settings | None = None) -> list[SwitchState]:
    """Every switch in rollout order, as in force now (stored, else this process's environment, else default)."""
    settings = settings or load_settings()  # a bad environment value is refused here, named
    stored = stored_switches(conn)
    states = []
    for variable in rollout_switches():
        change = stored.get(variable.switch)
        if change is not None:
            value, origin = change.value, STORED
        else:
            value, origin = _shown(getattr(settings, variable.field)), ENVIRONMENT if variable.explicit else DEFAULT
        states.append(SwitchState(
            stage=variable.stage, stage_name=ROLLOUT_STAGES[variable.stage], switch=variable.switch,
            variable=variable.name, value=value, origin=origin, default=variable.default,
            environment=variable.raw(), stored_by=change.actor if change else None,
            stored_at=change.changed_at if change else None, meaning=variable.meaning,
        ))
    return states


def switch_state(conn: psycopg.Connection, name: str, settings: Settings | None = None) -> SwitchState:
    wanted = switch_variable(name).switch
    return next(s for s in switch_states(conn, settings) if s.switch == wanted)


def settings_in_force(conn: psycopg.Connection, settings: Settings | None = None) -> Settings:
    """`settings` (default `load_settings()`) with every stored switch in place of its environment value."""
    settings = settings or load_settings()
    stored = stored_switches(conn)
    replaced = {v.field: _typed(v, stored[v.switch].value) for v in rollout_switches() if v.switch in stored}
    return dataclasses.replace(settings, **replaced) if replaced else settings


def feature_set_in_force(conn: psycopg.Connection) -> FeatureSetSpec:
    """The active feature set as the `feature_set` switch is in force (stored, else RL_FEATURE_SET, else ta_v2)."""
    return active_feature_set(settings_in_force(conn))


def off_reason(state: SwitchState, what: str, then: str = "") -> str:
    """Why something the switch keeps off is off (a sensor's skip reason, a refusal of the CLI): the switch,
    its value, where that comes from and the command that turns it on. `what`: "online learning is off";
    `then`: what happens once it is on."""
    environment = ("" if state.origin == STORED else
                   f" (or {state.variable}=true in the environment of the daemon, the code location and the CLI, "
                   "then restart them)")
    return (f"{what}: switch {state.switch} = {state.value} ({state.origin_text()}). Turn it on for the "
            f"daemon, the code location and the CLI alike with `rl-lifecycle switch set {state.switch} true`{environment}"
            + (f"; {then}" if then else "") + ". `rl-lifecycle switch list` shows every switch.")
