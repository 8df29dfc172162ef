"""Promotion: gate policy, pure gates (property-tested), the append-only audit, the lock, and the use cases
against a real PostgreSQL and a real MLflow."""

from __future__ import annotations

import hashlib
import math
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.report import FoldRecord
from rl_lifecycle.evaluation.store import EvaluationReport, read_report, write_report
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.checks import MODEL_CHECKS, PASSED, check_tag
from rl_lifecycle.models.tracking import CHAMPION, open_registry, registered_model_name
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord, market_decision_lock
from rl_lifecycle.promotion.gates import (
    ABSOLUTE_CODES,
    DSR_BELOW_MIN,
    FOLD_FAILED,
    MANUAL_APPROVAL_REQUIRED,
    NOT_BETTER_THAN_BUY_AND_HOLD,
    PAIRED_TEST_NOT_SIGNIFICANT,
    PBO_ABOVE_MAX,
    PENDING_MANUAL,
    PROMOTED,
    PSR_BELOW_MIN,
    REJECTED,
    RETURN_DELTA_BELOW_MIN,
    SHARPE_DELTA_BELOW_MIN,
    TOO_FEW_FOLD_WINS,
    TOO_FEW_TRADES,
    FoldMismatchError,
    FoldOutcome,
    ReportSummary,
    evaluate,
)
from rl_lifecycle.promotion.policy import DEFAULT_POLICY_PATH, GatePolicy, load_policy, parse_policy
from rl_lifecycle.promotion.service import (
    PREVIOUS_CHAMPION,
    StaleChampionError,
    decide,
    manual_promote,
    reconcile_aliases,
    rollback,
)

# The shipped policy with its fold-count gates switched on (they are off by default since the
# calibration; these tests exercise them too).
POLICY = parse_policy({"min_median_sharpe_delta": 0.0, "min_median_return_delta": 0.0,
                       "min_fold_wins": {"fraction": 0.5}})


def fold(index: int, total_return: float, sharpe: float | None = None, drawdown: float = 0.05, trades: int = 5,
         hold: float = -0.01, status: str = "ok", shift: int = 0) -> FoldOutcome:
    metrics = {} if status != "ok" else {
        "total_return": total_return, "sharpe": total_return * 10 if sharpe is None else sharpe,
        "max_drawdown": drawdown, "trades": trades,
    }
    baselines = {} if status != "ok" else {"flat": {"total_return": 0.0}, "buy_and_hold": {"total_return": hold}}
    start = 1000 + 100 * index + shift
    return FoldOutcome(index, status, (start, start + 100), metrics, baselines, (start * 10**9, (start + 100) * 10**9))


BARS_PER_FOLD = 100


def bar_returns(total_return: float, fold_index: int, contender: int) -> np.ndarray:
    """A fold's per-bar net returns compounding to `total_return`: the market's moves on the fold (shared by
    every contender, as on the same test bars) plus a little of the contender's own noise."""
    market = np.random.default_rng(fold_index).normal(0.0, 0.004, BARS_PER_FOLD)
    own = np.random.default_rng(1000 + contender).normal(0.0, 0.0005, BARS_PER_FOLD)
    shape = market + own - (market + own).mean()
    return shape + ((1.0 + total_return) ** (1.0 / BARS_PER_FOLD) - 1.0)


def report(returns, report_id: int = 1, psr: float | None = 0.99, dsr: float | None = 0.97, **fold_args) -> ReportSummary:
    return ReportSummary(report_id, tuple(fold(i, r, **fold_args) for i, r in enumerate(returns)),
                         {"psr": psr, "dsr": dsr},
                         returns={i: bar_returns(r, i, report_id or 0) for i, r in enumerate(returns)})


# -- policy ------------------------------------------------------------------------------------------
def test_the_default_policy_loads_and_every_field_is_documented():
    assert load_policy() == GatePolicy()  # the YAML and the model's defaults agree
    text = DEFAULT_POLICY_PATH.read_text()
    for name in GatePolicy.model_fields:
        line = next(line for line in text.splitlines() if line.startswith(name + ":"))
        assert "#" in line or name == "min_fold_wins", f"{name} has no comment"


