"""End to end through Dagster: a market with a planted, learnable edge gets its challenger promoted; a
random walk's challenger is rejected with the reason codes of a policy without skill.

Both markets are imported from candle files (the validation every import goes through), their data
assets and then `challenger_model` -> `fold_report` -> `promotion_decision` are launched through the
workspace's code location, as the UI, schedules and sensors launch them, and the default gate policy
(`rl_lifecycle/promotion/policy.yaml`) judges them. Neither market has a champion, so those decisions
are bootstrap decisions: the absolute gates alone. Then a challenger without skill (a policy that has
barely trained) meets the edge market's new champion on the same folds and is rejected by the paired
test on every test bar.

Everything is seeded (candles, PPO, the env's episodes) and CPU training is deterministic, so each
outcome is a fixed fact of this test, not a probability. See `rl_lifecycle.candles.planted` for why the edge is
learnable and the walk is not.
"""

from __future__ import annotations

import uuid

import pytest
import yaml

from rl_lifecycle.candles.planted import oscillating_candles, random_walk_candles, write_candle_csv
from rl_lifecycle.candles.service import ingest_file
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.tracking import open_registry
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.launcher import materialize
from rl_lifecycle.orchestration.partitions import sync_market_partitions
from rl_lifecycle.promotion.audit import current_champion, history
from rl_lifecycle.promotion.gates import (
    ABSOLUTE_CODES,
    FOLD_FAILED,
    NO_COMPLETED_FOLDS,
    NOT_BETTER_THAN_BUY_AND_HOLD,
    NOT_BETTER_THAN_FLAT,
    PAIRED_TEST_NOT_SIGNIFICANT,
    PSR_BELOW_MIN,
)

pytestmark = pytest.mark.slow

WINDOW = "2024-03-01"  # the decision's window; the dataset spans Jan..Mar 2024 (three monthly windows)
HISTORY = ("2023-12-01", "2024-04-01")  # December is the feature warmup of January
DATA_ASSETS = ["candles", "feature_snapshots", "training_dataset"]
LIFECYCLE_ASSETS = ["challenger_model", "fold_report", "promotion_decision"]

# The test's own model spec, pinned here so that tuning the shipped specs cannot change these
# outcomes: the values of rl_lifecycle/models/specs/ppo_small.yaml when this test was written.
# 4096 PPO timesteps learn the planted edge in every walk-forward fold, fold 0 included (it trains on
# ~540 rows: folds=3 of the largest test ranges that still train each fold on at least as many rows).
SPEC = {
    "name": "planted_edge_ppo",
    "algorithm": "PPO",
    "policy": {"net_arch": [64, 64], "activation": "tanh"},
    "hyperparameters": {"learning_rate": 0.0003, "n_steps": 512, "batch_size": 64, "n_epochs": 4,
                        "gamma": 0.99, "ent_coef": 0.01},
    "total_timesteps": 4096,
    "seed": 7,
    "action_set": "long_flat",
    "cost_bps": 10.0,
    "episode_length": 256,
    "feature_set": "ta_v2",
}


def _market(prefix: str) -> Market:
    # MLflow's database outlives each test (only the domain tables are emptied): a market of its
    # own keeps this test's model versions apart from earlier runs'.
    return Market(f"{prefix}{uuid.uuid4().hex[:8].upper()}", "1h")


def _import(conn, market: Market, candles, tmp_path) -> None:
    path = write_candle_csv(tmp_path / "candles" / f"{market.key}.csv", candles)
    result = ingest_file(conn, market, path)
    assert not result.refused, result.report
    assert result.stats is not None and result.quarantined == 0


