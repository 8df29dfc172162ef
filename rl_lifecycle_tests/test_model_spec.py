"""Model specs: shipped specs load; bad ones are refused naming the field and the value."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.models.spec import check_dataset_compatible, load_model_spec, parse_model_spec
from rl_lifecycle_tests.cli_helpers import run_cli

BASE = {"name": "t", "algorithm": "PPO", "total_timesteps": 100, "feature_set": "ta_v2"}


def test_shipped_specs_load_and_hash_stably(tmp_path):
    ppo, dqn = load_model_spec("ppo_small"), load_model_spec("dqn_small")
    assert (ppo.algorithm, dqn.algorithm) == ("PPO", "DQN")
    assert ppo.spec_hash == load_model_spec("ppo_small").spec_hash != dqn.spec_hash
    # a file with the same fields in another order and layout is the same spec
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(dict(reversed(list(ppo.model_dump().items()))), default_flow_style=True))
    assert load_model_spec(str(path)).spec_hash == ppo.spec_hash
    assert ppo.canonical_json().startswith('{"action_set":"long_flat","algorithm":"PPO"')
    with pytest.raises(ValidationError, match="frozen"):
        ppo.seed = 8


def test_unknown_spec_names_and_bad_yaml_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="model spec 'ppo_huge' not found: .* dqn_small, ppo_small"):
        load_model_spec("ppo_huge")
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_model_spec(str(path))
    path.write_text("- a list")
    with pytest.raises(UserInputError, match="expected a mapping"):
        load_model_spec(str(path))


def test_a_spec_for_another_feature_set_or_fingerprint_is_refused_before_training():
    spec = parse_model_spec(BASE, "test")
    asked = []

    def current(name: str) -> str:
        asked.append(name)
        return "f" * 64

    check_dataset_compatible(spec, "ta_v2", "f" * 64, current)
    with pytest.raises(UserInputError, match="wants feature set 'ta_v2', but the dataset abc holds 'ta_v1' vectors"):
        check_dataset_compatible(spec, "ta_v1", "f" * 64, current, dataset="the dataset abc")
    with pytest.raises(UserInputError, match="now fingerprints as ffffffffffff, the dataset was built with eeeeeeeeeeee"):
        check_dataset_compatible(spec, "ta_v2", "e" * 64, current)
    assert asked == ["ta_v2", "ta_v2"]  # not asked for a set the dataset does not hold


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"lerning_rate": 0.1}, "unknown key 'lerning_rate'"),
        ({"hyperparameters": {"n_step": 64}}, "hyperparameters.n_step is not a PPO parameter"),
        ({"hyperparameters": {"seed": 1}}, "hyperparameters.seed is set by the trainer"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate='fast' must be a number"),
        ({"hyperparameters": {"learning_rate": float("nan")}}, "hyperparameters.learning_rate=nan must be a number"),
        ({"hyperparameters": {"n_steps": 64.5}}, "hyperparameters.n_steps=64.5 must be an integer"),
        ({"hyperparameters": {"use_sde": 1}}, "hyperparameters.use_sde=1 must be true or false"),
        ({"hyperparameters": {"target_kl": "x"}}, "hyperparameters.target_kl='x' must be a number or null"),
        ({"hyperparameters": {"policy_kwargs": {}}}, "hyperparameters.policy_kwargs is set by the trainer"),
        ({"algorithm": "SAC"}, "algorithm: Input should be 'PPO', 'A2C' or 'DQN' (got 'SAC')"),
        ({"cost_bps": -1}, "cost_bps: Input should be greater than or equal to 0 (got -1)"),
        ({"episode_length": 1}, "episode_length"),
        ({"policy": {"activation": "gelu"}}, "policy.activation"),
        ({"policy": {"net_arch": [64], "dropout": 0.1}}, "unknown key 'policy.dropout'"),
        ({"action_set": "short_only"}, "action_set"),
        ({"policy": {"net_arch": [0]}}, "policy.net_arch"),
        ({"total_timesteps": 0}, "total_timesteps"),
    ],
)
def test_bad_specs_name_the_field(fields, message):
    with pytest.raises(UserInputError, match="invalid model spec") as error:
        parse_model_spec({**BASE, **fields}, "test.yaml")
    assert message in str(error.value)


def test_the_unknown_hyperparameter_error_lists_the_allowed_ones():
    with pytest.raises(UserInputError) as error:
        parse_model_spec({**BASE, "hyperparameters": {"n_step": 64}}, "test.yaml")
    assert "allowed: batch_size, clip_range, clip_range_vf, ent_coef" in str(error.value)
    assert "seed" not in str(error.value).split("allowed:")[1]


def test_dqn_hyperparameters_are_checked_against_dqn():
    spec = parse_model_spec({**BASE, "algorithm": "DQN",
                             "hyperparameters": {"buffer_size": 1000, "train_freq": [1, "episode"]}}, "ok")
    assert spec.hyperparameters["train_freq"] == [1, "episode"]
    with pytest.raises(UserInputError, match=r"train_freq=\[1, 2\] must be an integer or a list \[an integer, a string\]"):
        parse_model_spec({**BASE, "algorithm": "DQN", "hyperparameters": {"train_freq": [1, 2]}}, "x")
    with pytest.raises(UserInputError, match="hyperparameters.n_epochs is not a DQN parameter"):
        parse_model_spec({**BASE, "algorithm": "DQN", "hyperparameters": {"n_epochs": 8}}, "x")


def test_the_cli_refuses_a_bad_spec_file_with_exit_2(tmp_path, rl_env, capsys, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "gamma": 0.9}))
    code, _, err = run_cli(capsys, monkeypatch, "train", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--spec", str(path))
    assert code == 2 and "unknown key 'gamma'" in err
    code, _, err = run_cli(capsys, monkeypatch, "models", "list", "--market", "BTC")
    assert code == 2 and "market key 'BTC' is invalid" in err
