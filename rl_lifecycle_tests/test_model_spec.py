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


# -- values against their meaning (issue 22): what SB3 would assert on, divide by zero or train into NaN
@pytest.mark.parametrize("algorithm,hyperparameters,message", [
    ("PPO", {"learning_rate": -1}, "hyperparameters.learning_rate=-1 must be > 0 (the optimizer's step size)"),
    ("PPO", {"learning_rate": 0}, "hyperparameters.learning_rate=0 must be > 0"),
    ("PPO", {"gamma": 5.0}, "hyperparameters.gamma=5.0 must be in (0, 1] (the discount factor)"),
    ("PPO", {"gamma": 0}, "hyperparameters.gamma=0 must be in (0, 1]"),
    ("PPO", {"gae_lambda": 1.5}, "hyperparameters.gae_lambda=1.5 must be in [0, 1]"),
    ("PPO", {"n_steps": 0}, "hyperparameters.n_steps=0 must be >= 1"),
    ("PPO", {"n_epochs": 0}, "hyperparameters.n_epochs=0 must be >= 1 (passes over each rollout)"),
    ("PPO", {"clip_range": 0}, "hyperparameters.clip_range=0 must be > 0"),
    ("PPO", {"clip_range_vf": -0.1}, "hyperparameters.clip_range_vf=-0.1 must be > 0 or null"),
    ("PPO", {"target_kl": 0}, "hyperparameters.target_kl=0 must be > 0 or null"),
    ("PPO", {"ent_coef": -0.1}, "hyperparameters.ent_coef=-0.1 must be >= 0"),
    ("PPO", {"max_grad_norm": -1}, "hyperparameters.max_grad_norm=-1 must be > 0"),
    ("PPO", {"use_sde": True}, "hyperparameters.use_sde=True must be false (gSDE, which needs continuous actions"),
    ("PPO", {"batch_size": 100000000}, "hyperparameters.batch_size=100000000 must be at most the rollout size "
                                       "n_steps x n_envs = 2048 with n_steps=2048 (SB3's default) and n_envs=1"),
    ("PPO", {"n_steps": 64, "batch_size": 128}, "hyperparameters.batch_size=128 must be at most the rollout size "
                                                "n_steps x n_envs = 64 with n_steps=64 and n_envs=1"),
    ("PPO", {"n_steps": 32}, "hyperparameters.batch_size=64 (SB3's default) must be at most the rollout size"),
    ("PPO", {"batch_size": 1}, "hyperparameters.batch_size=1 must be >= 2 with normalize_advantage=True (SB3's default)"),
    ("PPO", {"n_steps": 1, "batch_size": 1}, "hyperparameters.n_steps=1: the rollout n_steps x n_envs = 1 x 1 "
                                             "must be >= 2 steps with normalize_advantage=True (SB3's default)"),
    ("A2C", {"n_steps": 1, "normalize_advantage": True}, "hyperparameters.n_steps=1: the rollout n_steps x n_envs "
                                                         "= 1 x 1 must be >= 2 steps with normalize_advantage=True"),
    ("A2C", {"rms_prop_eps": 0}, "hyperparameters.rms_prop_eps=0 must be > 0"),
    ("DQN", {"batch_size": 100000000}, "hyperparameters.batch_size=100000000 must be at most the replay buffer's "
                                       "size buffer_size=1000000 (SB3's default)"),
    ("DQN", {"buffer_size": 0}, "hyperparameters.buffer_size=0 must be >= 1"),
    ("DQN", {"learning_starts": -1}, "hyperparameters.learning_starts=-1 must be >= 0"),
    ("DQN", {"tau": 0}, "hyperparameters.tau=0 must be in (0, 1]"),
    ("DQN", {"train_freq": 0}, "hyperparameters.train_freq=0 must be >= 1"),
    ("DQN", {"train_freq": [4, "epoch"]}, "hyperparameters.train_freq=[4, 'epoch'] must be >= 1 (or [>= 1, step|episode])"),
    ("DQN", {"gradient_steps": 0}, "hyperparameters.gradient_steps=0 must be >= 1, or -1"),
    ("DQN", {"target_update_interval": 0}, "hyperparameters.target_update_interval=0 must be >= 1"),
    ("DQN", {"exploration_fraction": 0}, "hyperparameters.exploration_fraction=0 must be in (0, 1]"),
    ("DQN", {"exploration_final_eps": 1.5}, "hyperparameters.exploration_final_eps=1.5 must be in [0, 1]"),
    ("DQN", {"optimize_memory_usage": True}, "hyperparameters.optimize_memory_usage=True must be false"),
])
def test_hyperparameter_values_are_checked_against_their_meaning(algorithm, hyperparameters, message):
    with pytest.raises(UserInputError, match="invalid model spec") as error:
        parse_model_spec({**BASE, "algorithm": algorithm, "hyperparameters": hyperparameters}, "test.yaml")
    assert message in str(error.value)


def test_values_at_the_bounds_are_accepted_and_sb3_builds_them_one_past_is_refused():
    import numpy as np

    from rl_lifecycle.models.env import MarketEnv
    from rl_lifecycle.models.trainer import build_model

    bounds = {
        "PPO": {"n_steps": 2, "batch_size": 2, "gamma": 1, "gae_lambda": 0, "ent_coef": 0, "target_kl": None},
        "A2C": {"n_steps": 1, "gamma": 1, "vf_coef": 0},
        "DQN": {"buffer_size": 64, "batch_size": 64, "tau": 1, "gradient_steps": -1, "learning_starts": 0,
                "train_freq": [1, "episode"], "exploration_fraction": 1, "exploration_final_eps": 0},
    }
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 50)))
    for algorithm, hyperparameters in bounds.items():
        spec = parse_model_spec({**BASE, "algorithm": algorithm, "hyperparameters": hyperparameters}, "test.yaml")
        env = MarketEnv(rng.normal(size=(50, 2)), close, np.ones(49, bool), episode_length=10)
        build_model(spec, env).learn(total_timesteps=4)
    with pytest.raises(UserInputError, match=r"batch_size=3 must be at most the rollout size n_steps x n_envs = 2"):
        parse_model_spec({**BASE, "hyperparameters": {"n_steps": 2, "batch_size": 3}}, "test.yaml")
    with pytest.raises(UserInputError, match=r"batch_size=65 must be at most the replay buffer's size buffer_size=64"):
        parse_model_spec({**BASE, "algorithm": "DQN", "hyperparameters": {"buffer_size": 64, "batch_size": 65}}, "x")
