"""MarketEnv: the env checkers, the reward = the trading convention, gaps end episodes, observations = the batch ones."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rl_lifecycle.candles.synthetic import synthetic_arrays
from rl_lifecycle.datasets.builder import DatasetContent
from rl_lifecycle.features.pipeline import compute_features
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.env import MarketEnv, contiguous, observations, segments
from rl_lifecycle.models.spec import parse_model_spec
from rl_lifecycle.trading import ACTION_POSITIONS, step_rewards
from rl_lifecycle.windows import WindowScheme, to_us

HOUR = 3_600_000_000


def _arrays(n: int = 50, k: int = 3, seed: int = 0, gaps: tuple[int, ...] = ()):
    """Random vectors and a random-walk close; each row in `gaps` comes two bars after the row before it."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, k))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    ts = np.arange(n, dtype=np.int64) * HOUR
    for row in gaps:
        ts[row:] += HOUR
    return vectors, close, ts


def _pipeline_content(drop: slice) -> DatasetContent:
    """Warm ta_v2 rows of synthetic candles, as a dataset holds them, with the rows in `drop` missing (a gap)."""
    features = load_feature_set("ta_v2")
    candles = synthetic_arrays(Market("BTCUSDT", "1h"), to_us("2024-01-01"), to_us("2024-02-10"), seed=7)
    frame = compute_features(features, candles, WindowScheme(features.anchor), to_us("2024-01-20"))
    keep = np.ones(len(frame.ts), dtype=bool)
    keep[drop] = False
    keep &= frame.is_warm
    close = candles.close[np.searchsorted(candles.ts, frame.ts)][keep]
    return DatasetContent(
        ts=frame.ts[keep], values=np.ascontiguousarray(frame.values[keep]), is_warm=frame.is_warm[keep],
        missing=frame.missing[keep], close=close, forward_return=np.r_[np.log(close[1:] / close[:-1]), np.nan],
        feature_names=features.feature_names,
    )


@pytest.mark.parametrize("episode_length", [None, 7])
@pytest.mark.parametrize("action_set", ["long_flat", "long_short"])
def test_the_gymnasium_and_sb3_checkers_pass_on_data_with_gaps(action_set, episode_length):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    vectors, close, ts = _arrays(60, gaps=(20, 41))
    env = MarketEnv(vectors, close, contiguous(ts, HOUR), action_set=action_set, episode_length=episode_length)
    check_env(env, skip_render_check=True)
    sb3_check_env(MarketEnv(vectors, close, contiguous(ts, HOUR), action_set=action_set,
                            episode_length=episode_length), warn=True)
    assert env.action_space.n == len(ACTION_POSITIONS[action_set]) and env.observation_space.shape == (4,)


@pytest.mark.parametrize("action_set", ["long_flat", "long_short"])
def test_episode_rewards_are_exactly_the_trading_conventions_rewards(action_set):
    positions = ACTION_POSITIONS[action_set]
    vectors, close, ts = _arrays(40)
    env = MarketEnv(vectors, close, contiguous(ts, HOUR), action_set=action_set, cost_bps=25.0)
    env.reset(seed=1)
    actions = np.random.default_rng(3).integers(0, len(positions), size=39)
    rewards, held = [], []
    for i, action in enumerate(actions):
        _, reward, terminated, truncated, _ = env.step(int(action))
        rewards.append(reward)
        held.append(positions[action])
        assert terminated == (i == 38) and not truncated
    expected = step_rewards(close, np.array(held), 25.0)
    assert np.array_equal(np.array(rewards), expected)  # the same float64 operations, the same bits
    assert sum(rewards) == pytest.approx(expected.sum(), rel=0, abs=1e-12)
    assert abs(expected).max() > 0 and len(set(held)) > 1


def test_observations_along_episodes_are_the_batch_observations_bytes():
    """Across gaps and resets, each observation is `observations(vector of its row, position held)`."""
    vectors, close, ts = _arrays(45, k=5, gaps=(15, 30))
    cont = contiguous(ts, HOUR)
    env = MarketEnv(vectors, close, cont, action_set="long_short", cost_bps=5.0)
    rng = np.random.default_rng(8)
    seen_rows, seen_positions, seen = [], [], []
    row, position = 0, 0
    obs, _ = env.reset(seed=0)
    for start, last in segments(cont, len(vectors)):
        assert row == start and position == 0
        while True:
            seen_rows.append(row), seen_positions.append(position), seen.append(obs)
            action = int(rng.integers(0, 3))
            obs, _, terminated, truncated, _ = env.step(action)
            row, position = row + 1, ACTION_POSITIONS["long_short"][action]
            if terminated:
                assert row == last and not truncated
                seen_rows.append(row), seen_positions.append(position), seen.append(obs)
                break
        obs, _ = env.reset()
        row, position = row + 1, 0  # the next segment starts after the gap
    batch = observations(vectors[seen_rows], np.array(seen_positions, dtype=np.int8))
    assert np.stack(seen).tobytes() == batch.tobytes()
    assert set(seen_positions) == {-1, 0, 1}


