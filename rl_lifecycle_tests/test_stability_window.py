"""The 7-day stability rule before an automatic roll-forward (issue 20, point 4): inside the window a passing
challenger waits as pending_manual with STABILITY_WINDOW_NOT_MET naming what is missing; after it, it is
promoted. The clock is moved (`now`), never waited for. Real PostgreSQL and MLflow."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from rl_lifecycle import switches
from rl_lifecycle.evaluation.store import read_report
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.models.tracking import open_registry
from rl_lifecycle.ops.alerts import check_alert, record_alert
from rl_lifecycle.ops.stability import market_stability
from rl_lifecycle.ops.status import market_status, status_lines
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.gates import PENDING_MANUAL, PROMOTED, STABILITY_WINDOW_NOT_MET
from rl_lifecycle.promotion.service import decide
from rl_lifecycle.promotion.stability import BREACH, FAILED_CHECK, OPEN_ALERT, Incident, stability_window
from rl_lifecycle_tests.test_promotion import POLICY, register, stored_report

T = datetime(2026, 1, 10, tzinfo=UTC)


# -- the pure rule -------------------------------------------------------------------------------------------
def test_the_window_counts_from_the_latest_of_stage_registration_and_last_problem():
    registered = T - timedelta(days=30)
    changed = T - timedelta(days=2)
    window = stability_window(now=T, required_days=7, stage_start=changed, stage_change="switch auto_promotion "
                              "set to true by alice", registered_at=registered, incidents=[])
    assert not window.met and window.counting_from == changed and window.elapsed_days == pytest.approx(2.0)
    assert window.missing == ("switch auto_promotion set to true by alice 2.0 days ago (7 days needed, complete "
                              "at 2026-01-15 00:00 UTC)",)
    later = stability_window(now=T + timedelta(days=5), required_days=7, stage_start=changed,
                             stage_change="x", registered_at=registered, incidents=[])
    assert later.met and later.remaining_days == 0.0
    # nothing recorded (env-only changes): the market's registration
    unrecorded = stability_window(now=T, required_days=7, stage_start=None, stage_change="no recorded switch change",
                                  registered_at=registered, incidents=[])
    assert unrecorded.met and unrecorded.since == "the market's registration"
    # a breach restarts the clock; an open alert blocks however old
    breach = Incident(BREACH, T - timedelta(days=1), "drawdown")
    old_open = Incident(OPEN_ALERT, T - timedelta(days=20), "features_deterministic failed")
    blocked = stability_window(now=T, required_days=7, stage_start=None, stage_change="-", registered_at=registered,
                               incidents=[breach, old_open, Incident(FAILED_CHECK, T - timedelta(days=3))])
    assert blocked.counting_from == breach.at and blocked.since == "the last paper breach"
    assert blocked.missing[0].startswith("the last paper breach 1.0 days ago")
    assert blocked.missing[1] == "1 open alert(s) since 2025-12-21 00:00 UTC (features_deterministic failed)"


# -- decisions through the database --------------------------------------------------------------------------
@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def market(conn) -> Market:
    market = Market(f"W{uuid.uuid4().hex[:10].upper()}", "1h")
    add_market(conn, market)
    return market


def test_auto_promotion_waits_inside_the_window_and_promotes_after_it(conn, registry, market, monkeypatch):
    monkeypatch.delenv("RL_STABILITY_DAYS", raising=False)
    versions = [register(registry, market) for _ in range(3)]
    reports = [read_report(conn, stored_report(conn, market, [0.01 * (k + 1)] * 3, f"spec-{k}")) for k in range(3)]
    now = datetime.now(UTC)
    # a bootstrap is no roll-forward: not held by the window
    first = decide(conn, registry, market, versions[0], reports[0], None, POLICY, True, "test",
                   stability=market_stability(conn, market, now=now))
    assert first.decision.outcome == PROMOTED

    switches.set_switch(conn, "auto_promotion", "true", "cli:alice")
    inside = market_stability(conn, market, now=now + timedelta(days=2))
    assert not inside.met and inside.required_days == 7.0
    assert inside.missing[0].startswith("switch auto_promotion set to true by cli:alice 2.0 days ago")
    waiting = decide(conn, registry, market, versions[1], reports[1], reports[0], POLICY, True, "test",
                     evaluated_champion_version=versions[0], stability=inside)
    assert waiting.decision.outcome == PENDING_MANUAL and waiting.decision.reason_codes == (STABILITY_WINDOW_NOT_MET,)
    assert waiting.decision.gates_passed and audit.current_champion(conn, market.key) == versions[0]
    record = audit.history(conn, market.key, limit=1)[0]
    assert record.action == audit.PENDING and record.reason_codes == (STABILITY_WINDOW_NOT_MET,)
    assert "auto_promotion set to true by cli:alice 2.0 days ago" in record.note
    assert record.details["stability"]["met"] is False

    # an alert restarts and blocks: open, then resolved (the failure still restarts the clock)
    alert = record_alert(conn, check_alert("r1", "feature_snapshots", "features_deterministic",
                                           f"{market.key}|2024-03-01", "bad"))
    blocked = market_stability(conn, market, now=now + timedelta(days=8))
    assert not blocked.met and any(m.startswith("1 open alert(s) since") for m in blocked.missing)
    assert blocked.since == "the last failed check"
    conn.execute("UPDATE alerts SET resolved_at = now() WHERE id = %s", (alert.id,))

    after = market_stability(conn, market, now=now + timedelta(days=8))
    assert after.met, after.missing
    promoted = decide(conn, registry, market, versions[1], reports[1], reports[0], POLICY, True, "test",
                      evaluated_champion_version=versions[0], stability=after)
    assert promoted.decision.outcome == PROMOTED and audit.current_champion(conn, market.key) == versions[1]

    # auto promotion off: the window does not matter (a person approves)
    manual = decide(conn, registry, market, versions[2], reports[2], reports[1], POLICY, False, "test",
                    evaluated_champion_version=versions[1], stability=inside)
    assert manual.decision.reason_codes == ("MANUAL_APPROVAL_REQUIRED",)


def test_the_configured_period_and_the_status_show_how_far_each_market_is(conn, market, monkeypatch):
    monkeypatch.setenv("RL_STABILITY_DAYS", "3")
    switches.set_switch(conn, "auto_promotion", "true", "cli:bob")
    now = datetime.now(UTC) + timedelta(days=1)
    window = market_stability(conn, market, now=now)
    assert window.required_days == 3.0 and not window.met
    (status,) = [s for s in market_status(conn, now=now) if s["market"] == market.key]
    assert status["stability"]["elapsed_days"] == pytest.approx(1.0, abs=0.01) and not status["stability"]["met"]
    text = "\n".join(status_lines([status], switches.switch_states(conn)))
    assert "stability       1.0 of 3 day(s) since switch auto_promotion set to true by cli:bob" in text
    assert "auto promotion waits (STABILITY_WINDOW_NOT_MET)" in text
    (later,) = [s for s in market_status(conn, now=now + timedelta(days=3)) if s["market"] == market.key]
    assert later["stability"]["met"]
    monkeypatch.setenv("RL_STABILITY_DAYS", "soon")
    with pytest.raises(Exception, match="RL_STABILITY_DAYS='soon' is not a number"):
        market_stability(conn, market)