def test_a_policy_with_an_unknown_or_bad_key_is_refused_by_name(tmp_path):
    with pytest.raises(UserInputError, match="unknown key 'min_sharp_delta'"):
        parse_policy({"min_sharp_delta": 0.1})
    with pytest.raises(UserInputError, match="min_psr.*1.5"):
        parse_policy({"min_psr": 1.5})
    with pytest.raises(UserInputError, match="exactly one of fraction or count"):
        parse_policy({"min_fold_wins": {"fraction": 0.5, "count": 2}})
    path = tmp_path / "policy.yaml"
    path.write_text("min_psr: 0.5\nmin_dsr: null\nmin_fold_wins: {count: 2}\n")
    policy = load_policy(path)
    assert policy.min_psr == 0.5 and policy.min_dsr is None and policy.min_fold_wins.required(5) == 2
    with pytest.raises(UserInputError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


# -- gates -------------------------------------------------------------------------------------------
def test_a_clearly_better_challenger_passes_every_gate():
    champion = report([0.01, 0.02, 0.00, 0.01], report_id=1)
    challenger = report([0.03, 0.04, 0.02, 0.02], report_id=2)
    decision = evaluate(challenger, champion, POLICY, auto_promotion=True)
    assert decision.outcome == PROMOTED and decision.reason_codes == () and decision.gates_passed
    assert {g.code for g in decision.gates} >= {SHARPE_DELTA_BELOW_MIN, TOO_FEW_FOLD_WINS}
    pending = evaluate(challenger, champion, POLICY, auto_promotion=False)
    assert pending.outcome == PENDING_MANUAL and pending.reason_codes == (MANUAL_APPROVAL_REQUIRED,)


def test_the_paired_test_reads_every_test_bar_and_fails_without_them():
    champion = report([0.01, 0.02, 0.00, 0.01], report_id=1)
    challenger = report([0.03, 0.04, 0.02, 0.02], report_id=2)
    gate = next(g for g in evaluate(challenger, champion, POLICY, True).gates if g.code == PAIRED_TEST_NOT_SIGNIFICANT)
    assert gate.passed and gate.comparison == "<=" and gate.threshold == POLICY.paired_test.alpha
    details = gate.to_json()["details"]
    assert details["statistic"] == "sharpe" and details["n_bars"] == 4 * BARS_PER_FOLD
    assert details["sharpe_p_value"] == gate.value <= 0.05 and details["mean_p_value"] <= 0.05

    # the same fold medians, but per-bar noise of the same size as the edge: not significant
    noisy = ReportSummary(3, challenger.folds, challenger.aggregate, returns={
        i: r + np.random.default_rng(i).normal(0.0, 0.02, len(r)) for i, r in challenger.returns.items()})
    decision = evaluate(noisy, champion, POLICY, True)
    assert decision.outcome == REJECTED and PAIRED_TEST_NOT_SIGNIFICANT in decision.reason_codes

    # no per-bar returns for a fold: the test cannot run, and says so
    missing = ReportSummary(4, challenger.folds, challenger.aggregate, returns={0: challenger.returns[0]})
    gate = next(g for g in evaluate(missing, champion, POLICY, True).gates if g.code == PAIRED_TEST_NOT_SIGNIFICANT)
    assert not gate.passed and math.isnan(gate.value) and "missing" in gate.description
    off = parse_policy({"paired_test": None})
    assert PAIRED_TEST_NOT_SIGNIFICANT not in {g.code for g in evaluate(missing, champion, off, True).gates}


def test_a_worse_challenger_is_rejected_with_the_reasons():
    champion = report([0.03, 0.04, 0.02, 0.02])
    challenger = report([0.01, 0.02, 0.00, 0.01], trades=0, psr=0.5)
    decision = evaluate(challenger, champion, POLICY, auto_promotion=True)
    assert decision.outcome == REJECTED
    assert {SHARPE_DELTA_BELOW_MIN, RETURN_DELTA_BELOW_MIN, TOO_FEW_FOLD_WINS, TOO_FEW_TRADES,
            PSR_BELOW_MIN} <= set(decision.reason_codes)
    by_code = {g.code: g for g in decision.gates}
    assert by_code[RETURN_DELTA_BELOW_MIN].value == pytest.approx(-0.02) and by_code[TOO_FEW_FOLD_WINS].value == 0


def test_bootstrap_applies_only_absolute_gates_and_a_failed_fold_rejects():
    good = report([0.02, 0.03, 0.01])
    decision = evaluate(good, None, POLICY, auto_promotion=True)
    assert decision.bootstrap and decision.outcome == PROMOTED
    assert {g.code for g in decision.gates} <= set(ABSOLUTE_CODES)
    broken = ReportSummary(3, good.folds[:2] + (fold(2, 0.0, status="failed"),), good.aggregate)
    assert FOLD_FAILED in evaluate(broken, None, POLICY, auto_promotion=True).reason_codes


def test_nan_fails_its_gate_and_never_passes_silently():
    champion = report([0.01, 0.01, 0.01])
    challenger = ReportSummary(2, (fold(0, 0.03), fold(1, 0.03, sharpe=math.nan), fold(2, 0.03)), {"psr": None, "dsr": math.nan})
    decision = evaluate(challenger, champion, POLICY, auto_promotion=True)
    failed = {g.code for g in decision.failed_gates}
    assert {SHARPE_DELTA_BELOW_MIN, PSR_BELOW_MIN, DSR_BELOW_MIN} <= failed
    assert decision.outcome == REJECTED
    assert all(g.to_json()["value"] is None for g in decision.gates if g.code in (PSR_BELOW_MIN, DSR_BELOW_MIN))
    # a missing baseline is not "beaten"
    no_hold = ReportSummary(4, tuple(FoldOutcome(f.index, f.status, f.test_range, f.metrics, {"flat": {"total_return": 0}},
                                                 f.test_span) for f in champion.folds), {"psr": 0.99, "dsr": 0.9})
    assert NOT_BETTER_THAN_BUY_AND_HOLD in evaluate(no_hold, None, POLICY, True).reason_codes


def test_reports_on_different_folds_are_refused():
    champion = report([0.01, 0.01, 0.01])
    shifted = ReportSummary(2, tuple(fold(i, 0.03, shift=7) for i in range(3)), {"psr": 0.99, "dsr": 0.9})
    with pytest.raises(FoldMismatchError, match="fold 0"):
        evaluate(shifted, champion, POLICY, auto_promotion=True)
    with pytest.raises(FoldMismatchError, match=r"\[0, 1\]"):
        evaluate(report([0.03, 0.03]), champion, POLICY, auto_promotion=True)


_value = st.one_of(st.floats(-0.5, 0.5, allow_nan=False), st.just(math.nan), st.none())


@st.composite
def fold_reports(draw, n_folds: int, report_id: int) -> ReportSummary:
    folds = []
    for index in range(n_folds):
        status = draw(st.sampled_from(["ok", "ok", "ok", "failed"]))
        start = 100 * index
        metrics = {} if status != "ok" else {
            "total_return": draw(_value), "sharpe": draw(st.one_of(st.floats(-5, 5), st.just(math.nan))),
            "max_drawdown": draw(st.one_of(st.floats(0, 0.6), st.just(math.nan))),
            "trades": draw(st.integers(0, 20)),
        }
        baselines = {} if status != "ok" else {
            "flat": {"total_return": 0.0}, "buy_and_hold": {"total_return": draw(_value)},
        }
        folds.append(FoldOutcome(index, status, (start, start + 100), metrics, baselines, (start, start + 100)))
    aggregate = {"psr": draw(st.one_of(st.floats(0, 1), st.just(math.nan), st.none())),
                 "dsr": draw(st.one_of(st.floats(0, 1), st.just(math.nan), st.none()))}
    return ReportSummary(report_id, tuple(folds), aggregate)


@st.composite
def report_pairs(draw):
    n = draw(st.integers(1, 6))
    challenger = draw(fold_reports(n, 2))
    champion = draw(st.one_of(st.none(), fold_reports(n, 1)))
    return challenger, champion


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report_pairs(), st.booleans(), st.sampled_from([POLICY, GatePolicy(min_fold_wins={"count": 2}, min_dsr=None)]))
def test_gate_properties_over_generated_reports(pair, auto_promotion, policy):
    challenger, champion = pair
    decision = evaluate(challenger, champion, policy, auto_promotion)
    failed = [g.code for g in decision.gates if not g.passed]
    if decision.outcome == PROMOTED:
        assert auto_promotion and decision.gates_passed and decision.reason_codes == ()
    if decision.outcome == REJECTED:
        assert decision.reason_codes and set(decision.reason_codes) == set(failed)
    if decision.outcome == PENDING_MANUAL:
        assert not auto_promotion and decision.gates_passed
    assert (decision.outcome == REJECTED) == bool(failed)
    if champion is None:
        assert decision.bootstrap and {g.code for g in decision.gates} <= set(ABSOLUTE_CODES)
    for gate in decision.gates:
        if math.isnan(gate.value):
            # the one exception: no PBO where there is no choice among trials to overfit, said in its details
            not_computed = gate.code == PBO_ABOVE_MAX and gate.details.get("pbo") is None
            assert gate.passed == not_computed, gate


