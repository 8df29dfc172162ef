"""Training on the canonical vectors, registered in a real MLflow on the test PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.policy import Policy, load_registered_policy
from rl_lifecycle.models.service import check_lineage, check_reproducible, train_challenger, training_data
from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.models.tracking import CHALLENGER, open_registry
from rl_lifecycle.trading import rollout
from rl_lifecycle.windows import WindowScheme, to_us

pytestmark = pytest.mark.slow

SCHEME = WindowScheme("monthly")
WINDOW = SCHEME.parse("2024-03-01")


def tiny_spec(tmp_path: Path, **overrides) -> Path:
    """The shipped small PPO spec, with few timesteps so tests stay fast."""
    spec = load_model_spec("ppo_small")
    fields = {**spec.model_dump(mode="json"), "total_timesteps": 256, **overrides}
    if spec.algorithm == "PPO":
        fields["hyperparameters"] = {**fields.get("hyperparameters", {}), "n_steps": 128, "batch_size": 64}
    path = tmp_path / f"spec-{abs(hash(tuple(sorted(map(str, overrides.items())))))}.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.fixture
def market(conn, request, tmp_path) -> Market:
    """A market with a dataset for 2024-01..2024-03; one market per test keeps registered versions apart."""
    name = "".join(ch for ch in request.node.name.upper() if ch.isalnum())[:16]
    market = Market(f"T{name}", "1h")
    ingest_synthetic(conn, market, to_us("2023-12-01"), to_us("2024-04-01"), seed=7)
    features = load_feature_set("ta_v2")
    build_dataset(conn, spec_ending_at(market, WINDOW, SCHEME, "ta_v2", 3), tmp_path / "datasets", features)
    return market


@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


def test_a_challenger_is_registered_with_its_lineage_and_passes_both_gates(conn, market, registry, tmp_path):
    spec = load_model_spec(str(tiny_spec(tmp_path)))
    seen = []
    trained = train_challenger(conn, registry, market, WINDOW, spec, progress=lambda done, total: seen.append((done, total)))
    # registered, but not the challenger until its blocking checks have passed
    assert CHALLENGER not in registry.version(market, trained.version.version).aliases
    version = registry.version(market, trained.version.version)
    data = training_data(conn, market, WINDOW)
    assert version.tags["dataset_hash"] == data.dataset.dataset_hash
    assert version.tags["fingerprint"] == load_feature_set("ta_v2").fingerprint
    assert version.tags["weights_hash"] == trained.weights_hash and version.tags["model_spec_hash"] == spec.spec_hash
    assert seen and seen[-1][0] == seen[-1][1] == trained.timesteps
    # per-step training metrics reached MLflow
    history = registry.client.get_metric_history(trained.run_id, "rollout/ep_rew_mean") or registry.client.get_metric_history(
        trained.run_id, "episode_reward")
    assert history
    assert check_lineage(conn, registry, market, WINDOW).passed
    assert CHALLENGER not in registry.version(market, version.version).aliases  # one check is not enough
    report = check_reproducible(conn, registry, market, WINDOW)
    assert report.passed, report.summary
    checked = registry.version(market, CHALLENGER)  # both passed: recorded on the version, and the alias follows
    assert checked.version == version.version
    assert {k: v for k, v in checked.tags.items() if k.startswith("check.")} == {
        "check.model_lineage": "passed", "check.model_reproducible": "passed"}


def test_lineage_fails_when_the_dataset_file_no_longer_holds_what_the_model_saw(conn, market, registry, tmp_path):
    train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    data = training_data(conn, market, WINDOW)
    import polars as pl

    frame = pl.read_parquet(data.dataset.storage_uri)
    frame = frame.with_columns(pl.col("close") * 1.0001)
    frame.write_parquet(data.dataset.storage_uri)
    check = check_lineage(conn, registry, market, WINDOW)
    assert not check.passed and "dataset_hash" in check.summary


def test_same_seed_same_weights_other_seed_other_weights(conn, market, registry, tmp_path):
    first = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    again = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    other = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path, seed=99))))
    assert first.weights_hash == again.weights_hash
    assert other.weights_hash != first.weights_hash
    assert [v.version for v in registry.versions(market)] == [3, 2, 1]
    assert all(CHALLENGER not in v.aliases for v in registry.versions(market))  # none checked yet


def test_a_spec_for_another_feature_set_is_refused_before_training(conn, market, registry, tmp_path):
    spec = load_model_spec(str(tiny_spec(tmp_path, feature_set="core_v1")))
    with pytest.raises(UserInputError, match="core_v1"):
        train_challenger(conn, registry, market, WINDOW, spec)
    assert registry.versions(market) == []


def test_the_policy_refuses_vectors_of_another_fingerprint_and_rolls_out_exactly(conn, market, registry, tmp_path):
    trained = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    policy = load_registered_policy(registry, market, trained.version.version)
    data = training_data(conn, market, WINDOW)
    vectors = data.content.values[:300]
    with pytest.raises(UserInputError, match="trained on"):
        policy.act(vectors, np.zeros(len(vectors), dtype=np.int8), fingerprint=load_feature_set("core_v1").fingerprint)
    batched = policy.rollout(vectors, fingerprint=data.dataset.fingerprint)
    position, one_by_one = 0, []
    for row in vectors:  # one forward pass per bar, as a naive strategy would
        position = int(policy.act(row[None, :], np.array([position], dtype=np.int8), fingerprint=data.dataset.fingerprint)[0])
        one_by_one.append(position)
    assert batched.tolist() == one_by_one
    assert set(batched.tolist()) <= set(policy.positions)
    assert np.array_equal(rollout(policy.on(data.dataset.fingerprint), vectors), batched)


def test_saved_policies_load_back_to_the_same_actions(conn, market, registry, tmp_path):
    trained = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    data = training_data(conn, market, WINDOW)
    loaded = load_registered_policy(registry, market, trained.version.version)
    again = Policy.load(loaded.save(tmp_path / "copy"))
    fingerprint = data.dataset.fingerprint
    assert np.array_equal(loaded.rollout(data.content.values, fingerprint=fingerprint),
                          again.rollout(data.content.values, fingerprint=fingerprint))


def _open_fresh_registry(database_url: str) -> str:
    from rl_lifecycle.models.tracking import open_registry

    return open_registry(database_url).client.search_experiments(max_results=1) is not None and "ok"


def test_two_first_uses_at_once_create_mlflows_database_and_tables_once(server_url):
    """Two processes opening the registry of a fresh database together (two markets training side by
    side on a new deployment) both succeed: one creates the database and MLflow's tables."""
    import multiprocessing
    import uuid

    import psycopg

    from rl_lifecycle_tests.conftest import _with_database

    name = f"rl_test_race_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(server_url, name)
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            assert pool.map(_open_fresh_registry, [url, url]) == ["ok", "ok"]
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            for db in (name, f"{name}_mlflow"):
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
