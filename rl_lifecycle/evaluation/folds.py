"""Walk-forward folds over a dataset's rows: purged and embargoed, pure and reproducible.

Rows are dataset row indices (0..n_rows-1, in time order). Every range is half-open [start, end).
The test ranges are consecutive blocks of `test_size` rows at the end of the data, in order. A
fold trains only on rows before its test range:

* `expanding`: every row from 0 up to the purge; `rolling`: the `train_size` rows before the purge.
* **purge**: the `purge_bars` rows right before the test range are dropped, so no training row's
  label window [t, t + label_horizon] reaches the test range (purge < label horizon is refused).
* **embargo**: the `embargo_bars` rows right after *every earlier* test range are dropped from the
  training rows (later folds train across earlier test ranges). Walk-forward training never sees
  rows after its own test range, so strictly it needs no embargo; we apply it to every test range,
  as the purged-CV definition does, so that "no training row lies within the embargo after any test
  range" holds for the whole fold set and `embargo_bars` keeps one meaning across schemes.

`make_folds(n_rows, config, label_horizon)` is a function of its arguments alone, and
`verify_folds` re-derives every invariant from stored ranges (the `folds_leak_free` check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rl_lifecycle.errors import UserInputError

Range = tuple[int, int]
MIN_TEST_SIZE = 2  # a test range needs two bars for one return


class FoldConfig(BaseModel):
    """How to cut a dataset into walk-forward folds; sizes in bars (dataset rows)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_folds: int = Field(default=3, ge=1, le=1_000)
    scheme: Literal["expanding", "rolling"] = "expanding"
    train_size: int | None = Field(default=None, ge=1, description="rows per training window; rolling only")
    test_size: int | None = Field(
        default=None, ge=MIN_TEST_SIZE, description="rows per test range; None: the largest that fits n_folds"
    )
    purge_bars: int = Field(default=1, ge=0)
    embargo_bars: int = Field(default=0, ge=0)
    min_train_size: int = Field(default=100, ge=1, description="fewest training rows a fold may have")

    @model_validator(mode="after")
    def _train_size_matches_scheme(self) -> FoldConfig:
        if self.scheme == "rolling" and self.train_size is None:
            raise ValueError("train_size=None: the rolling scheme needs a train_size")
        if self.scheme == "expanding" and self.train_size is not None:
            raise ValueError(f"train_size={self.train_size}: only the rolling scheme takes a train_size")
        if self.train_size is not None and self.train_size < self.min_train_size:
            raise ValueError(f"train_size={self.train_size} is below min_train_size={self.min_train_size}")
        return self

    @classmethod
    def create(cls, **fields) -> FoldConfig:
        """Build a config; every problem becomes one UserInputError naming the field and its value."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = ".".join(map(str, error["loc"]))
                if field:
                    problems.append(f"{field}={error.get('input')!r}: {error['msg']}")
                else:  # model-level checks name their field and value in the message
                    problems.append(error["msg"].removeprefix("Value error, "))
            raise UserInputError("invalid fold config: " + "; ".join(problems)) from None

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Fold:
    index: int
    train_ranges: tuple[Range, ...]
    test_range: Range

    @property
    def train_rows(self) -> int:
        return sum(end - start for start, end in self.train_ranges)

    @property
    def test_rows(self) -> int:
        return self.test_range[1] - self.test_range[0]

    def to_json(self) -> dict:
        return {"index": self.index, "train_ranges": [list(r) for r in self.train_ranges],
                "test_range": list(self.test_range)}

    @classmethod
    def from_json(cls, data: dict) -> Fold:
        return cls(int(data["index"]), tuple((int(s), int(e)) for s, e in data["train_ranges"]),
                   (int(data["test_range"][0]), int(data["test_range"][1])))


def _subtract(span: Range, holes: list[Range]) -> tuple[Range, ...]:
    """`span` minus the (sorted, disjoint) `holes`, as ordered non-empty ranges."""
    pieces, cursor = [], span[0]
    for start, end in holes:
        start, end = max(start, span[0]), min(end, span[1])
        if start >= end:
            continue
        if start > cursor:
            pieces.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < span[1]:
        pieces.append((cursor, span[1]))
    return tuple(pieces)


def _layout(n_rows: int, config: FoldConfig, n_folds: int, test_size: int) -> list[Fold] | None:
    """The folds for this many folds of this size, or None when they do not fit the data."""
    first_test = n_rows - n_folds * test_size
    if first_test < 0:
        return None
    folds = []
    for k in range(n_folds):
        test = (first_test + k * test_size, first_test + (k + 1) * test_size)
        train_end = test[0] - config.purge_bars
        train_start = 0 if config.scheme == "expanding" else train_end - config.train_size
        if train_start < 0 or train_end <= train_start:
            return None
        embargoes = [(first_test + (j + 1) * test_size, first_test + (j + 1) * test_size + config.embargo_bars)
                     for j in range(k)] if config.embargo_bars else []
        train = _subtract((train_start, train_end), embargoes)
        fold = Fold(k, train, test)
        if fold.train_rows < config.min_train_size:
            return None
        folds.append(fold)
    return folds


def _check_purge(config: FoldConfig, label_horizon: int) -> None:
    if label_horizon < 0:
        raise UserInputError(f"label_horizon={label_horizon}: must be >= 0")
    if config.purge_bars < label_horizon:
        raise UserInputError(
            f"purge_bars={config.purge_bars} is below the dataset's label horizon of {label_horizon} bars: "
            f"training labels would look into the test range; use purge_bars >= {label_horizon}"
        )


def folds_that_fit(n_rows: int, config: FoldConfig, label_horizon: int) -> int:
    """The most folds (<= config.n_folds) of the configured test size the data holds (0 when none)."""
    _check_purge(config, label_horizon)
    for n_folds in range(config.n_folds, 0, -1):
        size = config.test_size or _largest_test_size(n_rows, config, n_folds)
        if size is not None and _layout(n_rows, config, n_folds, size) is not None:
            return n_folds
    return 0


def _largest_test_size(n_rows: int, config: FoldConfig, n_folds: int) -> int | None:
    """The largest test size for which `n_folds` folds fit (None when not even MIN_TEST_SIZE does)."""
    need_before = config.purge_bars + (config.train_size or config.min_train_size)
    size = (n_rows - need_before) // n_folds
    while size >= MIN_TEST_SIZE:  # embargo holes can cost a few sizes; the first fit is the largest
        if _layout(n_rows, config, n_folds, size) is not None:
            return size
        size -= 1
    return None


def make_folds(n_rows: int, config: FoldConfig, label_horizon: int) -> list[Fold]:
    """The walk-forward folds of `n_rows` rows; refuses a purge below the label horizon and data too short."""
    _check_purge(config, label_horizon)
    if n_rows < 0:
        raise UserInputError(f"n_rows={n_rows}: must be >= 0")
    size = config.test_size or _largest_test_size(n_rows, config, config.n_folds)
    folds = None if size is None else _layout(n_rows, config, config.n_folds, size)
    if folds is None:
        fit = folds_that_fit(n_rows, config, label_horizon)
        train = (f"rolling train_size={config.train_size}" if config.scheme == "rolling"
                 else f"min_train_size={config.min_train_size}")
        test = f"test_size={config.test_size}" if config.test_size else f"test_size >= {MIN_TEST_SIZE}"
        raise UserInputError(
            f"n_folds={config.n_folds}: {n_rows} rows cannot hold {config.n_folds} folds with {test}, {train}, "
            f"purge_bars={config.purge_bars}, embargo_bars={config.embargo_bars}; {fit} fold(s) fit"
        )
    return folds


def verify_folds(folds: list[Fold], n_rows: int, label_horizon: int, config: FoldConfig) -> list[str]:
    """Re-check stored folds from their ranges alone; returns the violations found (empty: leak-free)."""
    problems: list[str] = []
    purge = max(label_horizon, config.purge_bars)
    tests = [f.test_range for f in folds]
    for position, fold in enumerate(folds):
        name = f"fold {fold.index}"
        if fold.index != position:
            problems.append(f"{name}: stored at position {position}")
        test_start, test_end = fold.test_range
        if not 0 <= test_start < test_end <= n_rows:
            problems.append(f"{name}: test range [{test_start}, {test_end}) is not inside [0, {n_rows})")
        previous_end = -1
        for start, end in fold.train_ranges:
            if not 0 <= start < end <= n_rows:
                problems.append(f"{name}: train range [{start}, {end}) is not inside [0, {n_rows})")
            if start < previous_end:
                problems.append(f"{name}: train ranges overlap or are out of order at [{start}, {end})")
            previous_end = end
            if end > test_start:
                problems.append(
                    f"{name}: train range [{start}, {end}) is not before its test range [{test_start}, {test_end})"
                )
            elif end > test_start - purge:
                problems.append(
                    f"{name}: train row {end - 1}'s label or purge window reaches test start {test_start} "
                    f"(label horizon {label_horizon}, purge_bars {config.purge_bars})"
                )
            for other_start, other_end in tests:
                if config.embargo_bars and start < other_end + config.embargo_bars and end > other_end:
                    problems.append(
                        f"{name}: train range [{start}, {end}) lies within the {config.embargo_bars}-bar embargo "
                        f"after test range [{other_start}, {other_end})"
                    )
        if fold.train_rows < config.min_train_size:
            problems.append(f"{name}: {fold.train_rows} training rows < min_train_size {config.min_train_size}")
    for earlier, later in zip(tests, tests[1:], strict=False):
        if later[0] < earlier[1]:
            problems.append(f"test ranges {list(earlier)} and {list(later)} overlap or are out of order")
    if config.purge_bars < label_horizon:
        problems.append(f"purge_bars={config.purge_bars} is below the label horizon {label_horizon}")
    if not problems:
        try:
            expected = make_folds(n_rows, config, label_horizon)
        except UserInputError as exc:
            problems.append(f"the config does not re-derive these folds: {exc}")
        else:
            if expected != list(folds):
                problems.append("stored ranges differ from the folds re-derived from the config and row count")
    return problems
