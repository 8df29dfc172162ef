"""`MarketEnv`: a gymnasium env over a training dataset's canonical vectors.

Observation at row t: the canonical vector as float32, then the position currently held. The
action picks a target position (`trading.ACTION_POSITIONS`); it is filled at close[t] and held
over bar t+1, and the reward is `trading.step_rewards` for that step, the same accounting the
backtest charges. Only rows whose next row continues them can be acted on: a gap ends an episode,
so no reward spans missing bars. Steps only index preallocated arrays.

`continues[i]` comes from the market's trading calendar (`TradingCalendar.continues`, as
`models.service.training_data` gives it): a close of the market (a night, a weekend, a holiday) between
two rows is no gap, so an episode runs across it and a position held over it earns
`log(close after / close before)`, the first bar after the close against the last bar before it, as the
backtest and the accountant, which hold positions from bar to bar, book it. A bar missing while the
market is open is a gap.

**Fill convention** (`trading.FILLS`, the market's): without `opens`, `close` as above. With `opens` (each
row's open), `next_open`: the action at row t is filled at open[t+1], so the step's reward is
`previous x log(open[t+1] / close[t]) + target x log(close[t+1] / open[t+1]) - cost x |target - previous|`:
the gap from bar t's close to the next open (a night, a weekend) still belongs to the position held before,
as the backtest's fill at the next open books it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from rl_lifecycle.trading import ACTION_POSITIONS, FILL_CLOSE, FILL_NEXT_OPEN, cost_fraction

if TYPE_CHECKING:
    from rl_lifecycle.models.spec import ModelSpec


def contiguous(ts: np.ndarray, interval_us: int) -> np.ndarray:
    """bool[n-1]: row i+1 is the bar right after row i: the 24/7 (crypto) calendar's `continues`, for arrays
    without a market. A market's rows take their calendar's (`TradingCalendar.continues`)."""
    return np.diff(np.asarray(ts, dtype=np.int64)) == interval_us


def observations(vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The env's observations for rows of vectors held at `positions`, in one batch: float32 [n, k+1]."""
    vectors = np.asarray(vectors)
    out = np.empty((len(vectors), vectors.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = vectors
    out[:, -1] = positions
    return out


def segments(continues: np.ndarray, n_rows: int) -> np.ndarray:
    """[start, last) row ranges of contiguous runs with at least one actionable step (last = final row)."""
    breaks = np.flatnonzero(~np.asarray(continues, dtype=bool)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [n_rows])) - 1  # the final row of each run has no next bar to reward
    keep = ends > starts
    return np.stack([starts[keep], ends[keep]], axis=1).astype(np.int64)


@dataclass(frozen=True)
class EpisodeSummary:
    """How a dataset's rows fall into training episodes under the market's calendar."""

    episodes: int
    longest_steps: int
    steps_across_closes: int  # steps over a close of the market (a night, weekend, holiday): held, not broken
    gaps: int  # missing bars while the market is open: each ends an episode

    def describe(self) -> str:
        return (f"{self.episodes} episode{'s' if self.episodes != 1 else ''} (longest {self.longest_steps} steps), "
                f"{self.steps_across_closes} steps across market closes, {self.gaps} gap{'s' if self.gaps != 1 else ''}")


def episode_summary(ts: np.ndarray, continues: np.ndarray, interval_us: int) -> EpisodeSummary:
    """The episodes `MarketEnv` cuts from rows at open times `ts` with the calendar's `continues`."""
    ts, continues = np.asarray(ts, dtype=np.int64), np.asarray(continues, dtype=bool)
    runs = segments(continues, len(ts))
    lengths = runs[:, 1] - runs[:, 0]
    return EpisodeSummary(episodes=len(runs), longest_steps=int(lengths.max()) if len(runs) else 0,
                          steps_across_closes=int((continues & (np.diff(ts) > interval_us)).sum()),
                          gaps=int((~continues).sum()))


class MarketEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        vectors: np.ndarray,
        close: np.ndarray,
        continues: np.ndarray,
        *,
        action_set: str = "long_flat",
        cost_bps: float = 10.0,
        episode_length: int | None = None,
        seed: int | None = None,
        opens: np.ndarray | None = None,
    ):
        if action_set not in ACTION_POSITIONS:
            raise ValueError(f"action_set {action_set!r} is not one of {', '.join(ACTION_POSITIONS)}")
        if not cost_bps >= 0:
            raise ValueError(f"cost_bps must be >= 0, got {cost_bps!r}")
        if episode_length is not None and episode_length < 1:
            raise ValueError(f"episode_length must be >= 1 bar or None, got {episode_length!r}")
        vectors = np.asarray(vectors, dtype=np.float64)
        n = len(vectors)
        if n < 2 or len(close) != n or len(continues) != n - 1:
            raise ValueError(f"need >= 2 rows with matching close/continues, got {n}, {len(close)}, {len(continues)}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors hold NaN or infinite values: build the env from warm rows only")
        close = np.asarray(close, dtype=np.float64)
        if not (np.isfinite(close) & (close > 0)).all():
            raise ValueError("close prices must be finite and positive (rewards are log returns)")
        self._obs = observations(vectors, np.zeros(n, dtype=np.int8))  # position column rewritten per step
        # reward = previous x gap[t] + target x held[t] - cost x |target - previous|
        gap, held = np.zeros(n), np.zeros(n)
        if opens is None:  # fill at close[t]: the target earns close to close
            held[:-1] = np.log(close[1:] / close[:-1])
        else:  # fill at open[t+1]: the previous position earns the gap to it, the target the bar from it
            opens = np.asarray(opens, dtype=np.float64)
            if len(opens) != n or not (np.isfinite(opens) & (opens > 0)).all():
                raise ValueError(f"opens: need {n} finite positive opens (fill next_open), got {len(opens)}")
            gap[:-1] = np.log(opens[1:] / close[:-1])
            held[:-1] = np.log(close[1:] / opens[1:])
        self._log_return = held.tolist()  # Python floats: scalar steps avoid numpy scalar overhead
        self._gap = gap.tolist() if opens is not None else None
        self.fill = FILL_CLOSE if opens is None else FILL_NEXT_OPEN
        self._segments = segments(continues, n)
        if len(self._segments) == 0:
            raise ValueError("no two consecutive bars: nothing to act on")
        self._positions = [float(p) for p in ACTION_POSITIONS[action_set]]
        self._cost = cost_fraction(cost_bps)
        self._episode_length = episode_length
        self.action_space = gym.spaces.Discrete(len(self._positions))
        k = vectors.shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(k + 1,), dtype=np.float32)
        self._next_segment = 0
        self._row = self._last = self._segment_last = 0
        self._position = 0.0
        if seed is not None:
            self.reset(seed=seed)

    @classmethod
    def from_dataset(cls, content, continues: np.ndarray, spec: ModelSpec | None = None, *,
                     action_set: str | None = None, cost_bps: float | None = None,
                     episode_length: int | None = None, seed: int | None = None,
                     opens: np.ndarray | None = None) -> MarketEnv:
        """An env over a dataset's rows (`DatasetContent`), configured by a model spec or by the keywords;
        `opens` (the rows' opens) for the `next_open` fill convention (`TrainingData.open`)."""
        if spec is not None:
            given = [name for name, value in (("action_set", action_set), ("cost_bps", cost_bps),
                                              ("episode_length", episode_length), ("seed", seed)) if value is not None]
            if given:
                raise ValueError(f"give a model spec or {', '.join(given)}, not both")
            action_set, cost_bps, episode_length, seed = (spec.action_set, spec.cost_bps, spec.episode_length,
                                                          spec.seed)
        if action_set is None or cost_bps is None:
            raise ValueError("need a model spec, or action_set and cost_bps")
        return cls(content.values, content.close, continues, action_set=action_set, cost_bps=cost_bps,
                   episode_length=episode_length, seed=seed, opens=opens)

    def _observation(self) -> np.ndarray:
        obs = self._obs[self._row].copy()
        obs[-1] = self._position
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:  # a seeded reset starts over: the same seed gives the same episodes
            self._next_segment = 0
        if self._episode_length is None:  # whole segments, in order, cycling
            start, last = self._segments[self._next_segment % len(self._segments)]
            seg_last = last
            self._next_segment += 1
        else:  # a seeded random sub-window of one segment
            lengths = self._segments[:, 1] - self._segments[:, 0]
            index = int(self.np_random.choice(len(lengths), p=lengths / lengths.sum()))
            seg_start, seg_last = self._segments[index]
            span = min(self._episode_length, seg_last - seg_start)
            start = seg_start + int(self.np_random.integers(0, seg_last - seg_start - span + 1))
            last = start + span
        self._row, self._last, self._segment_last, self._position = int(start), int(last), int(seg_last), 0.0
        return self._observation(), {}

    def step(self, action):
        target = self._positions[int(action)]
        if self._gap is None:
            reward = target * self._log_return[self._row] - self._cost * abs(target - self._position)
        else:  # the order of trading.step_rewards' operations: the same floats
            reward = (self._position * self._gap[self._row] + target * self._log_return[self._row]
                      - self._cost * abs(target - self._position))
        self._position = target
        self._row += 1
        terminated = self._row >= self._segment_last  # a gap or the end of the data: nothing follows
        truncated = not terminated and self._row >= self._last  # the sub-window's length is reached
        return self._observation(), reward, terminated, truncated, {}
