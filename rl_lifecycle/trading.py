"""The trading convention shared by the env, the backtest and live decisions: one definition.

A position is a target exposure in {-1, 0, 1} (short, flat, long) as a fraction of equity.
The position chosen at bar t's close is filled at close[t] and held over bar t+1, so its reward is
`position * log(close[t+1] / close[t]) - cost * |position - previous position|`, with the cost in
basis points of the traded notional (fee + slippage) charged when the position changes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ActionSet = Literal["long_flat", "long_short"]

# Action index -> target position. Discrete actions index this table.
ACTION_POSITIONS: dict[str, tuple[int, ...]] = {
    "long_flat": (0, 1),
    "long_short": (-1, 0, 1),
}
POSITION_NAMES = {-1: "short", 0: "flat", 1: "long"}


def cost_fraction(cost_bps: float) -> float:
    return float(cost_bps) / 10_000.0


def step_rewards(
    close: np.ndarray, positions: np.ndarray, cost_bps: float, initial_position: int = 0
) -> np.ndarray:
    """Per-step rewards of holding `positions[t]` over bar t+1 (len(close) == len(positions) + 1)."""
    close = np.asarray(close, dtype=np.float64)
    held = np.asarray(positions, dtype=np.float64)
    if len(close) != len(held) + 1:
        raise ValueError(f"need one more close than positions, got {len(close)} closes for {len(held)} positions")
    previous = np.concatenate(([float(initial_position)], held[:-1]))
    return held * np.log(close[1:] / close[:-1]) - cost_fraction(cost_bps) * np.abs(held - previous)
