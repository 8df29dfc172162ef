"""The long-lived paper decider (`rl-lifecycle paper run`): one decision per market per closed bar, never twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.decisions import live, safety
from rl_lifecycle.decisions.service import DueDecision
from rl_lifecycle.decisions.store import decision_history
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.switches import set_switch
from rl_lifecycle.windows import iso, newest_closed_bar, to_us
from rl_lifecycle_tests.cli_helpers import run_cli

HOUR = 3_600_000_000
SECOND = 1_000_000


def _market(interval: str = "1h") -> Market:
    return Market(f"P{uuid.uuid4().hex[:10].upper()}", interval)


def _no_registry():
    raise AssertionError("no market here has a champion")


@pytest.fixture
def hourly(conn) -> Market:
    market = _market()
    ingest_synthetic(conn, market, to_us("2024-03-01"), to_us("2024-03-05T10:00:00"), seed=4)  # last bar 09:00
    return market


def test_a_bar_is_decided_once_when_its_candle_is_in_or_the_grace_is_over(conn, hourly):
    closed = to_us("2024-03-05T10:00:00")  # the 09:00 bar closes
    made = live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=closed + 5 * SECOND)
    assert [d.record.bar_ts_us for d in made] == [to_us("2024-03-05T09:00:00")]
    assert made[0].record.reason_codes == (safety.NO_CHAMPION,)
    assert live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=closed + 30 * SECOND) == []
    # the 10:00 bar closes without its candle: wait for it during the grace period, then decide anyway
    late = closed + HOUR
    assert live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=late + 5 * SECOND,
                                grace_seconds=20) == []
    (stale,) = live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=late + 25 * SECOND,
                                    grace_seconds=20)
    assert stale.record.bar_ts_us == to_us("2024-03-05T09:00:00") and stale.record.details["missed_bars"] == 1
    assert len(decision_history(conn, hourly.key)) == 2


def test_the_schedule_skips_a_bar_the_decider_took(conn, hourly, rl_env):
    from rl_lifecycle.orchestration.jobs import paper_decisions_job
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    bar = to_us("2024-03-05T09:00:00")
    now = bar + HOUR + 2 * SECOND
    (taken,) = live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=now)
    assert live.decide_if_due(conn, DueDecision(hourly.key, bar), registry=_no_registry, at_us=now) is None
    database = PostgresResource(url=rl_env["RL_DATABASE_URL"])
    result = paper_decisions_job.execute_in_process(
        run_config={"ops": {"paper_decision": {"config": {"market": hourly.key, "bar_ts": iso(bar)}}}},
        resources={"database": database, "mlflow": MlflowResource(database=database)})
    assert result.success and result.output_for_node("paper_decision") is None
    assert [d.id for d in decision_history(conn, hourly.key)] == [taken.record.id]


def test_the_grace_is_capped_at_half_an_interval(conn):
    minute = _market("1m")
    ingest_synthetic(conn, minute, to_us("2024-03-05T09:00:00"), to_us("2024-03-05T09:10:00"), seed=4)
    late = DueDecision(minute.key, to_us("2024-03-05T09:10:00"))  # its candle never comes
    closed = late.bar_ts_us + 60 * SECOND
    assert live.grace_us(minute, 90) == 30 * SECOND and live.grace_us(minute, 20) == 20 * SECOND
    assert not live.is_ready(conn, late, closed + 29 * SECOND, grace_seconds=90)
    assert live.is_ready(conn, late, closed + 30 * SECOND, grace_seconds=90)  # still inside the bar's slot


def test_a_market_that_keeps_failing_is_retried_with_backoff(conn, hourly, monkeypatch):
    calls = []

    def fails(conn, due, **options):
        calls.append(options["at_us"])
        raise RuntimeError("injected: the champion's artifacts are gone")

    monkeypatch.setattr(live, "decide_if_due", fails)
    state, t0 = live.DeciderState(), to_us("2024-03-05T10:00:05")
    for offset in (0, 0.5, 1.2, 2.0, 3.5):  # fails at 0 (retry in 1 s), 1.2 (in 2 s), 3.5
        live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=t0 + int(offset * SECOND),
                             state=state, poll_seconds=1.0)
    assert [(c - t0) / SECOND for c in calls] == [0, 1.2, 3.5] and state.failures == 3
    monkeypatch.undo()
    (made,) = live.decide_due_once(conn, _no_registry, markets={hourly.key}, now_us=t0 + 10 * SECOND, state=state)
    assert made.record.market == hourly.key and state.failed_in_a_row == {}


def test_a_run_launched_without_a_bar_decides_the_bar_closed_last_once(conn, hourly, rl_env):
    from rl_lifecycle.orchestration.jobs import paper_decisions_job
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    database = PostgresResource(url=rl_env["RL_DATABASE_URL"])
    resources = {"database": database, "mlflow": MlflowResource(database=database)}
    config = {"ops": {"paper_decision": {"config": {"market": hourly.key, "grace_seconds": 0}}}}
    first = paper_decisions_job.execute_in_process(run_config=config, resources=resources)
    second = paper_decisions_job.execute_in_process(run_config=config, resources=resources)
    assert first.output_for_node("paper_decision")["market"] == hourly.key
    if second.output_for_node("paper_decision") is None:  # the usual case: the same hour
        assert len(decision_history(conn, hourly.key)) == 1
    else:  # the hour turned between the two runs: a new bar, a new decision
        assert len(decision_history(conn, hourly.key)) == 2


def test_one_failing_market_does_not_stop_the_others(conn, hourly, monkeypatch):
    broken = _market()
    ingest_synthetic(conn, broken, to_us("2024-03-01"), to_us("2024-03-05T10:00:00"), seed=5)
    real = live.decide_if_due

    def fails_for_broken(conn, due, **options):
        if due.market == broken.key:
            raise RuntimeError("injected: this market's champion cannot load")
        return real(conn, due, **options)

    monkeypatch.setattr(live, "decide_if_due", fails_for_broken)
    state = live.DeciderState()
    made = live.decide_due_once(conn, _no_registry, markets={hourly.key, broken.key},
                                now_us=to_us("2024-03-05T10:00:05"), state=state)
    assert [d.record.market for d in made] == [hourly.key] and (state.decisions, state.failures) == (1, 1)
    assert decision_history(conn, broken.key) == []


def test_the_loop_decides_live_bars_until_stopped(conn, database_url):
    market = _market("1m")
    now = time.time_ns() // 1000
    ingest_synthetic(conn, market, now - 3 * HOUR, newest_closed_bar(now, market.interval_us) + 60 * SECOND,
                     seed=6)
    set_switch(conn, "paper_decisions", "true", actor="pytest")
    stop, made = threading.Event(), []
    worker = threading.Thread(target=live.run_decider, args=(database_url, _no_registry), kwargs=dict(
        markets=[market.key], poll_seconds=0.1, stop=stop, on_decision=lambda d: (made.append(d), stop.set())),
        daemon=True)
    worker.start()
    worker.join(timeout=30)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive() and len(made) == 1 and made[0].record.market == market.key


def test_the_loop_pauses_while_paper_decisions_are_switched_off_and_resumes_without_a_restart(conn, database_url,
                                                                                               caplog):
    market = _market("1m")
    now = time.time_ns() // 1000
    ingest_synthetic(conn, market, now - 3 * HOUR, newest_closed_bar(now, market.interval_us) + 60 * SECOND,
                     seed=6)
    set_switch(conn, "paper_decisions", "false", actor="pytest", reason="paused for the test")
    stop, made, state = threading.Event(), [], []
    worker = threading.Thread(target=lambda: state.append(live.run_decider(
        database_url, _no_registry, markets=[market.key], poll_seconds=0.1, stop=stop,
        on_decision=lambda d: (made.append(d), stop.set()))), daemon=True)
    with caplog.at_level("INFO", logger=live.logger.name):
        worker.start()
        time.sleep(1.5)  # some fifteen polls while off
        assert made == [] and decision_history(conn, market.key) == []
        set_switch(conn, "paper_decisions", "true", actor="pytest", reason="on again")
        worker.join(timeout=30)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive() and len(made) == 1 and made[0].record.market == market.key
    assert not state[0].paused
    messages = [r.getMessage() for r in caplog.records]
    assert sum("paper decisions are off: switch paper_decisions = false" in m for m in messages) == 1  # once
    assert sum("paper decisions are on again" in m for m in messages) == 1


def test_cli_refuses_when_paper_decisions_are_off_or_the_market_is_unknown(capsys, monkeypatch, rl_env):
    monkeypatch.delenv("RL_PAPER_DECISIONS_ENABLED", raising=False)
    code, out, err = run_cli(capsys, monkeypatch, "paper", "run")
    assert code == 2 and "RL_PAPER_DECISIONS_ENABLED" in err
    monkeypatch.setenv("RL_PAPER_DECISIONS_ENABLED", "true")
    for args, message in ((("--market", "NOPEUSDT-1h"), "not registered"), (("--market", "BTCUSDT-7m"), "interval")):
        code, out, err = run_cli(capsys, monkeypatch, "paper", "run", *args)
        assert code == 2 and message in err, err


def test_cli_prints_one_json_line_per_decision_and_stops_on_sigterm(conn, rl_env):
    market = _market("1m")
    now = time.time_ns() // 1000
    ingest_synthetic(conn, market, now - 3 * HOUR, newest_closed_bar(now, market.interval_us) + 60 * SECOND,
                     seed=8)
    env = {**os.environ, **rl_env, "RL_PAPER_DECISIONS_ENABLED": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rl_lifecycle.cli", "paper", "run", "--market", market.key, "--poll-seconds", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        decision = json.loads(line)
        assert decision["market"] == market.key and decision["reason_codes"] == [safety.NO_CHAMPION]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert "stopped after 1 decision(s)" in process.stderr.read()
    finally:
        process.kill()
    assert to_us(decision["bar_ts"]) >= newest_closed_bar(now, market.interval_us)
