"""The dataset spec: what a training dataset is made of, validated, with a canonical JSON form."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import CADENCES, Window, WindowScheme

# Windows a training dataset spans (ending at its partition's window) when neither the run nor the market
# names a span (`market add ... --span-windows N`; `--span-windows` on materialize, train and evaluate).
# The span is the spec's first_window .. last_window, part of the canonical JSON and so of dataset_hash.
DEFAULT_SPAN_WINDOWS = 3


class DatasetSpec(BaseModel):
    """A market, a span of windows, a feature set, and the label/reward settings later stages need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    market: str
    first_window: str
    last_window: str
    feature_set: str
    window_cadence: str = "monthly"
    forward_return_horizon: int = Field(default=1, ge=1, le=10_000, description="bars ahead for the label; the minimum purge")
    transaction_cost_bps: float = Field(default=10.0, ge=0.0, le=1_000.0, description="cost per unit of turnover, for rewards")
    # The market's fill convention when the dataset was built (`trading.FILLS`; `market add ... --fill`): the env
    # rewards, the backtest fills and the paper book follow it. Part of the canonical JSON (so of dataset_hash)
    # when it is not `close`, so datasets stored before the field keep their hashes.
    fill: str = Field(default="close", description="fill convention: close or next_open")

    @field_validator("market")
    @classmethod
    def _normalise_market(cls, value: str) -> str:
        return Market.parse(value).key

    @field_validator("fill")
    @classmethod
    def _known_fill(cls, value: str) -> str:
        from rl_lifecycle.trading import FILLS

        if value not in FILLS:
            raise ValueError(f"must be one of {FILLS}")
        return value

    @field_validator("window_cadence")
    @classmethod
    def _known_cadence(cls, value: str) -> str:
        if value not in CADENCES:
            raise ValueError(f"must be one of {CADENCES}")
        return value

    @model_validator(mode="after")
    def _span_is_ordered(self) -> DatasetSpec:
        self.windows()  # validates both keys and their order
        return self

    @classmethod
    def create(cls, **fields) -> DatasetSpec:
        """Build a spec, turning validation errors into one message naming every bad field."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
            raise UserInputError(f"invalid dataset spec: {problems}") from None

    @property
    def parsed_market(self) -> Market:
        return Market.parse(self.market)

    @property
    def scheme(self) -> WindowScheme:
        return WindowScheme(self.window_cadence)

    def windows(self) -> list[Window]:
        return self.scheme.range(self.first_window, self.last_window)

    @property
    def min_purge_bars(self) -> int:
        """Labels look this many bars ahead, so folds must purge at least this many bars."""
        return self.forward_return_horizon

    def canonical_json(self) -> str:
        fields = self.model_dump(mode="json")
        if fields["fill"] == "close":  # the convention before the field existed: the same hashes as then
            del fields["fill"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))
