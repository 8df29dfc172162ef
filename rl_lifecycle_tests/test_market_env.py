"""MarketEnv: the env checkers, the reward = the trading convention, gaps end episodes, no lookahead in obs."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rl_lifecycle.models.env import MarketEnv, contiguous, observations, segments
from rl_lifecycle.trading import step_rewards

HOUR = 3_600_000_000


def _arrays(n: int = 50, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, k))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    ts = np.arange(n, dtype=np.int64) * HOUR
    return vectors, close, ts


def test_the_gymnasium_and_sb3_checkers_pass():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    vectors, close, ts = _arrays()
    for action_set in ("long_flat", "long_short"):
        check_env(MarketEnv(vectors, close, contiguous(ts, HOUR), action_set=action_set), skip_render_check=True)
        sb3_check_env(MarketEnv(vectors, close, contiguous(ts, HOUR), action_set=action_set, episode_length=10), warn=True)


@pytest.mark.parametrize("action_set,positions", [("long_flat", (0, 1)), ("long_short", (-1, 0, 1))])
def test_episode_rewards_are_the_trading_conventions_rewards(action_set, positions):
    vectors, close, ts = _arrays(40)
    env = MarketEnv(vectors, close, contiguous(ts, HOUR), action_set=action_set, cost_bps=25.0)
    env.reset(seed=1)
    rng = np.random.default_rng(3)
    actions = rng.integers(0, len(positions), size=39)
    rewards, held = [], []
    for i, action in enumerate(actions):
        obs, reward, terminated, truncated, _ = env.step(int(action))
        rewards.append(reward)
        held.append(positions[action])
        assert obs[-1] == positions[action]  # the observation carries the position now held
        assert obs[:-1].tobytes() == vectors[i + 1].astype(np.float32).tobytes()
        assert terminated == (i == 38) and not truncated
    expected = step_rewards(close, np.array(held), 25.0)
    assert np.allclose(rewards, expected, rtol=0, atol=1e-15)


def test_a_gap_ends_the_episode_and_no_reward_spans_it():
    vectors, close, ts = _arrays(20)
    ts[10:] += 5 * HOUR  # five bars missing between rows 9 and 10
    cont = contiguous(ts, HOUR)
    assert segments(cont, 20).tolist() == [[0, 9], [10, 19]]
    env = MarketEnv(vectors, close, cont)
    first, _ = env.reset(seed=0)
    assert first[:-1].tobytes() == vectors[0].astype(np.float32).tobytes()
    steps = 0
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(1)
        steps += 1
    assert steps == 9  # rows 0..8 act; row 9's next bar is across the gap
    second, _ = env.reset()
    assert second[:-1].tobytes() == vectors[10].astype(np.float32).tobytes() and second[-1] == 0


def test_random_sub_windows_are_seeded_and_truncate_at_their_length():
    vectors, close, ts = _arrays(200)
    starts = []
    for _ in range(2):
        env = MarketEnv(vectors, close, contiguous(ts, HOUR), episode_length=16, seed=5)
        run = []
        for _ in range(3):
            obs, _ = env.reset()
            run.append(obs.tobytes())
            for step in range(16):
                _, _, terminated, truncated, _ = env.step(0)
                if terminated or truncated:
                    break
            assert step == 15 and (truncated or terminated)
        starts.append(run)
    assert starts[0] == starts[1]


def test_batch_observations_equal_the_envs():
    vectors, close, ts = _arrays(30)
    positions = np.random.default_rng(0).integers(0, 2, 30).astype(np.int8)
    batch = observations(vectors, positions)
    assert batch.dtype == np.float32 and batch.shape == (30, 4)
    assert np.array_equal(batch[:, :3], vectors.astype(np.float32)) and np.array_equal(batch[:, 3], positions)


def test_unwarm_rows_are_refused():
    vectors, close, ts = _arrays(10)
    vectors[3, 1] = np.nan
    with pytest.raises(ValueError, match="warm rows only"):
        MarketEnv(vectors, close, contiguous(ts, HOUR))
