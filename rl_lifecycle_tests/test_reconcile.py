"""The promotion audit is the truth and the MLflow aliases follow it without help (issue 22, point 4).

Real PostgreSQL and a real MLflow. The gap a killed `promote` or `rollback` leaves is made for real:
the audit row is appended as the use case appends it, and the alias move that would follow is left out.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from dagster import SkipReason, build_sensor_context

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.tracking import CHALLENGER, CHAMPION, open_registry
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord
from rl_lifecycle.promotion.service import PREVIOUS_CHAMPION, decide, manual_promote
from rl_lifecycle_tests.cli_helpers import run_cli
from rl_lifecycle_tests.test_promotion import POLICY, aliases, register, report


@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def market() -> Market:
    # MLflow's database outlives each test: a market of its own keeps registered versions apart
    return Market(f"R{uuid.uuid4().hex[:12].upper()}", "1h")


def _killed_promotion(conn, market: Market, version: int, champion: int | None) -> AuditRecord:
    """What `manual_promote` writes before it moves the aliases: a kill right after leaves only this."""
    return audit.append(conn, AuditRecord(
        market.key, audit.MANUAL_PROMOTE, "alice", challenger_version=version, champion_version=champion,
        resulting_champion_version=version, note="reviewed",
    ))


def _with_champion(conn, registry, market: Market, n: int = 2) -> list[int]:
    """`n` checked versions; the first promoted by a bootstrap decision, the second pending manual approval."""
    versions = [register(registry, market) for _ in range(n)]
    good = report([0.03] * 3)
    decide(conn, registry, market, versions[0], good, None, POLICY, True, "test")
    decide(conn, registry, market, versions[1], report([0.05] * 3), good, POLICY, False, "test")
    return versions


def test_reconcile_heals_a_gap_and_says_what_it_changed(conn, registry, market, capsys, monkeypatch):
    first, second = _with_champion(conn, registry, market)
    _killed_promotion(conn, market, second, first)
    assert aliases(registry, market) == {CHAMPION: first}  # MLflow behind the audit

    code, out, err = run_cli(capsys, monkeypatch, "reconcile", "--market", market.key, "--json")
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["market"] == market.key and result["error"] is None
    assert result["changes"] == {CHAMPION: {"before": first, "after": second},
                                 PREVIOUS_CHAMPION: {"before": None, "after": first},
                                 # and `challenger` where the checks say: the newest checked version
                                 CHALLENGER: {"before": None, "after": second}}
    assert aliases(registry, market) == {CHAMPION: second, PREVIOUS_CHAMPION: first}

    code, out, _ = run_cli(capsys, monkeypatch, "reconcile", "--market", market.key)
    assert code == 0 and "aliases in agreement" in out and f"champion=v{second}" in out
    # every market when none is named: this one (it has an audit) among them
    code, out, _ = run_cli(capsys, monkeypatch, "reconcile", "--json")
    assert code == 0 and market.key in {r["market"] for r in json.loads(out)}


def test_rerunning_a_killed_promote_completes_it(conn, registry, market, capsys, monkeypatch):
    first, second = _with_champion(conn, registry, market)
    written = _killed_promotion(conn, market, second, first)
    rows = len(audit.history(conn, market.key))

    code, out, err = run_cli(capsys, monkeypatch, "promote", "--market", market.key, "--version", str(second),
                             "--reason", "reviewed")
    assert code == 0, (out, err)
    assert "completed the manual promote the audit already recorded" in out and f"audit #{written.id}" in out
    assert aliases(registry, market) == {CHAMPION: second, PREVIOUS_CHAMPION: first}
    assert len(audit.history(conn, market.key)) == rows  # nothing recorded twice

    # once more, with nothing left to complete: still no error, nothing recorded
    code, out, _ = run_cli(capsys, monkeypatch, "promote", "--market", market.key, "--version", str(second),
                           "--reason", "again")
    assert code == 0 and "already the champion" in out and "nothing to do" in out
    assert len(audit.history(conn, market.key)) == rows


def test_rerunning_a_killed_rollback_completes_it_instead_of_rolling_back_again(conn, registry, market, capsys,
                                                                                monkeypatch):
    first, second = _with_champion(conn, registry, market)
    manual_promote(conn, registry, market, second, "reviewed", "alice")
    assert aliases(registry, market) == {CHAMPION: second, PREVIOUS_CHAMPION: first}
    # what `rollback` writes before it moves the aliases
    audit.append(conn, AuditRecord(market.key, audit.ROLLBACK, "ops", challenger_version=first,
                                   champion_version=second, resulting_champion_version=first, note="drawdown"))
    rows = len(audit.history(conn, market.key))

    code, out, err = run_cli(capsys, monkeypatch, "rollback", "--market", market.key, "--reason", "drawdown")
    assert code == 0, (out, err)
    assert "completed the rollback the audit already recorded" in out
    assert audit.current_champion(conn, market.key) == first and len(audit.history(conn, market.key)) == rows
    assert aliases(registry, market) == {CHAMPION: first}


def test_the_automatic_decision_reconciles_first_instead_of_failing(conn, registry, market):
    first, second = _with_champion(conn, registry, market)
    _killed_promotion(conn, market, second, first)
    # promotion_decision of the second version's partition again (as `partition_reports` gives it: the
    # audit's champion is the challenger itself, so there is no champion report)
    result = decide(conn, registry, market, second, report([0.05] * 3), None, POLICY, False,
                    "dagster run test", evaluated_champion_version=second)
    assert result.completed and result.decision is None and result.champion == second
    assert result.alias_changes == {CHAMPION: (first, second), PREVIOUS_CHAMPION: (None, first)}
    assert aliases(registry, market) == {CHAMPION: second, PREVIOUS_CHAMPION: first}

    # a decision on a new challenger while MLflow is behind: it heals before it acts, then decides
    third = register(registry, market)
    manual_promote(conn, registry, market, first, "back to v1 by hand", "bob", override=True)
    _killed_promotion(conn, market, second, first)  # the audit says v2 again; MLflow still says v1
    decided = decide(conn, registry, market, third, report([0.0] * 3), report([0.05] * 3), POLICY, True,
                     "dagster run test", evaluated_champion_version=second)
    assert decided.record.action == audit.REJECT and decided.record.champion_version == second
    assert decided.alias_changes[CHAMPION] == (first, second)
    assert aliases(registry, market)[CHAMPION] == second


def _sensor(instance):
    from rl_lifecycle.orchestration.automation.promotion import alias_reconcile_sensor
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    database = PostgresResource()
    with build_sensor_context(instance=instance, resources={
            "database": database, "mlflow": MlflowResource(database=database)}) as context:
        return alias_reconcile_sensor(context)


def test_a_daemon_tick_heals_the_gap_and_skips_a_market_whose_decision_is_in_progress(
        conn, registry, market, database_url, dagster_instance):
    first, second = _with_champion(conn, registry, market)
    _killed_promotion(conn, market, second, first)
    # a decision of this market holds its lock: the tick leaves it to that decision
    with psycopg.connect(database_url, autocommit=True) as other, audit.market_decision_lock(other, market.key):
        skipped = _sensor(dagster_instance)
        assert isinstance(skipped, SkipReason)
        assert aliases(registry, market) == {CHAMPION: first}
    result = _sensor(dagster_instance)
    assert isinstance(result, SkipReason) and f"{market.key}: champion v{first} -> v{second}" in result.skip_message
    assert aliases(registry, market) == {CHAMPION: second, PREVIOUS_CHAMPION: first}
    assert "aliases in agreement" in _sensor(dagster_instance).skip_message


def test_the_sensor_is_in_the_code_location():
    from rl_lifecycle.orchestration.definitions import defs

    assert defs.resolve_sensor_def("alias_reconcile_sensor").default_status.value == "RUNNING"
