"""Issue 18, what the features are worth: feature groups in the set contract, a removed group meaning the same
columns on every path, block permutations, and the ablation through the real trainer, backtest and accountant."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features import spec as feature_spec
from rl_lifecycle.features.spec import SETS_DIR, load_feature_set, parse_feature_set
from rl_lifecycle.models.env import MarketEnv, contiguous, observations
from rl_lifecycle.models.policy import Policy
from rl_lifecycle.models.spec import ModelSpec, feature_columns, load_model_spec, observed
from rl_lifecycle.models.trainer import train_policy
from rl_lifecycle.research.ablation import (
    FULL,
    POSITION_ONLY,
    ablation_variants,
    block_permutation,
    parse_groups,
    permute_columns,
)
from rl_lifecycle.trading import rollout

HOUR = 3_600_000_000


def _raw(name: str = "ta_v2") -> dict:
    return yaml.safe_load((SETS_DIR / f"{name}.yaml").read_text())


# -- groups in the feature-set contract ----------------------------------------------------------------


def test_shipped_sets_group_every_feature_exactly_once() -> None:
    for name in ("core_v1", "ta_v2"):
        spec = load_feature_set(name)
        members = [f for g in spec.groups for f in g.features]
        assert sorted(members) == sorted(spec.feature_names), name
        assert spec.grouping_digest is not None and len(spec.grouping_digest) == 64
    ta = load_feature_set("ta_v2")
    assert ta.group_features("momentum") == ("rsi_14", "macdhist_rel", "stoch_k", "cci_20", "willr_14", "roc_10")
    assert ta.group_of("obv_z96") == "volume"


def test_the_grouping_moves_no_fingerprint_but_has_a_digest_of_its_own() -> None:
    grouped = load_feature_set("ta_v2")
    ungrouped = parse_feature_set({k: v for k, v in _raw().items() if k != "groups"})
    # stored snapshots, datasets and models key on the fingerprint: a grouping moves no value, so none of them
    assert ungrouped.groups is None and ungrouped.grouping_digest is None
    assert grouped.fingerprint == ungrouped.fingerprint
    regrouped = _raw()
    regrouped["groups"] = {**regrouped["groups"], "momentum": ["rsi_14", "macdhist_rel", "stoch_k", "cci_20",
                                                                "willr_14"], "returns": ["logret_1", "roc_10"]}
    other = parse_feature_set(regrouped)
    assert other.fingerprint == grouped.fingerprint and other.grouping_digest != grouped.grouping_digest
    assert other.identity == {"fingerprint": grouped.fingerprint, "grouping": other.grouping_digest}
    # the registered spec (a dump) parses back with its groups
    assert parse_feature_set(grouped.model_dump(mode="json")).grouping_digest == grouped.grouping_digest


@pytest.mark.parametrize(("change", "message"), [
    (lambda g: {**g, "momentum": [*g["momentum"], "no_such"]}, "groups.momentum: unknown feature 'no_such'"),
    (lambda g: {**g, "trend": [*g["trend"], "rsi_14"]}, "groups.trend: feature 'rsi_14' is assigned also in group 'momentum'"),
    (lambda g: {**g, "momentum": [*g["momentum"], "rsi_14"]}, "groups.momentum: feature 'rsi_14' is assigned twice in it"),
    (lambda g: {k: v for k, v in g.items() if k != "volume"}, "feature(s) mfi_14, obv_z96, adosc_z96 belong to no group"),
    (lambda g: {**g, "empty": []}, "groups.empty: a group needs at least one feature"),
    (lambda g: {**g, "Bad-Name": ["x"]}, "groups[6].name"),
])
def test_bad_groupings_are_refused_by_name(change, message) -> None:
    data = _raw()
    data["groups"] = change(data["groups"])
    with pytest.raises(UserInputError) as caught:
        parse_feature_set(data, "ta_v2.yaml")
    assert message in str(caught.value)


def test_unknown_groups_and_sets_without_groups_are_refused() -> None:
    ta, spec = load_feature_set("ta_v2"), load_model_spec("ppo_small")
    with pytest.raises(UserInputError, match="has no group 'noise'; its groups are returns, momentum"):
        ablation_variants(spec, ta, ["momentum", "noise"])
    ungrouped = parse_feature_set({k: v for k, v in _raw().items() if k != "groups"})
    with pytest.raises(UserInputError, match="declares no feature groups"):
        ablation_variants(spec, ungrouped)
    assert parse_groups("momentum, trend,,momentum") == ("momentum", "trend") and parse_groups("") is None


def test_variants_remove_each_group_and_keep_the_rest_in_set_order() -> None:
    ta, spec = load_feature_set("ta_v2"), load_model_spec("ppo_small")
    variants = ablation_variants(spec, ta)
    assert [v.label for v in variants] == [FULL, *ta.group_names, POSITION_ONLY]
    assert variants[0].spec == spec and variants[0].spec.features is None
    momentum = next(v for v in variants if v.label == "momentum")
    assert momentum.removed == ta.group_features("momentum")
    assert momentum.spec.features == tuple(f for f in ta.feature_names if f not in momentum.removed)
    assert momentum.spec.name == "ppo_small_no_momentum" and variants[-1].spec.features == ()
    hashes = {v.spec.spec_hash for v in variants}
    assert len(hashes) == len(variants)  # each variant is an evaluation, a trial, of its own


# -- a removed group is the same columns on every path ----------------------------------------------------


def test_a_spec_without_features_keeps_its_hash_and_unknown_features_are_refused() -> None:
    spec = load_model_spec("ppo_small")
    assert "features" not in json.loads(spec.canonical_json())  # every stored spec hash stays what it was
    assert ModelSpec.model_validate(json.loads(spec.canonical_json())).spec_hash == spec.spec_hash
    picked = spec.model_copy(update={"features": ("rsi_14", "nope")})
    with pytest.raises(UserInputError, match="features nope are not features of feature set ta_v2"):
        feature_columns(picked, load_feature_set("ta_v2").feature_names)
    with pytest.raises(ValueError, match="rsi_14 listed more than once"):
        ModelSpec.model_validate({**json.loads(spec.canonical_json()), "features": ["rsi_14", "rsi_14"]})


class _Rows:
    def __init__(self, ts, values, close):
        self.ts, self.values, self.close = ts, values, close


def _tiny(features: tuple[str, ...] | None) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "tiny", "total_timesteps": 256, "seed": 3, "feature_set": "toy", "features": features,
        "hyperparameters": {"n_steps": 64, "batch_size": 32, "n_epochs": 1}, "episode_length": 32,
        "policy": {"net_arch": [8]}})


def test_the_env_the_policy_and_the_accountant_see_the_same_columns(tmp_path) -> None:
    from rl_lifecycle.evaluation.accountant import account

    rng = np.random.default_rng(5)
    n, names = 400, ("a", "b", "c", "d")
    values = rng.normal(size=(n, 4))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    rows = _Rows(np.arange(n, dtype=np.int64) * HOUR, values, close)
    spec = _tiny(("c", "a"))
    cols = feature_columns(spec, names)
    assert cols.tolist() == [2, 0]
    # the env the trainer builds observes the selected columns, then the position
    env = MarketEnv.from_dataset(_Rows(rows.ts, observed(spec, names, values), close), contiguous(rows.ts, HOUR), spec)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.shape == (3,)
    trained = train_policy(rows, contiguous(rows.ts, HOUR), spec, feature_names=names)
    with pytest.raises(ValueError, match="give the feature_names"):
        train_policy(rows, contiguous(rows.ts, HOUR), spec)
    policy = Policy(trained.model, spec, "fp", names)
    policy.save(tmp_path / "p")
    loaded = Policy.load(tmp_path / "p")  # as the backtest's strategy and paper decisions load it
    assert loaded.observed_features == ("c", "a")
    positions = np.zeros(n, dtype=np.int8)
    direct, _ = trained.model.predict(observations(values[:, [2, 0]], positions), deterministic=True)
    assert np.array_equal(loaded.act(values, positions, fingerprint="fp"), np.asarray(direct, dtype=np.int8))
    # the columns it does not observe move nothing: scrambling them gives the same positions, the same book
    scrambled = values.copy()
    scrambled[:, [1, 3]] = rng.normal(size=(n, 2)) * 1e3
    base = rollout(loaded.on("fp"), values)
    assert np.array_equal(rollout(loaded.on("fp"), scrambled), base)
    booked = account(close, base, 10.0, 100_000.0, 6)
    again = account(close, rollout(loaded.on("fp"), scrambled), 10.0, 100_000.0, 6)
    assert np.array_equal(booked.equity, again.equity)
    # position only: no feature at all, the position alone
    alone = train_policy(rows, contiguous(rows.ts, HOUR), _tiny(()), feature_names=names)
    only = Policy(alone.model, _tiny(()), "fp", names)
    assert only.observed_features == () and only.act(values, positions, fingerprint="fp").shape == (n,)


def test_block_permutations_move_whole_blocks_and_are_seeded() -> None:
    order = block_permutation(10, 3, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(10))
    blocks = [order[i:i + 3].tolist() for i in range(0, 10, 3)]
    assert all(b == list(range(b[0], b[0] + len(b))) for b in blocks if len(b) == 3 or b[0] == 9)
    assert np.array_equal(order, block_permutation(10, 3, np.random.default_rng(1)))
    vectors = np.arange(20, dtype=np.float64).reshape(10, 2)
    out = permute_columns(vectors, [1], order)
    assert np.array_equal(out[:, 0], vectors[:, 0]) and np.array_equal(out[:, 1], vectors[order, 1])


# -- the planted edge, through the real trainer, backtest and accountant ------------------------------------

PLANTED_SET = {
    "name": "planted_v1",
    "version": 1,
    "description": "Two momentum oscillators that see a planted oscillation's phase, and two volume-only columns "
                   "that see nothing (the planted candles' volume is i.i.d. noise).",
    "warmup": 40,
    "indicators": [
        {"function": "RSI", "params": {"timeperiod": 14}, "inputs": ["close"],
         "outputs": [{"output": "real", "feature": "rsi_14", "normalise": {"kind": "none"}}]},
        {"function": "ROC", "params": {"timeperiod": 10}, "inputs": ["close"],
         "outputs": [{"output": "real", "feature": "roc_10", "normalise": {"kind": "none"}}]},
        {"function": "LOGRET", "params": {"period": 1}, "inputs": ["volume"],
         "outputs": [{"output": "real", "feature": "volume_logret_1", "normalise": {"kind": "none"}}]},
        {"function": "LOGRET", "params": {"period": 4}, "inputs": ["volume"],
         "outputs": [{"output": "real", "feature": "volume_logret_4", "normalise": {"kind": "none"}}]},
    ],
    "groups": {"momentum": ["rsi_14", "roc_10"], "noise": ["volume_logret_1", "volume_logret_4"]},
}
# rl_lifecycle_tests/test_promotion_e2e.py's pinned spec (it learns the planted edge in every fold), on the set above
PLANTED_SPEC = {
    "name": "planted_edge_ppo", "algorithm": "PPO", "policy": {"net_arch": [64, 64], "activation": "tanh"},
    "hyperparameters": {"learning_rate": 0.0003, "n_steps": 512, "batch_size": 64, "n_epochs": 4, "gamma": 0.99,
                        "ent_coef": 0.01},
    "total_timesteps": 4096, "seed": 7, "action_set": "long_flat", "cost_bps": 10.0, "episode_length": 256,
    "feature_set": "planted_v1",
}


@pytest.fixture
def planted_sets(tmp_path, monkeypatch):
    """The shipped sets plus `planted_v1`, as the sets directory."""
    sets = tmp_path / "sets"
    shutil.copytree(SETS_DIR, sets)
    (sets / "planted_v1.yaml").write_text(yaml.safe_dump(PLANTED_SET, sort_keys=False))
    monkeypatch.setattr(feature_spec, "SETS_DIR", sets)
    return sets


@pytest.mark.slow
def test_the_planted_edge_group_ranks_first_by_ablation_and_by_permutation(conn, planted_sets, tmp_path):
    from rl_lifecycle.candles.planted import oscillating_candles, write_candle_csv
    from rl_lifecycle.candles.service import ingest_file
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import spec_ending_at
    from rl_lifecycle.evaluation.folds import FoldConfig
    from rl_lifecycle.evaluation.store import market_trials, read_report
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.research.ablation import ablation_json, ablation_png, ablation_table, run_ablation
    from rl_lifecycle.windows import WindowScheme

    market, scheme = Market("EDGEABL", "1h"), WindowScheme("monthly")
    window = scheme.parse("2024-03-01")
    path = write_candle_csv(tmp_path / "edge.csv", oscillating_candles("2023-12-01", "2024-04-01", period=32,
                                                                       amplitude=0.05, noise=0.002, seed=1))
    assert not ingest_file(conn, market, path).refused
    build_dataset(conn, spec_ending_at(market, window, scheme, "planted_v1", 3), tmp_path / "datasets",
                  load_feature_set("planted_v1"))
    spec = ModelSpec.model_validate(PLANTED_SPEC)
    config = FoldConfig.create(n_folds=3, purge_bars=1)
    before = market_trials(conn, market).n_trials
    result = run_ablation(conn, market, window, spec, config, workdir=tmp_path / "evals", workers=2,
                          log=lambda _: None)
    print(json.dumps(ablation_json(result), indent=1))
    rows = {r["group"]: r for r in result["groups"]}
    momentum, noise = rows["momentum"], rows["noise"]
    # the planted edge is visible to the momentum group only: both measures rank it first
    assert momentum["rank_ablation"] == 1 and momentum["rank_permutation"] == 1
    assert momentum["delta_sharpe"] < -1.0 and momentum["permutation_delta"] < -1.0
    assert abs(noise["delta_sharpe"]) < abs(momentum["delta_sharpe"]) / 2
    assert abs(noise["permutation_delta"]) < abs(momentum["permutation_delta"]) / 2
    assert momentum["p_value"] is not None and momentum["p_value"] < 0.05
    assert result["position_only"]["delta_sharpe"] < -1.0
    # every variant is a trial of the market: full, -momentum, -noise, position only
    assert result["trials_added"] == 4 and result["n_trials"] == before + 4
    assert market_trials(conn, market).n_trials == before + 4
    # the variants' stored reports observe what their specs say, and agree with the accountant to the bit
    for r in [*result["groups"], result["position_only"]]:
        stored = read_report(conn, r["report_id"])
        assert stored.spec["features"] == [f for f in load_feature_set("planted_v1").feature_names
                                           if f not in r["features"]]
        assert all(f.baselines["accountant"]["exact"] for f in stored.folds)
    assert len(ablation_table(result)) == 4 and ablation_png(result)[:4] == b"\x89PNG"
    # permuting a group the policy ignores moves nothing: the no-noise policies do not see the noise columns
    from rl_lifecycle.research.ablation import permutation_importance

    no_noise = next(v.spec for v in ablation_variants(spec, load_feature_set("planted_v1")) if v.label == "noise")
    report = read_report(conn, rows["noise"]["report_id"])
    ignored = permutation_importance(conn, market, window, no_noise, config, load_feature_set("planted_v1"),
                                     ["noise"], workdir=tmp_path / "evals", report=report, repeats=2)
    assert ignored["groups"]["noise"] == {"permutation_delta": 0.0, "permutation_delta_return": 0.0}
    # the accountant's unpermuted book of each fold is the fold backtest's
    full = read_report(conn, result["full"]["report_id"])
    base = permutation_importance(conn, market, window, spec, config, load_feature_set("planted_v1"), ["noise"],
                                  workdir=tmp_path / "evals", report=full, repeats=1)["base"]
    for fold in full.folds:
        assert base[fold.index]["total_return"] == pytest.approx(fold.metrics["total_return"], abs=1e-12)
        assert base[fold.index]["sharpe"] == pytest.approx(fold.metrics["sharpe"], rel=1e-9)


@pytest.mark.slow
def test_the_ablation_runs_from_the_cli_through_dagster_and_lands_on_the_challengers_run(
        rl_env, database_url, tmp_path, capsys, monkeypatch):
    from rl_lifecycle.evaluation.store import market_trials
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle_tests.cli_helpers import run_cli

    fields = {**load_model_spec("ppo_small").model_dump(mode="json"), "total_timesteps": 128,
              "hyperparameters": {"n_steps": 64, "batch_size": 32, "n_epochs": 1}}
    fields.pop("features", None)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(fields))

    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    assert cli("market", "add", "BTC/USDT", "1h", "--synthetic-seed", "7")[0] == 0
    code, out, err = cli("materialize", "candles", "feature_snapshots", "training_dataset",
                         "--market", "BTCUSDT-1h", "--windows", "2024-01-01..2024-03-01")
    assert code == 0, out + err
    code, out, err = cli("train", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--spec", str(spec))
    assert code == 0, out + err
    code, _, err = cli("ablation", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--groups", "momentum,noise")
    assert code == 2 and "has no group 'noise'" in err  # refused before anything runs

    from rl_lifecycle.db.connection import connect

    with connect(database_url) as conn:
        before = market_trials(conn, Market.parse("BTCUSDT-1h")).n_trials
    code, out, err = cli("ablation", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--groups", "momentum",
                         "--folds", "2", "--repeats", "2", "--json")
    assert code == 0, out + err
    shown = json.loads(out)
    assert set(shown) == {"market", "window", "feature_set", "groups", "n_trials"}
    assert shown["market"] == "BTCUSDT-1h" and shown["window"] == "2024-03-01" and shown["feature_set"] == "ta_v2"
    (momentum,) = shown["groups"]
    assert set(momentum) == {"group", "features", "delta_sharpe", "delta_return", "permutation_delta", "p_value"}
    assert momentum["group"] == "momentum" and momentum["features"] == list(load_feature_set("ta_v2").group_features("momentum"))
    assert shown["n_trials"] == before + 3  # the full spec, without momentum, position only
    # the table on the challenger's MLflow run
    registry = open_registry(database_url)
    run_id = registry.version(Market.parse("BTCUSDT-1h"), 1).run_id
    artifacts = {a.path for sub in ("ablation", "plots") for a in registry.client.list_artifacts(run_id, sub)}
    assert {"ablation/feature_ablation.json", "plots/feature_ablation.png"} <= artifacts
    assert "ablation/momentum_delta_sharpe" in registry.client.get_run(run_id).data.metrics
    # the table for people
    code, out, err = cli("ablation", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--groups", "momentum",
                         "--folds", "2", "--repeats", "2")
    assert code == 0, out + err
    assert "- momentum" in out and "position only" in out and "full set" in out
    assert f"trials of BTCUSDT-1h: {before + 3} (+0" in out  # the same variants again: the same trials


# -- constrained sets from evidence --------------------------------------------------------------------------


def test_a_derived_set_keeps_the_base_values_bit_for_bit_under_a_fingerprint_of_its_own(tmp_path, capsys,
                                                                                       monkeypatch) -> None:
    from rl_lifecycle.candles.planted import oscillating_candles
    from rl_lifecycle.features.pipeline import compute_features
    from rl_lifecycle.windows import WindowScheme
    from rl_lifecycle_tests.cli_helpers import run_cli

    out = tmp_path / "ta_v2_lean.yaml"
    code, text, err = run_cli(capsys, monkeypatch, "feature-set", "derive", "--from", "ta_v2", "--drop",
                              "volume,price_position", "--drop", "trend", "--name", "ta_v2_lean", "--out", str(out))
    assert code == 0, text + err
    base, lean = load_feature_set("ta_v2"), load_feature_set(out)
    kept = [f for f in base.feature_names if base.group_of(f) not in ("volume", "price_position", "trend")]
    assert lean.name == "ta_v2_lean" and lean.feature_names == tuple(kept)
    assert lean.group_names == ("returns", "momentum", "volatility") and lean.fingerprint != base.fingerprint
    candles = oscillating_candles("2024-01-01", "2024-02-15")
    scheme = WindowScheme("monthly")
    full = compute_features(base, candles, scheme, int(candles.ts[0]))
    mine = compute_features(lean, candles, scheme, int(candles.ts[0]))
    columns = [base.feature_names.index(f) for f in kept]
    assert np.array_equal(np.asarray(full.values)[:, columns], np.asarray(mine.values), equal_nan=True)
    code, _, err = run_cli(capsys, monkeypatch, "feature-set", "derive", "--from", "ta_v2", "--drop", "trend",
                           "--name", "ta_v2_lean", "--out", str(out))
    assert code == 2 and "exists" in err  # never overwritten
    code, _, err = run_cli(capsys, monkeypatch, "feature-set", "derive", "--from", "ta_v2", "--drop", "noise",
                           "--name", "x", "--out", str(tmp_path / "x.yaml"))
    assert code == 2 and "has no group 'noise'" in err and not (tmp_path / "x.yaml").exists()
