"""Small, exact policies that implement `ActsOnVectors` without a trained model.

They replay known positions or apply one transparent rule, so backtests, parity tests and
benchmarks can be checked by hand. Both are picklable (fold backtests run in spawned processes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedPositions:
    """Takes the given target position at row i, whatever it holds (a replay of a known sequence)."""

    sequence: tuple[int, ...]
    fingerprint: str = "any"

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.sequence) | {0}))

    def act(self, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if len(vectors) != len(self.sequence):
            raise ValueError(f"FixedPositions holds {len(self.sequence)} positions, asked for {len(vectors)} rows")
        return np.asarray(self.sequence, dtype=np.int8)


@dataclass(frozen=True)
class FeatureSignPolicy:
    """Long when feature `feature` > 0; when `allow_short`, short when < 0; otherwise flat."""

    feature: int = 0
    allow_short: bool = False
    fingerprint: str = "any"

    @property
    def positions(self) -> tuple[int, ...]:
        return (-1, 0, 1) if self.allow_short else (0, 1)

    def act(self, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
        signal = np.asarray(vectors, dtype=np.float64)[:, self.feature]
        out = (signal > 0).astype(np.int8)
        if self.allow_short:
            out[signal < 0] = -1
        return out