def test_a_planted_edge_is_promoted_and_a_random_walk_is_rejected(conn, database_url, rl_env, dagster_instance,
                                                                   tmp_path, monkeypatch):
    # the code server the runs launch from inherits this environment
    monkeypatch.setenv("RL_AUTO_PROMOTION", "true")
    edge, walk = _market("EDGE"), _market("WALK")
    # log price = 5% sine of period 32 bars + a 0.2%/bar random walk; i.i.d. N(0, 1%) log returns
    _import(conn, edge, oscillating_candles(*HISTORY, period=32, amplitude=0.05, noise=0.002, seed=1), tmp_path)
    _import(conn, walk, random_walk_candles(*HISTORY, sigma=0.01, seed=2), tmp_path)
    sync_market_partitions(dagster_instance, [edge.key, walk.key])
    keys = [f"{edge.key}|{WINDOW}", f"{walk.key}|{WINDOW}"]

    data = materialize(dagster_instance, defs, DATA_ASSETS, keys)
    assert [r.ok for r in data] == [True, True], [r.errors for r in data]

    spec_path = tmp_path / "planted_edge_ppo.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    runs = materialize(dagster_instance, defs, LIFECYCLE_ASSETS, keys,
                       run_config={"ops": {"challenger_model": {"config": {"spec": str(spec_path)}}}})
    assert [r.partition_key for r in runs] == keys
    assert all(r.ok for r in runs), [(r.partition_key, r.errors, [c for c in r.checks if not c.passed]) for r in runs]
    assert all(r.materialized == sorted(LIFECYCLE_ASSETS) for r in runs)
    edge_run, walk_run = runs

    # -- the edge: every absolute gate passes, the challenger becomes champion ----------------------
    decision = edge_run.metadata["promotion_decision"]
    assert decision["outcome"] == "promoted", (decision["reason_codes"], decision["gates"])
    assert decision["reason_codes"] == "-"
    assert decision["bootstrap"] is True
    assert decision["champion_before"] == "-"
    registry = open_registry(database_url)  # opened after the runs: they create MLflow's database themselves
    version = decision["challenger_version"]
    assert version == edge_run.metadata["challenger_model"]["model_version"]
    assert decision["champion_after"] == f"v{version}"
    assert (edge_run.metadata["fold_report"]["folds"], edge_run.metadata["fold_report"]["failed_folds"]) == (3, 0)
    assert current_champion(conn, edge.key) == version  # the audit, which decides who is champion
    assert registry.version(edge, "champion").version == version  # and the MLflow alias follows it
    assert all(g["passed"] for g in decision["gate_values"])
    assert decision["pbo"] is None and decision["pbo_detail"]["n_trials"] == 1  # nothing chosen among yet

    # -- the walk: rejected for want of skill, nothing moves ------------------------------------------
    decision = walk_run.metadata["promotion_decision"]
    assert decision["outcome"] == "rejected", decision["gates"]
    codes = decision["reason_codes"].split(", ")
    assert codes and set(codes) <= set(ABSOLUTE_CODES), codes  # bootstrap: absolute gates only
    # every fold was evaluated: rejected on its returns, not for a broken evaluation
    assert NO_COMPLETED_FOLDS not in codes and FOLD_FAILED not in codes, codes
    # no edge, no confidence that the Sharpe is above 0; and it does not beat a baseline after fees
    assert PSR_BELOW_MIN in codes, codes
    assert {NOT_BETTER_THAN_FLAT, NOT_BETTER_THAN_BUY_AND_HOLD} & set(codes), codes
    assert decision["champion_after"] == "-"
    assert current_champion(conn, walk.key) is None
    with pytest.raises(UserInputError, match="no model version 'champion'"):
        registry.version(walk, "champion")

    # -- both decisions are on record in the append-only audit ----------------------------------------
    (promoted,) = history(conn, edge.key)
    assert (promoted.action, promoted.challenger_version, promoted.resulting_champion_version) == (
        "promote", version, version)
    assert promoted.reason_codes == ()
    (rejected,) = history(conn, walk.key)
    assert rejected.action == "reject" and rejected.resulting_champion_version is None
    assert rejected.challenger_version == walk_run.metadata["promotion_decision"]["challenger_version"]
    assert list(rejected.reason_codes) == codes
    assert rejected.evaluation_report_id == walk_run.metadata["fold_report"]["report_id"]

    # -- a skill-less challenger meets the edge's champion: rejected by the paired test ---------------------
    untrained = tmp_path / "untrained_ppo.yaml"
    untrained.write_text(yaml.safe_dump({**SPEC, "name": "untrained_ppo", "total_timesteps": 64}))
    (again,) = materialize(dagster_instance, defs, LIFECYCLE_ASSETS, keys[:1],
                           run_config={"ops": {"challenger_model": {"config": {"spec": str(untrained)}}}})
    assert again.ok, again.errors
    decision = again.metadata["promotion_decision"]
    assert decision["outcome"] == "rejected" and decision["bootstrap"] is False, decision["gates"]
    assert PAIRED_TEST_NOT_SIGNIFICANT in decision["reason_codes"].split(", ")
    assert decision["champion_before"] == decision["champion_after"] == f"v{version}"
    assert decision["paired_p_value"] > 0.05
    paired = next(g for g in decision["gate_values"] if g["code"] == PAIRED_TEST_NOT_SIGNIFICANT)
    assert paired["details"]["n_bars"] > 1000 and paired["details"]["statistic"] == "sharpe"
    # two trials on these test bars now (the champion's evaluation and this one): choosing the champion's
    # edge over them is no overfit, so the PBO gate passes and the paired test alone rejects
    pbo = next(g for g in decision["gate_values"] if g["code"] == "PBO_ABOVE_MAX")
    assert decision["pbo_detail"]["n_trials"] == 2 and pbo["passed"] and decision["pbo"] < 0.5, pbo
    latest, first = history(conn, edge.key)
    assert latest.action == "reject" and PAIRED_TEST_NOT_SIGNIFICANT in latest.reason_codes
    assert first.action == "promote" and current_champion(conn, edge.key) == version