def test_a_gap_ends_the_episode_and_no_reward_spans_it():
    vectors, close, ts = _arrays(20, gaps=(10,))
    cont = contiguous(ts, HOUR)
    assert segments(cont, 20).tolist() == [[0, 9], [10, 19]]
    close[10] = close[9] * 2  # a reward across the gap would be log(2)
    env = MarketEnv(vectors, close, cont, cost_bps=0.0)
    first, _ = env.reset(seed=0)
    assert first[:-1].tobytes() == vectors[0].astype(np.float32).tobytes()
    rewards, terminated = [], False
    while not terminated:
        _, reward, terminated, _, _ = env.step(1)
        rewards.append(reward)
    assert len(rewards) == 9 and max(rewards) < 0.1  # rows 0..8 act; row 9's next bar is across the gap
    second, _ = env.reset()
    assert second[:-1].tobytes() == vectors[10].astype(np.float32).tobytes() and second[-1] == 0
    third, _ = env.reset()
    assert third.tobytes() == first.tobytes()  # whole-segment episodes cycle
    again, _ = env.reset()
    restarted, _ = env.reset(seed=0)  # a seeded reset starts the cycle over
    assert again.tobytes() == second.tobytes() and restarted.tobytes() == first.tobytes()


def test_random_sub_windows_are_seeded_stay_in_one_segment_and_truncate_at_their_length():
    vectors, close, ts = _arrays(200, gaps=(90,))
    runs = []
    for seed in (5, 5, 6):
        env = MarketEnv(vectors, close, contiguous(ts, HOUR), episode_length=16, seed=seed)
        starts = []
        for _ in range(6):
            obs, _ = env.reset()
            starts.append(int(np.flatnonzero((vectors.astype(np.float32) == obs[:-1]).all(axis=1))[0]))
            steps, done = 0, False
            while not done:
                _, _, terminated, truncated, _ = env.step(0)
                steps += 1
                done = terminated or truncated
            assert steps == 16 and truncated and not terminated
            assert starts[-1] + 16 <= 89 or starts[-1] >= 90  # never across the gap
        runs.append(starts)
    assert runs[0] == runs[1] != runs[2]


def test_from_dataset_takes_the_specs_settings_on_real_pipeline_rows():
    content = _pipeline_content(drop=slice(100, 103))
    cont = contiguous(content.ts, HOUR)
    assert (~cont).sum() == 1
    spec = parse_model_spec({"name": "t", "total_timesteps": 10, "feature_set": "ta_v2", "action_set": "long_short",
                             "cost_bps": 3.0, "episode_length": 50, "seed": 4}, "test")
    env = MarketEnv.from_dataset(content, cont, spec)
    assert env.action_space.n == 3 and env.observation_space.shape == (len(content.feature_names) + 1,)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=4)
    row = int(np.flatnonzero((observations(content.values, np.zeros(len(content), np.int8)) == obs).all(axis=1))[0])
    _, reward, *_ = env.step(2)  # long
    assert reward == step_rewards(content.close[row:row + 2], np.array([1]), 3.0)[0]
    with pytest.raises(ValueError, match="not both"):
        MarketEnv.from_dataset(content, cont, spec, cost_bps=1.0)


def test_bad_inputs_are_refused_by_name():
    vectors, close, ts = _arrays(10)
    cont = contiguous(ts, HOUR)
    bad_vectors = vectors.copy()
    bad_vectors[3, 1] = np.nan
    with pytest.raises(ValueError, match="warm rows only"):
        MarketEnv(bad_vectors, close, cont)
    with pytest.raises(ValueError, match="action_set 'short_only'"):
        MarketEnv(vectors, close, cont, action_set="short_only")
    with pytest.raises(ValueError, match="cost_bps"):
        MarketEnv(vectors, close, cont, cost_bps=-1.0)
    with pytest.raises(ValueError, match="close prices"):
        MarketEnv(vectors, np.r_[close[:-1], 0.0], cont)
    with pytest.raises(ValueError, match="nothing to act on"):
        MarketEnv(vectors[:3], close[:3], np.zeros(2, dtype=bool))
