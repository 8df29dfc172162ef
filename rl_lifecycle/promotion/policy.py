"""The promotion gate policy: thresholds read from YAML (defaults in `policy.yaml`), validated strictly.

An unknown key is refused by name, so a typo cannot silently leave a gate at its default.
A threshold of null turns its gate off.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rl_lifecycle.config_files import read_yaml, validated
from rl_lifecycle.errors import UserInputError

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.yaml")


class FoldWins(BaseModel):
    """How many paired folds the challenger must win: a share of them, or a count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> FoldWins:
        if (self.fraction is None) == (self.count is None):
            raise ValueError(
                f"give exactly one of fraction or count (got fraction={self.fraction!r}, "
                f"count={self.count!r})"
            )
        return self

    def required(self, n_folds: int) -> int:
        """Wins needed out of `n_folds` paired folds (a count larger than n can never be met)."""
        if self.count is not None:
            return self.count
        return max(1, math.ceil(self.fraction * n_folds - 1e-9))

    def describe(self) -> str:
        return f"{self.count} folds" if self.count is not None else f"{self.fraction:g} of the folds"


class PairedTestRule(BaseModel):
    """The paired test on every test bar (`rl_lifecycle.promotion.paired`): which statistic, at what level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)  # the challenger must be better at this one-sided level
    statistic: Literal["sharpe", "mean"] = "sharpe"  # Sharpe difference (Ledoit & Wolf) or mean return difference
    replications: int = Field(default=999, ge=99, le=100_000)  # bootstrap resamples


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # paired (challenger minus champion)
    paired_test: PairedTestRule | None = Field(default_factory=PairedTestRule)
    min_median_sharpe_delta: float | None = None  # off by default: the calibration does not justify fold counts
    min_median_return_delta: float | None = None
    max_drawdown_worsening: float | None = Field(default=0.05, ge=0.0)
    min_fold_wins: FoldWins | None = None
    # absolute
    max_failed_folds: int = Field(default=0, ge=0)
    min_excess_return_over_flat: float | None = 0.0
    min_excess_return_over_buy_and_hold: float | None = 0.0
    min_trades_per_fold: int | None = Field(default=1, ge=0)
    min_psr: float | None = Field(default=0.9, ge=0.0, le=1.0)
    min_dsr: float | None = Field(default=0.95, ge=0.0, le=1.0)
    max_pbo: float | None = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _finite(self) -> GatePolicy:
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: must be a finite number (got {value!r})")
        return self


def parse_policy(data: Any, source: str = "policy") -> GatePolicy:
    return validated(GatePolicy, {} if data is None else data, "gate policy", source)


def load_policy(path: str | Path | None = None) -> GatePolicy:
    """The policy in `path`, or the shipped defaults."""
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    if not path.is_file():
        raise UserInputError(f"gate policy file {str(path)!r} not found")
    return parse_policy(read_yaml(path, "gate policy"), str(path))
