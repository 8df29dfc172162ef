"""Model specs: shipped specs load; bad ones are refused naming the field and the value."""

from __future__ import annotations

import pytest
import yaml

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.models.spec import load_model_spec, parse_model_spec
from rl_lifecycle_tests.cli_helpers import run_cli

BASE = {"name": "t", "algorithm": "PPO", "total_timesteps": 100, "feature_set": "ta_v2"}


def test_shipped_specs_load_and_hash_stably():
    ppo, dqn = load_model_spec("ppo_small"), load_model_spec("dqn_small")
    assert (ppo.algorithm, dqn.algorithm) == ("PPO", "DQN")
    assert ppo.spec_hash == load_model_spec("ppo_small").spec_hash != dqn.spec_hash


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"lerning_rate": 0.1}, "unknown key 'lerning_rate'"),
        ({"hyperparameters": {"n_step": 64}}, "hyperparameters.n_step is not a PPO parameter"),
        ({"hyperparameters": {"seed": 1}}, "hyperparameters.seed is set by the trainer"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate='fast' must be a number"),
        ({"algorithm": "SAC"}, "algorithm"),
        ({"action_set": "short_only"}, "action_set"),
        ({"cost_bps": -1}, "cost_bps"),
        ({"policy": {"net_arch": [0]}}, "policy.net_arch"),
        ({"total_timesteps": 0}, "total_timesteps"),
    ],
)
def test_bad_specs_name_the_field(fields, message):
    with pytest.raises(UserInputError, match="invalid model spec") as error:
        parse_model_spec({**BASE, **fields}, "test.yaml")
    assert message in str(error.value)


def test_dqn_hyperparameters_are_checked_against_dqn():
    parse_model_spec({**BASE, "algorithm": "DQN", "hyperparameters": {"buffer_size": 1000}}, "ok")
    with pytest.raises(UserInputError, match="hyperparameters.n_epochs is not a DQN parameter"):
        parse_model_spec({**BASE, "algorithm": "DQN", "hyperparameters": {"n_epochs": 8}}, "x")


def test_the_cli_refuses_a_bad_spec_file_with_exit_2(tmp_path, rl_env, capsys, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "gamma": 0.9}))
    code, _, err = run_cli(capsys, monkeypatch, "train", "--market", "BTCUSDT-1h", "--window", "2024-03-01", "--spec", str(path))
    assert code == 2 and "unknown key 'gamma'" in err
    code, _, err = run_cli(capsys, monkeypatch, "models", "list", "--market", "BTC")
    assert code == 2 and "market key 'BTC' is invalid" in err
