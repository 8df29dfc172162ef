"""The trading convention shared by the env, the backtest and live decisions: one definition.

A position is a target exposure in {-1, 0, 1} (short, flat, long) as a fraction of equity.
The position chosen at bar t's close is filled at close[t] and held over bar t+1, so its reward is
`position * log(close[t+1] / close[t]) - cost * |position - previous position|`, with the cost in
basis points of the traded notional (fee + slippage) charged when the position changes.

That is the `close` fill convention. A market's convention (`FILLS`, stored with the market: `market add
... --fill`) is either `close` or `next_open`: the position chosen at bar t's close is filled at open[t+1],
so it earns `log(close[t+1] / open[t+1])` over bar t+1 and the gap `log(open[t+1] / close[t])` still
belongs to the position held before (`step_rewards(..., open_=open)`).
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

ActionSet = Literal["long_flat", "long_short"]

# Action index -> target position. Discrete actions index this table.
ACTION_POSITIONS: dict[str, tuple[int, ...]] = {
    "long_flat": (0, 1),
    "long_short": (-1, 0, 1),
}
POSITION_NAMES = {-1: "short", 0: "flat", 1: "long"}

# Fill conventions: where the position decided at bar t's close is filled.
FILL_CLOSE = "close"  # at close[t]: a market that trades around the clock (the next bar opens at that instant)
FILL_NEXT_OPEN = "next_open"  # at open[t+1]: a market whose bar's close may be its close (a session, a week)
FILLS = (FILL_CLOSE, FILL_NEXT_OPEN)


def default_fill(calendar: str) -> str:
    """The fill convention a market on `calendar` gets unless it names one: `close` for crypto (always open:
    bar t+1 opens at the instant bar t closes), `next_open` for fx and exchange calendars. FX trades through
    the week, where open[t+1] is close[t] to a pip, but its week's last bar closes with the market: a decision
    made from that close can only trade at the next week's open, as an exchange's last bar of a session."""
    return FILL_CLOSE if calendar == "crypto" else FILL_NEXT_OPEN


def check_fill(fill: str, what: str = "--fill") -> str:
    """`fill` if it is a known convention, else ValueError naming `what` and the value."""
    if fill not in FILLS:
        raise ValueError(f"{what} {fill!r} is invalid: expected one of {', '.join(FILLS)}")
    return fill


def cost_fraction(cost_bps: float) -> float:
    return float(cost_bps) / 10_000.0


def step_rewards(
    close: np.ndarray, positions: np.ndarray, cost_bps: float, initial_position: int = 0,
    open_: np.ndarray | None = None,
) -> np.ndarray:
    """Per-step rewards of holding `positions[t]` over bar t+1 (len(close) == len(positions) + 1).

    With `open_` (the bars' opens, one per close), the `next_open` convention: positions[t] is filled at
    open[t+1], earning log(close[t+1] / open[t+1]); the gap log(open[t+1] / close[t]) goes to the previous."""
    close = np.asarray(close, dtype=np.float64)
    held = np.asarray(positions, dtype=np.float64)
    if len(close) != len(held) + 1:
        raise ValueError(f"need one more close than positions, got {len(close)} closes for {len(held)} positions")
    previous = np.concatenate(([float(initial_position)], held[:-1]))
    cost = cost_fraction(cost_bps) * np.abs(held - previous)
    if open_ is None:
        return held * np.log(close[1:] / close[:-1]) - cost
    open_ = np.asarray(open_, dtype=np.float64)
    if len(open_) != len(close):
        raise ValueError(f"need one open per close, got {len(open_)} opens for {len(close)} closes")
    return previous * np.log(open_[1:] / close[:-1]) + held * np.log(close[1:] / open_[1:]) - cost


class ActsOnVectors(Protocol):
    """What the env's evaluation, the backtest strategy and live decisions need from a policy."""

    fingerprint: str  # feature fingerprint the policy was trained on; vectors must match it
    positions: tuple[int, ...]  # the target positions its actions map to, e.g. (0, 1)

    def act(self, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Target positions (int8) for rows of canonical float64 vectors held at the given current positions."""
        ...


def rollout(policy: ActsOnVectors, vectors: np.ndarray, initial_position: int = 0) -> np.ndarray:
    """The positions a policy takes bar after bar, each decision seeing the position the last one left.

    Exact and batched: the observation depends on the past only through the current position, which
    takes a handful of values, so the policy is asked once per possible position over all rows (a
    few batched forward passes), and the sequential walk only picks from those answers.
    """
    n = len(vectors)
    answers = {p: policy.act(vectors, np.full(n, p, dtype=np.int8)) for p in policy.positions}
    taken = np.empty(n, dtype=np.int8)
    current = int(initial_position)
    for i in range(n):
        current = int(answers[current][i])
        taken[i] = current
    return taken
