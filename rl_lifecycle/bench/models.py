"""Benchmarks of the training stage: env overhead under SB3, and batched inference throughput."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

from rl_lifecycle.models.env import MarketEnv, contiguous
from rl_lifecycle.models.spec import parse_model_spec
from rl_lifecycle.models.trainer import build_model, deterministic_torch

HOUR = 3_600_000_000
FEATURES = 17  # as many as ta_v2


class TrivialEnv(gym.Env):
    """Same spaces as MarketEnv, no work: a constant observation, zero reward, fixed-length episodes."""

    def __init__(self, observation_space, action_space, episode_length: int):
        self.observation_space, self.action_space, self._length = observation_space, action_space, episode_length
        self._obs = np.zeros(observation_space.shape, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs.copy(), {}

    def step(self, action):
        self._t += 1
        return self._obs.copy(), 0.0, self._t >= self._length, False, {}


def _market_arrays(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return rng.normal(size=(n, FEATURES)), close, np.arange(n, dtype=np.int64) * HOUR


def _fps(env, timesteps: int) -> float:
    spec = parse_model_spec({"name": "bench", "algorithm": "PPO", "total_timesteps": timesteps, "seed": 0,
                             "feature_set": "ta_v2", "hyperparameters": {"n_steps": 1024, "batch_size": 64, "n_epochs": 4}},
                            "bench")
    with deterministic_torch():
        model = build_model(spec, env)
        started = time.perf_counter()
        model.learn(total_timesteps=timesteps)
        return timesteps / (time.perf_counter() - started)


def bench_sb3_fps(timesteps: int = 8192, repeats: int = 3) -> dict:
    """PPO fps on MarketEnv / fps on a trivial env with the same spaces (interleaved repeats, medians)."""
    vectors, close, ts = _market_arrays(20_000)
    market, trivial = [], []
    for _ in range(repeats):
        env = MarketEnv(vectors, close, contiguous(ts, HOUR), episode_length=512, seed=0)
        market.append(_fps(env, timesteps))
        trivial.append(_fps(TrivialEnv(env.observation_space, env.action_space, 512), timesteps))
    value, baseline = float(np.median(market)), float(np.median(trivial))
    ratio = value / baseline
    return {"value": round(value, 1), "unit": "steps/s", "baseline": round(baseline, 1), "ratio": round(ratio, 3),
            "target": ">= 0.9", "met": ratio >= 0.9, "timesteps": timesteps, "repeats": repeats}


def bench_inference(rows: int = 100_000, repeats: int = 5) -> dict:
    """Batched `Policy.act` over `rows` vectors (one torch thread, as decisions and backtests run it)."""
    from rl_lifecycle.models.policy import Policy

    vectors, close, ts = _market_arrays(rows)
    spec = parse_model_spec({"name": "bench", "total_timesteps": 1, "feature_set": "ta_v2"}, "bench")
    model = build_model(spec, MarketEnv(vectors[:1000], close[:1000], contiguous(ts[:1000], HOUR)))
    policy = Policy(model, spec, "bench", tuple(f"f{i}" for i in range(FEATURES)))
    positions = np.zeros(rows, dtype=np.int8)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        policy.act(vectors, positions, fingerprint="bench")
        times.append(time.perf_counter() - started)
    value = rows / float(np.median(times))
    return {"value": round(value), "unit": "rows/s", "baseline": None, "ratio": None, "target": ">= 1,000,000",
            "met": value >= 1_000_000, "rows": rows}
