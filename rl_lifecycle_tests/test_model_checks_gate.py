"""A model version whose blocking checks did not pass is never judged fit, nor the challenger (issue 22, point 5).

The checks' outcome lives on the version (MLflow tags `check.model_lineage`, `check.model_reproducible`,
written by the checks); `promotion.service` reads it. Real PostgreSQL and a real MLflow.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.models.tracking import CHALLENGER, open_registry, registered_model_name
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.gates import PROMOTED, REJECTED, evaluate
from rl_lifecycle.promotion.service import decide, manual_promote
from rl_lifecycle.windows import to_us
from rl_lifecycle_tests.test_models import SCHEME, WINDOW, tiny_spec
from rl_lifecycle_tests.test_promotion import POLICY, register, report

CODE = "MODEL_CHECKS_NOT_PASSED"
RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"


@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def market() -> Market:
    return Market(f"G{uuid.uuid4().hex[:12].upper()}", "1h")


def _challenger(registry, market: Market) -> int | None:
    aliases = registry.client.get_registered_model(registered_model_name(market)).aliases or {}
    return int(aliases[CHALLENGER]) if CHALLENGER in aliases else None


def test_an_unchecked_version_is_rejected_and_never_gets_the_challenger_alias(conn, registry, market):
    from rl_lifecycle.models.checks import ModelCheck, record_check

    version = register(registry, market, checked=False)  # as a training killed during its checks leaves it
    assert CHALLENGER not in registry.version(market, version).aliases

    result = decide(conn, registry, market, version, report([0.03] * 3), None, POLICY, True, "dagster run test")
    assert result.decision.outcome == REJECTED and result.decision.reason_codes == (CODE,)  # every other gate passed
    gate = next(g for g in result.decision.gates if g.code == CODE)
    assert gate.details == {"model_lineage": "not run", "model_reproducible": "not run"}
    assert result.record.action == audit.REJECT and CODE in result.record.reason_codes
    assert audit.current_champion(conn, market.key) is None and _challenger(registry, market) is None
    with pytest.raises(UserInputError, match=f"failed its gates \\({CODE}\\)"):
        manual_promote(conn, registry, market, version, "looks fine", "alice")

    # one check passed, the other failed: still no alias, still rejected
    record_check(conn, registry, market, ModelCheck(True, "ok", [], version), "model_lineage")
    record_check(conn, registry, market, ModelCheck(False, "replay differs", [], version), "model_reproducible")
    assert _challenger(registry, market) is None
    again = decide(conn, registry, market, version, report([0.03] * 3), None, POLICY, True, "dagster run test")
    assert again.decision.reason_codes == (CODE,)
    assert next(g for g in again.decision.gates if g.code == CODE).details == {
        "model_lineage": "passed", "model_reproducible": "failed"}

    # both passed (a re-run of the checks): the version becomes the challenger and may be promoted
    record_check(conn, registry, market, ModelCheck(True, "same actions", [], version), "model_reproducible")
    assert _challenger(registry, market) == version
    promoted = decide(conn, registry, market, version, report([0.03] * 3), None, POLICY, True, "dagster run test")
    assert promoted.decision.outcome == PROMOTED and audit.current_champion(conn, market.key) == version


def test_a_pending_version_whose_checks_do_not_pass_is_refused_by_manual_promotion(conn, registry, market):
    from rl_lifecycle.models.checks import ModelCheck, record_check

    champion, pending = register(registry, market), register(registry, market)
    good = report([0.03] * 3)
    decide(conn, registry, market, champion, good, None, POLICY, True, "test")
    waiting = decide(conn, registry, market, pending, report([0.05] * 3), good, POLICY, False, "test")
    assert waiting.record.action == audit.PENDING
    # its checks are run again later and one fails: the pending approval no longer stands
    record_check(conn, registry, market, ModelCheck(False, "lineage differs", [], pending), "model_lineage")
    with pytest.raises(UserInputError, match=f"{CODE}.*--override"):
        manual_promote(conn, registry, market, pending, "reviewed", "alice")
    forced = manual_promote(conn, registry, market, pending, "reviewed, replay fixed", "alice", override=True)
    assert forced.record.override and audit.current_champion(conn, market.key) == pending


def test_the_gate_is_a_stable_reason_code_documented_in_the_runbook():
    from rl_lifecycle.promotion.gates import ABSOLUTE_CODES, REASON_CODES

    assert CODE in REASON_CODES and CODE in ABSOLUTE_CODES  # applies with or without a champion
    table = [line for line in RUNBOOK.read_text().splitlines() if line.startswith("| `")]
    documented = {code for line in table for code in re.findall(r"`([A-Z_]+)`", line.split("|")[1])}
    assert set(REASON_CODES) <= documented, set(REASON_CODES) - documented
    # pure: given the recorded outcomes, the gate passes only when every check passed
    decision = evaluate(report([0.03] * 3), None, POLICY, True,
                        model_checks={"model_lineage": "passed", "model_reproducible": None})
    assert decision.outcome == REJECTED and decision.reason_codes == (CODE,)
    assert evaluate(report([0.03] * 3), None, POLICY, True,
                    model_checks={"model_lineage": "passed", "model_reproducible": "passed"}).outcome == PROMOTED


def test_the_core_names_the_blocking_checks_of_challenger_model():
    from rl_lifecycle.models.checks import MODEL_CHECKS
    from rl_lifecycle.orchestration.assets.models import MODEL_CHECKS as DAGSTER_CHECKS

    names = {key.name for check in DAGSTER_CHECKS for key in check.check_keys}
    assert names == set(MODEL_CHECKS)
    assert all(spec.blocking for check in DAGSTER_CHECKS for spec in check.check_specs)


@pytest.mark.slow
def test_a_training_killed_during_its_checks_leaves_a_version_no_decision_accepts(conn, registry, tmp_path):
    """`train_challenger` is what `challenger_model` runs; its checks run after it. Stopping there (as a kill
    during the checks does) leaves a registered version without the alias, which the decision rejects; the
    checks, run later, record their outcome and make it the challenger."""
    from rl_lifecycle.models.service import check_lineage, check_reproducible, train_challenger

    market = Market(f"K{uuid.uuid4().hex[:10].upper()}", "1h")
    ingest_synthetic(conn, market, to_us("2023-12-01"), to_us("2024-04-01"), seed=7)
    build_dataset(conn, spec_ending_at(market, WINDOW, SCHEME, "ta_v2", 3), tmp_path / "datasets", load_feature_set("ta_v2"))
    trained = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    version = trained.version.version
    assert _challenger(registry, market) is None
    rejected = decide(conn, registry, market, version, report([0.03] * 3), None, POLICY, True, "dagster run test")
    assert rejected.decision.reason_codes == (CODE,)

    assert check_lineage(conn, registry, market, WINDOW).passed
    assert check_reproducible(conn, registry, market, WINDOW).passed
    assert _challenger(registry, market) == version
    accepted = decide(conn, registry, market, version, report([0.03] * 3), None, POLICY, True, "dagster run test")
    assert accepted.decision.outcome == PROMOTED
