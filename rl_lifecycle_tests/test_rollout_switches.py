"""Rollout switches: one truth for the daemon, the code location and the CLI (issue 21, point 5).

Stored in the database they win over the environment everywhere; the environment (or the default) is in
force while nothing is stored; every change is an audited, append-only row. Real PostgreSQL, real Dagster.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest
from dagster import SensorResult, SkipReason, build_schedule_context, build_sensor_context

from rl_lifecycle import switches
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle_tests.cli_helpers import run_cli

SWITCH_ENVS = ("RL_FEATURE_SET", "RL_PAPER_DECISIONS_ENABLED", "RL_STRICT_BACKTEST", "RL_ONLINE_LEARNING_ENABLED",
               "RL_AUTO_PROMOTION")


@pytest.fixture
def env(rl_env, monkeypatch):
    """The test database and home; no switch in the environment (each test sets its own)."""
    for name in SWITCH_ENVS:
        monkeypatch.delenv(name, raising=False)
    return rl_env


def _resources() -> dict:
    database = PostgresResource()
    return {"database": database, "mlflow": MlflowResource(database=database)}


def _status_switches(capsys, monkeypatch) -> dict[str, dict]:
    code, out, err = run_cli(capsys, monkeypatch, "status", "--json", "--no-challengers")
    assert code == 0, err
    return {s["switch"]: s for s in json.loads(out)["switches"]}


# -- the CLI and `status` ---------------------------------------------------------------------------------
def test_a_switch_set_with_the_cli_is_in_force_in_status_with_who_and_when(env, capsys, monkeypatch):
    monkeypatch.setenv("RL_AUTO_PROMOTION", "false")  # the calling shell says off
    code, out, err = run_cli(capsys, monkeypatch, "switch", "set", "RL_Auto_Promotion", "TRUE", "--actor", "alice",
                             "--reason", "stable for 7 days")
    assert code == 0, err
    assert "auto_promotion: (not stored) -> true" in out and "stored by alice" in out

    shown = _status_switches(capsys, monkeypatch)["auto_promotion"]
    assert (shown["value"], shown["origin"], shown["stored_by"], shown["environment"]) == ("true", "stored", "alice",
                                                                                          "false")
    assert shown["variable"] == "RL_AUTO_PROMOTION" and shown["stage"] == 5
    assert datetime.fromisoformat(shown["stored_at"]) <= datetime.now(UTC)
    assert "overrides RL_AUTO_PROMOTION=false" in shown["origin_text"]

    code, out, _ = run_cli(capsys, monkeypatch, "status", "--no-challengers")
    assert code == 0
    (line,) = [x for x in out.splitlines() if "auto_promotion" in x and "stored by" in x]
    assert "true" in line and "alice" in line

    code, out, _ = run_cli(capsys, monkeypatch, "switch", "list", "--json")
    listed = {s["switch"]: s for s in json.loads(out)["switches"]}
    assert listed["auto_promotion"]["origin"] == "stored" and listed["online_learning"]["origin"] == "default"


def test_status_numbers_each_stage_once_and_lists_every_switch_under_its_stage(env, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, monkeypatch, "status", "--no-challengers")
    assert code == 0
    stages = [line.strip()[:2] for line in out.splitlines() if line[:3] == "  " + line.strip()[:1]
              and line.strip()[:1].isdigit()]
    assert stages == ["1.", "2.", "3.", "4.", "5."]
    text = out[:out.index("change one")]
    positions = [text.index(name) for name in ("feature_set", "paper_decisions", "strict_backtest",
                                               "online_learning", "auto_promotion")]
    assert positions == sorted(positions)
    assert text.index("2. ") < positions[0] < positions[1] < text.index("3. ")
    assert "each process (the daemon, the code location, this shell) reads its own environment" in out


def test_the_environment_is_the_initial_value_and_unset_goes_back_to_it(env, conn, capsys, monkeypatch):
    monkeypatch.setenv("RL_STRICT_BACKTEST", "0")
    state = switches.switch_state(conn, "strict_backtest")
    assert (state.value, state.origin, state.environment) == ("false", "environment", "0")
    assert switches.settings_in_force(conn).strict_backtest is False

    run_cli(capsys, monkeypatch, "switch", "set", "strict-backtest", "on", "--actor", "bob")
    assert switches.settings_in_force(conn).strict_backtest is True
    assert switches.switch_state(conn, "RL_STRICT_BACKTEST").origin == "stored"

    code, out, err = run_cli(capsys, monkeypatch, "switch", "unset", "strict_backtest", "--actor", "bob")
    assert code == 0, err
    assert "true -> (not stored)" in out and "environment RL_STRICT_BACKTEST=0" in out
    assert switches.settings_in_force(conn).strict_backtest is False
    monkeypatch.delenv("RL_STRICT_BACKTEST")
    state = switches.switch_state(conn, "strict_backtest")
    assert (state.value, state.origin) == ("true", "default")

    code, out, _ = run_cli(capsys, monkeypatch, "switch", "unset", "strict_backtest")  # nothing stored: no row
    assert code == 0 and "nothing was stored" in out
    assert len(switches.switch_history(conn, "strict_backtest")) == 2


def test_every_change_is_an_append_only_history_row_and_the_last_change_is_queryable(env, conn):
    assert switches.last_changed(conn) is None and switches.switch_history(conn) == []
    first = switches.set_switch(conn, "online_learning", "true", "cli:alice", "stage 4")
    assert switches.set_switch(conn, "online_learning", "yes", "cli:carol") is None  # already stored: no row
    second = switches.set_switch(conn, "online_learning", "false", "cli:bob")
    other = switches.set_switch(conn, "feature_set", "core_v1", "cli:bob")
    undone = switches.unset_switch(conn, "online_learning", "cli:alice")

    history = switches.switch_history(conn, "online_learning")
    assert [(c.previous, c.value, c.actor) for c in history] == [
        ("false", None, "cli:alice"), ("true", "false", "cli:bob"), (None, "true", "cli:alice")]
    assert history[-1].reason == "stage 4" and history[-1].id == first.id and history[1].id == second.id
    assert [c.id for c in switches.switch_history(conn)] == [undone.id, other.id, second.id, first.id]
    assert switches.last_changed(conn, "online_learning") == undone.changed_at
    assert switches.last_changed(conn, "RL_FEATURE_SET") == other.changed_at
    assert switches.last_changed(conn) == max(undone.changed_at, other.changed_at)
    assert switches.last_changed(conn, "auto_promotion") is None

    for statement in ("UPDATE rollout_switch_changes SET value = 'true'", "DELETE FROM rollout_switch_changes",
                      "TRUNCATE rollout_switch_changes"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
    assert len(switches.switch_history(conn)) == 4


def test_switch_history_command(env, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, monkeypatch, "switch", "history")
    assert code == 0 and "no switch was ever changed" in out
    run_cli(capsys, monkeypatch, "switch", "set", "paper_decisions", "true", "--actor", "dora", "--reason", "paper")
    code, out, _ = run_cli(capsys, monkeypatch, "switch", "history", "paper_decisions", "--json")
    (change,) = json.loads(out)["history"]
    assert (change["switch"], change["previous"], change["value"], change["actor"], change["reason"]) == (
        "paper_decisions", None, "true", "dora", "paper")


@pytest.mark.parametrize(("args", "named"), [
    (("switch", "set", "online", "true"), "'online'"),
    (("switch", "set", "online_learning", "maybe"), "'maybe'"),
    (("switch", "set", "feature_set", "ta_v9"), "'ta_v9'"),
    (("switch", "unset", "RL_HOME"), "'RL_HOME'"),
    (("switch", "history", "nope"), "'nope'"),
])
def test_bad_names_and_values_exit_2_naming_them_and_store_nothing(env, conn, capsys, monkeypatch, args, named):
    code, out, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2 and out == "" and named in err, err
    assert "online_learning" in err or "core_v1, ta_v2" in err or "true or false" in err
    assert switches.switch_history(conn) == []


def test_names_and_values_as_people_type_them():
    for name in ("auto_promotion", "AUTO_PROMOTION", "RL_AUTO_PROMOTION", "rl_auto_promotion", "auto-promotion"):
        assert switches.switch_variable(name).name == "RL_AUTO_PROMOTION"
    assert switches.switch_variable("online_learning_enabled").switch == "online_learning"
    assert switches.switch_variable("PAPER_DECISIONS").name == "RL_PAPER_DECISIONS_ENABLED"
    flag = switches.switch_variable("paper_decisions")
    assert [switches.normalized_value(flag, v) for v in ("1", "Yes", " on ", "FALSE", "off", "0")] == [
        "true", "true", "true", "false", "false", "false"]
    assert switches.normalized_value(switches.switch_variable("feature_set"), "Core_V1") == "core_v1"
    with pytest.raises(UserInputError, match=r"feature_set: 'rl_lifecycle/features/sets/ta_v2.yaml' is not a known"):
        switches.normalized_value(switches.switch_variable("feature_set"), "rl_lifecycle/features/sets/ta_v2.yaml")


def test_the_feature_set_switch_selects_the_active_set(env, conn, monkeypatch):
    assert switches.feature_set_in_force(conn).name == "ta_v2"
    switches.set_switch(conn, "feature_set", "core_v1", "cli:alice")  # the rollback of stage 2
    assert switches.feature_set_in_force(conn).name == "core_v1"
    assert switches.settings_in_force(conn).feature_set == "core_v1"
    monkeypatch.setenv("RL_FEATURE_SET", "ta_v2")  # the environment no longer decides
    assert switches.feature_set_in_force(conn).name == "core_v1"


# -- the Dagster shell reads the same value as the CLI ---------------------------------------------------------
def _online_tick(instance):
    from rl_lifecycle.orchestration.automation.online import online_learning_sensor

    with build_sensor_context(instance=instance, resources=_resources()) as context:
        return online_learning_sensor(context), context


def test_the_online_learning_sensor_obeys_the_stored_switch_over_its_environment(env, conn, dagster_instance,
                                                                               capsys, monkeypatch):
    monkeypatch.setenv("RL_ONLINE_LEARNING_ENABLED", "true")  # the daemon's environment says on
    code, _, err = run_cli(capsys, monkeypatch, "switch", "set", "online_learning", "false", "--actor", "alice")
    assert code == 0, err
    result, context = _online_tick(dagster_instance)
    assert isinstance(result, SkipReason), result
    message = result.skip_message
    assert "online learning is off" in message and "switch online_learning = false" in message
    assert "stored by alice" in message and "overrides RL_ONLINE_LEARNING_ENABLED=true" in message
    assert "`rl-lifecycle switch set online_learning true`" in message
    assert context.cursor is None  # a disabled sensor touches nothing
    assert _status_switches(capsys, monkeypatch)["online_learning"]["value"] == "false"  # the CLI agrees

    # and the other way round: the environment says off, the stored switch on
    monkeypatch.setenv("RL_ONLINE_LEARNING_ENABLED", "false")
    run_cli(capsys, monkeypatch, "switch", "set", "online_learning", "true", "--actor", "alice")
    result, context = _online_tick(dagster_instance)
    assert isinstance(result, SensorResult) and "is off" not in (result.skip_reason.skip_message or "")
    assert context.cursor is None and result.cursor  # it ran: a cursor to store
    assert _status_switches(capsys, monkeypatch)["online_learning"]["value"] == "true"


def test_with_nothing_stored_the_sensor_names_the_environment_and_both_ways_to_turn_it_on(env, dagster_instance):
    result, _ = _online_tick(dagster_instance)
    assert isinstance(result, SkipReason)
    assert "(default; RL_ONLINE_LEARNING_ENABLED unset and nothing stored)" in result.skip_message
    assert "RL_ONLINE_LEARNING_ENABLED=true" in result.skip_message  # the environment route, too


def test_the_paper_decisions_schedule_and_the_decider_obey_the_stored_switch(env, conn, capsys, monkeypatch):
    from rl_lifecycle.orchestration.automation.paper_decisions import paper_decisions

    monkeypatch.setenv("RL_PAPER_DECISIONS_ENABLED", "true")
    switches.set_switch(conn, "paper_decisions", "false", "cli:alice")
    with build_schedule_context(resources=_resources(), scheduled_execution_time=datetime.now(UTC)) as context:
        skipped = paper_decisions(context)
    assert isinstance(skipped, SkipReason) and "switch paper_decisions = false (stored by cli:alice" in skipped.skip_message
    code, out, err = run_cli(capsys, monkeypatch, "paper", "run")  # the long-lived decider refuses alike
    assert code == 2 and "switch paper_decisions = false (stored by cli:alice" in err

    monkeypatch.setenv("RL_PAPER_DECISIONS_ENABLED", "false")
    switches.set_switch(conn, "paper_decisions", "true", "cli:alice")
    with build_schedule_context(resources=_resources(), scheduled_execution_time=datetime.now(UTC)) as context:
        ran = paper_decisions(context)
    assert isinstance(ran, SkipReason) and "no market is owed a decision" in ran.skip_message  # it looked


def test_gated_automation_says_in_its_description_which_switch_gates_it():
    from rl_lifecycle.orchestration.automation.online import online_learning_sensor
    from rl_lifecycle.orchestration.automation.paper_decisions import paper_decisions

    for gated, switch in ((online_learning_sensor, "online_learning"), (paper_decisions, "paper_decisions")):
        assert f"Gated by the rollout switch {switch}" in gated.description
        assert f"rl-lifecycle switch set {switch} true" in gated.description


def test_the_switches_in_force_reach_the_assets(env, conn, monkeypatch):
    """What promotion_decision (auto_promotion) and the fold report (strict_backtest) read."""
    monkeypatch.setenv("RL_AUTO_PROMOTION", "true")
    monkeypatch.setenv("RL_STRICT_BACKTEST", "true")
    switches.set_switch(conn, "auto_promotion", "false", "cli:alice")  # the rollback of stage 5
    switches.set_switch(conn, "strict_backtest", "false", "cli:alice")
    settings = switches.settings_in_force(conn)
    assert (settings.auto_promotion, settings.strict_backtest) == (False, False)
    assert settings.online_learning_enabled is False and settings.home == load_settings().home


# -- sensors that used to say only "Sensor function returned an empty result" -------------------------------
def test_idle_sensors_say_why_they_skipped(env, dagster_instance):
    from dagster._core.definitions.run_status_sensor_definition import RunStatusSensorCursor

    from rl_lifecycle.orchestration.automation.alerts import (
        check_failure_alert_sensor,
        run_failure_alert_sensor,
    )
    from rl_lifecycle.orchestration.automation.markets import market_partitions_sensor
    from rl_lifecycle.orchestration.definitions import defs

    start = RunStatusSensorCursor(record_id=0, record_timestamp=None).to_json()
    database = {"database": PostgresResource()}
    for sensor_def, says in ((check_failure_alert_sensor, "no run succeeded since the last tick"),
                             (run_failure_alert_sensor, "no run failed since the last tick"),
                             (market_partitions_sensor, "no market registered")):
        assert defs.get_sensor_def(sensor_def.name) is sensor_def  # the code location serves these objects
        data = sensor_def.evaluate_tick(build_sensor_context(instance=dagster_instance, cursor=start,
                                                             resources=database))
        assert data.skip_message.startswith(says), data.skip_message
