"""Automatic rollback on a paper breach (issue 20, point 3): the watch rolls a breached champion back to the
previous one through the audited rollback path, actor auto-rollback, the breach's figures in the audit row,
once per breach; the paper_watch_sensor does it on a schedule and says when the switch is off.
Real PostgreSQL and MLflow; the champion history and its breach are hand-made as in test_paper_pnl."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from dagster import SkipReason, build_sensor_context

from rl_lifecycle import switches
from rl_lifecycle.decisions.paper_pnl import BREACH_CODE
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.models.tracking import CHAMPION, open_registry
from rl_lifecycle.ops.alerts import PAPER_BREACH, PROMOTION_EVENT, list_alerts
from rl_lifecycle.ops.watch import watch_market
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.service import manual_promote
from rl_lifecycle_tests.test_paper_pnl import _candles, _decide, _promote, _report
from rl_lifecycle_tests.test_promotion import register


@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def breached(conn, registry, tmp_path) -> Market:
    """v1 then v2 champion (registered in MLflow); v2's walk-forward never drew down and its paper does."""
    market = Market(f"R{uuid.uuid4().hex[:10].upper()}", "1h")
    add_market(conn, market)
    _candles(conn, market)
    v1, v2 = register(registry, market), register(registry, market)
    assert (v1, v2) == (1, 2)  # the versions _decide's records name
    _promote(conn, market, 1, _report(conn, market, tmp_path, np.random.default_rng(1).normal(0, 0.01, 200)))
    for bar, action in enumerate(["long", "long", "flat", "flat"]):
        _decide(conn, market, bar, action, 1)
    _promote(conn, market, 2, _report(conn, market, tmp_path, np.full(50, 0.001)), before=1)
    _decide(conn, market, 4, "long", 2)
    _decide(conn, market, 5, "long", 2)
    return market


def _rollbacks(conn, market: Market) -> list[audit.AuditRecord]:
    return [r for r in audit.history(conn, market.key) if r.action == audit.ROLLBACK]


def test_off_the_breach_is_only_alerted_on_it_rolls_back_once_with_the_figures(conn, registry, breached):
    off = watch_market(conn, breached, registry=registry, auto_rollback=False)
    assert [a.check for a in off.alerted] == [BREACH_CODE] and off.champion == 2
    assert "auto rollback is off" in off.skipped and _rollbacks(conn, breached) == []

    on = watch_market(conn, breached, registry=registry, auto_rollback=True)
    assert on.alerted == []  # the breach was alerted once, by the first watch
    assert on.rolled_back == (2, 1) and on.champion == 1
    (record,) = _rollbacks(conn, breached)
    assert (record.actor, record.champion_version, record.resulting_champion_version) == ("auto-rollback", 2, 1)
    assert BREACH_CODE in record.note and "evaluation report" in record.note
    assert record.details["breach_key"] == on.breach_key == off.breach_key
    assert record.details["breach"]["drawdown"] > record.details["breach"]["limit"] == 0.0
    assert registry.version(breached, CHAMPION).version == 1  # the aliases follow the audit
    # the rollback's own alert: a promotion event `auto_rollback` carrying the audit row and its figures
    (event,) = [a for a in list_alerts(conn, market=breached.key) if a.kind == PROMOTION_EVENT
                and a.check == "auto_rollback"]
    assert event.details["audit"]["details"]["breach_key"] == on.breach_key
    # the breach of the champion rolled back is over
    assert all(a.resolved_at is not None for a in list_alerts(conn, market=breached.key) if a.kind == PAPER_BREACH)

    again = watch_market(conn, breached, registry=registry, auto_rollback=True)
    assert again.rolled_back is None and again.alerted == [] and len(_rollbacks(conn, breached)) == 1

    # v2 brought back by hand before v1 decided anything: its breached segment is in force again, but that
    # breach was acted on already: no second rollback
    manual_promote(conn, registry, breached, 2, "the breach was a bad feed", "alice", override=True)
    back = watch_market(conn, breached, registry=registry, auto_rollback=True)
    assert back.rolled_back is None and "already" in back.skipped and back.champion == 2
    assert len(_rollbacks(conn, breached)) == 1


def test_a_champion_without_a_previous_one_is_not_rolled_back(conn, registry, tmp_path):
    market = Market(f"S{uuid.uuid4().hex[:10].upper()}", "1h")
    add_market(conn, market)
    _candles(conn, market)
    register(registry, market)
    register(registry, market)
    _promote(conn, market, 2, _report(conn, market, tmp_path, np.full(50, 0.001)))
    _decide(conn, market, 4, "long", 2)
    _decide(conn, market, 5, "long", 2)
    watched = watch_market(conn, market, registry=registry, auto_rollback=True)
    assert watched.rolled_back is None and "no previous champion" in watched.skipped
    assert len(watched.alerted) == 1 and audit.current_champion(conn, market.key) == 2


def _sensor(rl_env):
    from rl_lifecycle.orchestration.automation.paper_watch import paper_watch_sensor
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    database = PostgresResource(url=rl_env["RL_DATABASE_URL"])
    with build_sensor_context(resources={"database": database, "mlflow": MlflowResource(database=database)}) as context:
        return paper_watch_sensor(context)


def test_the_sensor_watches_every_market_and_rolls_back_with_the_switch_on(conn, registry, breached, rl_env,
                                                                            monkeypatch):
    monkeypatch.delenv("RL_AUTO_ROLLBACK", raising=False)
    off = _sensor(rl_env)
    assert isinstance(off, SkipReason)
    assert f"{breached.key}: champion v2; 1 new breach alert(s)" in off.skip_message
    assert "auto rollback is off" in off.skip_message and "switch set auto_rollback true" in off.skip_message
    assert audit.current_champion(conn, breached.key) == 2

    switches.set_switch(conn, "auto_rollback", "true", "cli:alice")
    on = _sensor(rl_env)
    assert f"{breached.key}: champion v1; auto rollback v2 -> v1" in on.skip_message
    assert "auto rollback is off" not in on.skip_message
    assert audit.current_champion(conn, breached.key) == 1 and len(_rollbacks(conn, breached)) == 1
    assert len(_rollbacks(conn, breached)) == 1 and "auto rollback" not in _sensor(rl_env).skip_message


def test_the_sensor_is_registered_and_auto_rollback_is_a_stage_5_switch(conn):
    from rl_lifecycle.orchestration.definitions import defs

    assert defs.get_sensor_def("paper_watch_sensor").minimum_interval_seconds == 300
    state = switches.switch_state(conn, "RL_AUTO_ROLLBACK")
    assert (state.switch, state.stage, state.value) == ("auto_rollback", 5, "false")


def test_cli_paper_watch_does_what_the_sensor_does(capsys, monkeypatch, conn, breached, rl_env):
    import json

    from rl_lifecycle_tests.cli_helpers import run_cli

    monkeypatch.delenv("RL_AUTO_ROLLBACK", raising=False)
    code, out, err = run_cli(capsys, monkeypatch, "paper", "watch", "--market", breached.key)
    assert code == 0, err
    assert "1 new breach alert(s)" in out and "auto rollback is off" in out
    switches.set_switch(conn, "auto_rollback", "true", "cli:alice")
    code, out, err = run_cli(capsys, monkeypatch, "paper", "watch", "--json")
    assert code == 0, err
    (watched,) = [w for w in json.loads(out) if w["market"] == breached.key]
    assert watched["rolled_back"] == [2, 1] and watched["champion_version"] == 1 and watched["audit_id"]