# -- audit table ---------------------------------------------------------------------------------------
def _a_record(market="AAAUSDT-1h", **fields) -> AuditRecord:
    return AuditRecord(**{"market": market, "action": audit.PROMOTE, "actor": "test", "challenger_version": 1,
                          "resulting_champion_version": 1, **fields})


def test_the_audit_refuses_update_delete_and_truncate(conn):
    written = audit.append(conn, _a_record(reason_codes=("X",), gates=[{"code": "X", "passed": True}]))
    assert written.id is not None and written.created_at is not None
    for statement in ("UPDATE promotion_audit SET actor = 'mallory'", "DELETE FROM promotion_audit",
                      "TRUNCATE promotion_audit"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
    assert [r.actor for r in audit.history(conn, "AAAUSDT-1h")] == ["test"]
    with pytest.raises(psycopg.errors.CheckViolation):  # a promotion must name its champion
        conn.execute("INSERT INTO promotion_audit (market, action, actor) VALUES ('A-1h', 'promote', 't')")
    with pytest.raises(UserInputError, match="action 'promoted'"):
        audit.append(conn, _a_record(action="promoted"))


def test_the_fixture_still_empties_the_audit_between_tests(conn):
    # runs after the test above: the replica-role TRUNCATE in conftest skips the append-only triggers
    assert conn.execute("SELECT count(*) FROM promotion_audit").fetchone()[0] == 0


def test_the_champion_chain_follows_promotions_and_rollbacks(conn):
    market = "CHAINUSDT-1h"
    for action, version in [(audit.PROMOTE, 1), (audit.REJECT, None), (audit.PROMOTE, 2), (audit.MANUAL_PROMOTE, 3)]:
        audit.append(conn, _a_record(market, action=action, challenger_version=version or 9,
                                     resulting_champion_version=version))
    assert audit.champion_chain(conn, market) == [1, 2, 3]
    audit.append(conn, _a_record(market, action=audit.ROLLBACK, resulting_champion_version=2))
    assert (audit.current_champion(conn, market), audit.previous_champion(conn, market)) == (2, 1)
    audit.append(conn, _a_record(market, action=audit.ROLLBACK, resulting_champion_version=1))
    assert (audit.current_champion(conn, market), audit.previous_champion(conn, market)) == (1, None)
    assert audit.current_champion(conn, "OTHERUSDT-1h") is None
    assert [r.action for r in audit.history(conn, market, limit=2)] == [audit.ROLLBACK, audit.ROLLBACK]


def test_two_holders_of_one_market_lock_never_interleave(database_url):
    events: list[str] = []
    barrier = threading.Barrier(2)

    def hold(name: str, market: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as connection:
            barrier.wait()
            with market_decision_lock(connection, market):
                events.append(f"{name} in")
                time.sleep(0.3)
                events.append(f"{name} out")

    threads = [threading.Thread(target=hold, args=(name, "LOCKUSDT-1h")) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.split()[1] for e in events] == ["in", "out", "in", "out"]
    assert events[0].split()[0] == events[1].split()[0]
    # another market's lock is independent: it does not wait
    with psycopg.connect(database_url, autocommit=True) as first, psycopg.connect(database_url, autocommit=True) as second:
        with market_decision_lock(first, "LOCKUSDT-1h"):
            assert second.execute("SELECT pg_try_advisory_lock(%s)", (audit.lock_key("LOCKUSDT-1h"),)).fetchone()[0] is False
            with market_decision_lock(second, "OTHERUSDT-1h"):
                pass


# -- use cases with MLflow -------------------------------------------------------------------------------
@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def market() -> Market:
    # MLflow's database outlives each test: a market of its own keeps registered versions apart
    return Market(f"P{uuid.uuid4().hex[:12].upper()}", "1h")


def register(registry, market: Market, dataset_hash: str = "d" * 64, feature_set: str = "ta_v2",
             checked: bool = True) -> int:
    """A registered version; `checked`: its blocking model checks are recorded as passed, as the
    `model_lineage` / `model_reproducible` checks record them (a decision needs them: MODEL_CHECKS_NOT_PASSED)."""
    run_id = registry.start_run(market, "promotion-test", {})
    registry.end_run(run_id)
    tags = {"market": market.key, "dataset_hash": dataset_hash, "feature_set": feature_set,
            "fingerprint": f"fp-{feature_set}"}
    version = registry.register(market, run_id, "model", tags).version
    if checked:
        for name in MODEL_CHECKS:
            registry.set_version_tag(market, version, check_tag(name), PASSED)
    return version


def aliases(registry, market: Market) -> dict[str, int]:
    model = registry.client.get_registered_model(registered_model_name(market))
    return {k: int(v) for k, v in (model.aliases or {}).items() if k in (CHAMPION, PREVIOUS_CHAMPION)}


def _equity_curve(total_return: float, fold_index: int, contender: int) -> str:
    """A fold equity curve file as reports keep them (only `equity` is read back)."""
    equity = 100_000.0 * np.cumprod(np.concatenate(([1.0], 1.0 + bar_returns(total_return, fold_index, contender))))
    path = Path(tempfile.mkdtemp(prefix="rl-test-curve-")) / f"fold-{fold_index}.parquet"
    pl.DataFrame({"equity": equity}).write_parquet(path)
    return path.as_uri()


def stored_report(conn, market: Market, returns, spec_hash: str, dataset_hash: str = "d" * 64) -> int:
    contender = int(hashlib.sha256(spec_hash.encode()).hexdigest()[:6], 16)
    folds = [FoldRecord(i, ((0, 100 * (i + 1)),), (100 * (i + 1), 100 * (i + 2)), ((0, 1),), (10 * i, 10 * i + 10),
                        "ok", {"total_return": r, "sharpe": r * 10, "max_drawdown": 0.05, "trades": 4},
                        {"flat": {"total_return": 0.0}, "buy_and_hold": {"total_return": -0.01}},
                        equity_curve_uri=_equity_curve(r, i, contender))
             for i, r in enumerate(returns)]
    return write_report(conn, EvaluationReport(
        market=market.key, spec={}, model_spec_hash=spec_hash, dataset_hash=dataset_hash, fold_config=FoldConfig(),
        label_horizon=1, strict=True, status="ok", aggregates={"psr": 0.99, "dsr": 0.97}, timings={}, folds=folds,
    ))


def test_decisions_move_aliases_and_rollback_restores_both(conn, registry, market):
    versions = [register(registry, market) for _ in range(3)]
    reports = [read_report(conn, stored_report(conn, market, [0.01 * (k + 1)] * 3, f"spec-{k}")) for k in range(3)]

    first = decide(conn, registry, market, versions[0], reports[0], None, POLICY, True, "test")
    assert first.decision.bootstrap and first.record.action == audit.PROMOTE
    assert first.record.evaluation_report_id == reports[0].id and first.record.feature_set == "ta_v2"
    assert aliases(registry, market) == {CHAMPION: versions[0]}
    decide(conn, registry, market, versions[1], reports[1], reports[0], POLICY, True, "test")
    third = decide(conn, registry, market, versions[2], reports[2], reports[1], POLICY, True, "test",
                   evaluated_champion_version=versions[1])
    assert third.record.champion_version == versions[1] and third.record.resulting_champion_version == versions[2]
    assert aliases(registry, market) == {CHAMPION: versions[2], PREVIOUS_CHAMPION: versions[1]}

    restored = rollback(conn, registry, market, "live drawdown", "ops")
    assert restored.record.action == audit.ROLLBACK and restored.record.note == "live drawdown"
    assert aliases(registry, market) == {CHAMPION: versions[1], PREVIOUS_CHAMPION: versions[0]}
    assert audit.current_champion(conn, market.key) == versions[1]
    rollback(conn, registry, market, "further back", "ops")
    assert aliases(registry, market) == {CHAMPION: versions[0]}
    with pytest.raises(UserInputError, match="no previous champion"):
        rollback(conn, registry, market, "again", "ops")
    with pytest.raises(UserInputError, match="reason is empty"):
        rollback(conn, registry, market, "  ", "ops", to_version=versions[2])
    named = rollback(conn, registry, market, "named", "ops", to_version=versions[2])
    assert named.champion == versions[2] and aliases(registry, market)[PREVIOUS_CHAMPION] == versions[0]
    assert [r.action for r in audit.history(conn, market.key)][:3] == [audit.ROLLBACK] * 3


def test_a_rejection_is_recorded_and_moves_nothing(conn, registry, market):
    champion, challenger = register(registry, market), register(registry, market)
    good = report([0.03, 0.03, 0.03], report_id=None)
    decide(conn, registry, market, champion, good, None, POLICY, True, "test")
    result = decide(conn, registry, market, challenger, report([0.0, 0.0, 0.0]), good, POLICY, True, "test")
    assert result.decision.outcome == REJECTED and result.record.action == audit.REJECT
    assert set(result.record.reason_codes) == set(result.decision.reason_codes)
    assert result.record.gates == tuple(result.decision.gates_json())
    assert result.record.resulting_champion_version == champion and aliases(registry, market) == {CHAMPION: champion}
    with pytest.raises(UserInputError, match="give its report"):
        decide(conn, registry, market, challenger, good, None, POLICY, True, "test")
    with pytest.raises(StaleChampionError, match="compared with champion"):
        decide(conn, registry, market, challenger, good, good, POLICY, True, "test", evaluated_champion_version=challenger)


def test_manual_promotion_refuses_failed_gates_without_override(conn, registry, market):
    champion, rejected, pending, untested = (register(registry, market) for _ in range(4))
    good = report([0.03, 0.03, 0.03])
    decide(conn, registry, market, champion, good, None, POLICY, True, "test")
    decide(conn, registry, market, rejected, report([0.0, 0.0, 0.0]), good, POLICY, False, "test")
    waiting = decide(conn, registry, market, pending, report([0.05, 0.05, 0.05]), good, POLICY, False, "test")
    assert waiting.decision.outcome == PENDING_MANUAL and waiting.record.action == audit.PENDING
    assert aliases(registry, market) == {CHAMPION: champion}

    with pytest.raises(UserInputError, match=f"version {rejected} failed its gates.*SHARPE_DELTA_BELOW_MIN"):
        manual_promote(conn, registry, market, rejected, "looks fine", "alice")
    with pytest.raises(UserInputError, match="no recorded gate decision"):
        manual_promote(conn, registry, market, untested, "looks fine", "alice")
    assert audit.current_champion(conn, market.key) == champion

    approved = manual_promote(conn, registry, market, pending, "reviewed the folds", "alice")
    assert approved.record.action == audit.MANUAL_PROMOTE and not approved.record.override
    assert aliases(registry, market) == {CHAMPION: pending, PREVIOUS_CHAMPION: champion}
    forced = manual_promote(conn, registry, market, rejected, "regime change", "bob", override=True)
    assert forced.record.override and forced.record.actor == "bob" and forced.record.reason_codes
    assert aliases(registry, market) == {CHAMPION: rejected, PREVIOUS_CHAMPION: pending}
    with pytest.raises(UserInputError, match="no model version 99"):
        manual_promote(conn, registry, market, 99, "typo", "bob", override=True)


def test_aliases_heal_from_the_audit(conn, registry, market):
    first, second = register(registry, market), register(registry, market)
    decide(conn, registry, market, first, report([0.03] * 3), None, POLICY, True, "test")
    # a crash after the audit insert and before the alias move leaves MLflow behind the audit
    audit.append(conn, AuditRecord(market.key, audit.MANUAL_PROMOTE, "alice", challenger_version=second,
                                   champion_version=first, resulting_champion_version=second, override=True))
    name = registered_model_name(market)
    registry.client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(second))  # and a stray alias
    assert aliases(registry, market) == {CHAMPION: first, PREVIOUS_CHAMPION: second}
    changes = reconcile_aliases(registry, conn, market)
    assert changes == {CHAMPION: (first, second), PREVIOUS_CHAMPION: (second, first)}
    assert aliases(registry, market) == {CHAMPION: second, PREVIOUS_CHAMPION: first}
    assert reconcile_aliases(registry, conn, market) == {}


def test_two_concurrent_decisions_for_one_market_are_serialised(database_url, conn, registry, market):
    champion, a, b = (register(registry, market) for _ in range(3))
    baseline = report([0.01] * 3)
    decide(conn, registry, market, champion, baseline, None, POLICY, True, "test")
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def run(version: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as connection:
            barrier.wait()
            try:
                outcomes[version] = decide(connection, registry, market, version, report([0.05] * 3), baseline, POLICY,
                                           True, f"thread-{version}", evaluated_champion_version=champion)
            except StaleChampionError as exc:
                outcomes[version] = exc

    threads = [threading.Thread(target=run, args=(v,)) for v in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [v for v, o in outcomes.items() if not isinstance(o, Exception)]
    lost = [v for v, o in outcomes.items() if isinstance(o, StaleChampionError)]
    # without the lock both would read the same champion and both promote over it
    assert len(won) == 1 and len(lost) == 1, outcomes
    promotions = [r for r in audit.history(conn, market.key) if r.action == audit.PROMOTE]
    assert [r.champion_version for r in reversed(promotions)] == [None, champion]
    assert aliases(registry, market) == {CHAMPION: won[0], PREVIOUS_CHAMPION: champion}


def test_the_dsr_gate_deflates_by_the_markets_trials_at_decision_time():
    """Bailey & Lopez de Prado (2014)'s example through the gate: a report with daily SR 2.5/sqrt(250) over
    1250 days, skew -3, kurtosis 10, against 100 trials whose Sharpe ratios vary by 0.5/250: DSR 0.9004.
    The DSR stored with the report (deflated when it was assembled) is not what the gate reads."""
    from rl_lifecycle.evaluation.metrics import Trials

    z = np.random.default_rng(5).normal(size=100)
    sharpes = (z - z.mean()) / z.std(ddof=1) * math.sqrt(0.5 / 250)
    aggregate = {"sharpe_per_bar": 2.5 / math.sqrt(250), "n_returns": 1250, "skew": -3.0, "kurtosis": 10.0,
                 "dsr": 0.01, "psr": 0.99}
    now = ReportSummary(1, report([0.02]).folds, aggregate, trials=Trials.of(100, sharpes))
    gate = next(g for g in evaluate(now, None, POLICY, True).gates if g.code == DSR_BELOW_MIN)
    assert gate.value == pytest.approx(0.9004, abs=1e-3)
    assert gate.details["n_trials"] == 100 and gate.details["trial_sharpe_variance"] == pytest.approx(0.5 / 250)
    stored = ReportSummary(1, report([0.02]).folds, aggregate)  # no trials known: the report's own DSR
    assert next(g for g in evaluate(stored, None, POLICY, True).gates if g.code == DSR_BELOW_MIN).value == 0.01
