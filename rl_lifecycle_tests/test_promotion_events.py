"""Promotion events: every promotion_audit row reaches the alert webhook (a real local HTTP server) with its
gate table, once; through the real use cases and a real MLflow registry."""

from __future__ import annotations

import pytest

from rl_lifecycle.ops.alerts import PROMOTION_EVENT, count_open_alerts, deliver_pending, list_alerts
from rl_lifecycle.ops.events import event_key
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord
from rl_lifecycle.promotion.service import decide, manual_promote, rollback
from rl_lifecycle_tests.cli_helpers import run_cli
from rl_lifecycle_tests.test_alerts import Webhook, _config
from rl_lifecycle_tests.test_promotion import POLICY, market, register, registry, report  # noqa: F401 (fixtures)


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("RL_ALERT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("RL_DAGSTER_UI_URL", "http://dagster.example:3000/")
    yield hook
    hook.close()


def test_every_audit_action_is_posted_once_with_its_gate_table(conn, registry, market, webhook):  # noqa: F811
    first, second = register(registry, market), register(registry, market)
    good = report([0.03, 0.03, 0.03])
    decide(conn, registry, market, first, good, None, POLICY, True, "pytest")  # promote (bootstrap)
    decide(conn, registry, market, second, report([0.0, 0.0, 0.0]), good, POLICY, True, "pytest")  # reject
    manual_promote(conn, registry, market, second, "ops wants it", "ops", override=True)
    rollback(conn, registry, market, "paper drawdown", "ops")
    audit.append(conn, AuditRecord(market=market.key, action=audit.ROLLBACK, actor="auto-rollback",
                                   challenger_version=second, champion_version=first,
                                   resulting_champion_version=second, note="PAPER_DRAWDOWN_BEYOND_BACKTEST"))
    rows = list(reversed(audit.history(conn, market.key)))
    events = [a for a in list_alerts(conn, market=market.key) if a.kind == PROMOTION_EVENT]
    assert sorted(a.dedupe_key for a in events) == sorted(event_key(r.id) for r in rows)
    assert count_open_alerts(conn, market.key) == 0  # events are no failures

    delivered = deliver_pending(conn, _config(webhook))
    assert len(delivered.delivered) == len(rows) == 5
    bodies = [b for b in webhook.bodies if b["event"]["market"] == market.key]
    assert [b["event"]["event"] for b in bodies] == ["promote", "reject", "manual_promote", "rollback", "auto_rollback"]
    assert [b["event"]["audit_id"] for b in bodies] == [r.id for r in rows]
    rejected = bodies[1]["event"]
    assert rejected["reason_codes"] and rejected["gates"] == list(rows[1].gates)
    assert "FAIL (" in rejected["gate_table"] and rejected["gate_table"].splitlines()[0].split() == ["gate", "value",
                                                                                                    "result"]
    assert any("```gate" in block.get("text", {}).get("text", "") for block in bodies[1]["blocks"])
    assert bodies[0]["event"]["champion_before"] is None and bodies[0]["event"]["champion_after"] == first
    assert bodies[4]["event"]["actor"] == "auto-rollback" and "auto_rollback" in bodies[4]["text"]
    assert deliver_pending(conn, _config(webhook)).delivered == ()  # never twice


def test_the_cli_sends_the_event_right_after_the_action(capsys, monkeypatch, conn, registry, market, webhook,  # noqa: F811
                                                        rl_env):
    first, second = register(registry, market), register(registry, market)
    decide(conn, registry, market, first, report([0.03, 0.03, 0.03]), None, POLICY, True, "pytest")
    manual_promote(conn, registry, market, second, "try it", "ops", override=True)
    code, out, err = run_cli(capsys, monkeypatch, "rollback", "--market", market.key, "--reason", "it drew down")
    assert code == 0, err
    (body,) = [b for b in webhook.bodies if b["event"]["market"] == market.key]  # only the rollback, at once
    assert body["event"]["event"] == "rollback" and body["event"]["note"] == "it drew down"
    assert body["event"]["champion_before"] == second and body["event"]["champion_after"] == first
