"""The trainer is deterministic on CPU: the same data, spec and seed give the same weights, in any process."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from rl_lifecycle.datasets.builder import DatasetContent
from rl_lifecycle.models.env import contiguous
from rl_lifecycle.models.spec import parse_model_spec
from rl_lifecycle.models.trainer import train_policy, weights_hash

HOUR = 3_600_000_000


def _rows() -> DatasetContent:
    """400 hourly rows with one missing stretch (a gap the env must not reward across)."""
    rng = np.random.default_rng(11)
    n = 400
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    values = np.column_stack([np.r_[0.0, np.diff(np.log(close))], rng.normal(size=n)])
    ts = np.arange(n, dtype=np.int64) * HOUR
    ts[250:] += 3 * HOUR
    return DatasetContent(ts=ts, values=values, is_warm=np.ones(n, bool), missing=np.zeros((n, 2), bool),
                          close=close, forward_return=np.r_[np.diff(np.log(close)), np.nan],
                          feature_names=("logret_1", "noise"))


def _spec(algorithm: str = "PPO", seed: int = 3):
    hyper = {"PPO": {"n_steps": 64, "batch_size": 32, "n_epochs": 2}, "A2C": {"n_steps": 8},
             "DQN": {"learning_starts": 50, "buffer_size": 1000}}[algorithm]
    return parse_model_spec({"name": "tiny", "algorithm": algorithm, "total_timesteps": 256, "seed": seed,
                             "feature_set": "ta_v2", "episode_length": 50, "hyperparameters": hyper,
                             "policy": {"net_arch": [16]}}, "test")


def _train_hash(algorithm: str, seed: int) -> str:
    rows = _rows()
    return train_policy(rows, contiguous(rows.ts, HOUR), _spec(algorithm, seed)).weights_hash


def test_same_seed_same_weights_in_this_and_a_fresh_process_other_seed_other_weights():
    rows = _rows()
    first = train_policy(rows, contiguous(rows.ts, HOUR), _spec())
    again = train_policy(rows, contiguous(rows.ts, HOUR), _spec())
    assert first.weights_hash == again.weights_hash
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_train_hash, "PPO", 3).result() == first.weights_hash
    assert _train_hash("PPO", 4) != first.weights_hash


def test_dqn_and_a2c_train_deterministically_too():
    assert _train_hash("DQN", 1) == _train_hash("DQN", 1)
    assert _train_hash("A2C", 1) == _train_hash("A2C", 1)


def test_progress_and_metrics_reach_the_callbacks_and_torch_settings_come_back():
    rows = _rows()
    threads = torch.get_num_threads()
    progress, metrics = [], []
    trained = train_policy(rows, contiguous(rows.ts, HOUR), _spec(), progress=lambda d, t: progress.append((d, t)),
                           log_metrics=lambda step, values: metrics.append((step, values)))
    assert progress[-1] == (trained.timesteps, 256) and trained.timesteps >= 256
    names = {name for _, values in metrics for name in values}
    assert "episode_reward" in names and any(name.startswith("train/") for name in names)
    assert trained.curve["episode_reward"] and trained.fps > 0
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_the_weights_hash_covers_every_tensor_and_survives_save_and_load(tmp_path):
    from stable_baselines3 import PPO

    rows = _rows()
    trained = train_policy(rows, contiguous(rows.ts, HOUR), _spec())
    trained.model.save(tmp_path / "model.zip")
    assert weights_hash(PPO.load(tmp_path / "model.zip", device="cpu")) == trained.weights_hash
    state = trained.model.policy.state_dict()
    last = sorted(state)[-1]
    with torch.no_grad():
        state[last].view(-1)[0] += 1e-7
    assert weights_hash(trained.model) != trained.weights_hash
