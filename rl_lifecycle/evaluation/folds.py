"""Folds over a dataset's rows: walk-forward and combinatorial purged CV, purged and embargoed, pure.

Rows are dataset row indices (0..n_rows-1, in time order). Every range is half-open [start, end).

**Walk-forward** (`expanding`, `rolling`). The test ranges are consecutive blocks of `test_size` rows
at the end of the data, in order. A fold trains only on rows before its test range:

* `expanding`: every row from 0 up to the purge; `rolling`: the `train_size` rows before the purge.
* **purge**: the `purge_bars` rows right before the test range are dropped, so no training row's
  label window [t, t + label_horizon] reaches the test range (purge < label horizon is refused).
* **embargo**: the `embargo_bars` rows right after *every earlier* test range are dropped from the
  training rows (later folds train across earlier test ranges). Walk-forward training never sees
  rows after its own test range, so strictly it needs no embargo; we apply it to every test range,
  as the purged-CV definition does, so that "no training row lies within the embargo after any test
  range" holds for the whole fold set and `embargo_bars` keeps one meaning across schemes.
* **train floor**: every fold trains on at least `max(min_train_size, episode_length, test size)`
  rows (`expanding`; `rolling` and `cpcv`: `max(min_train_size, episode_length)`). With
  `test_size=None` the test size is the largest for which every fold meets the floor, so fold 0
  trains on about as many rows as it is tested on, never on a sliver.

**Combinatorial purged CV** (`cpcv`; López de Prado 2018, ch. 12). The rows are cut into
`n_groups` (N) contiguous groups, as skfolio's `CombinatorialPurgedCV` cuts them: the first N - 1
hold `n_rows // N` rows, the last the rest. Each of the C(N, k) splits (k = `n_test_groups`; in the
lexicographic order of `itertools.combinations(range(N), k)`) tests k groups and trains on the
other rows, minus, around every maximal block of adjacent test groups [a, b):

* **purge** before and after: the `purge_bars` rows [a - purge, a) and [b, b + purge). López de
  Prado purges every training observation whose label overlaps a test label in time; with label
  windows [t, t + h] that is the h rows before the block *and* the h rows after it (the last test
  row's label reaches b - 1 + h);
* **embargo** after the purge: the `embargo_bars` rows [b + purge, b + purge + embargo).

A split is a `Fold` with one test range per tested group (`test_ranges`, aligned with
`test_groups`; adjacent groups stay separate ranges so each maps to one backtest path).
`cpcv_paths(N, k)` recombines the splits' tested groups into φ(N, k) = k/N · C(N, k) paths.
`n_folds` of a cpcv config is the number of splits, C(N, k) (filled in when left out).

`make_folds(n_rows, config, label_horizon)` is a function of its arguments alone, and
`verify_folds` re-derives every invariant from stored ranges (the `folds_leak_free` check).
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rl_lifecycle.errors import UserInputError

Range = tuple[int, int]
MIN_TEST_SIZE = 2  # a test range needs two bars for one return
MAX_FOLDS = 1_000  # every fold trains a model
# fields added after reports were stored: left out of the canonical json at their default, so the
# evaluation keys of configs that do not use them stay what they were
_LATER_FIELDS = ("n_groups", "n_test_groups", "episode_length")


class FoldConfig(BaseModel):
    """How to cut a dataset into folds; sizes in bars (dataset rows)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_folds: int = Field(default=3, ge=1, le=MAX_FOLDS, description="folds; cpcv: the C(n_groups, n_test_groups) splits")
    scheme: Literal["expanding", "rolling", "cpcv"] = "expanding"
    train_size: int | None = Field(default=None, ge=1, description="rows per training window; rolling only")
    test_size: int | None = Field(
        default=None, ge=MIN_TEST_SIZE, description="rows per test range; None: the largest that fits n_folds"
    )
    purge_bars: int = Field(default=1, ge=0)
    embargo_bars: int = Field(default=0, ge=0)
    min_train_size: int = Field(default=100, ge=1, description="fewest training rows a fold may have")
    n_groups: int | None = Field(default=None, ge=2, le=100, description="cpcv only: contiguous groups N")
    n_test_groups: int | None = Field(default=None, ge=1, description="cpcv only: groups each split tests, k < N")
    episode_length: int | None = Field(
        default=None, ge=1, description="the model spec's episode length in bars: every fold trains on at least this many rows"
    )

    @model_validator(mode="before")
    @classmethod
    def _cpcv_split_count(cls, data):
        """A cpcv config has C(n_groups, n_test_groups) folds: filled in, or checked when given."""
        if not isinstance(data, dict) or data.get("scheme") != "cpcv":
            return data
        n, k = data.get("n_groups"), data.get("n_test_groups")
        if not (isinstance(n, int) and isinstance(k, int) and 1 <= k < n):
            return data  # the field and model checks name the problem
        splits = math.comb(n, k)
        if splits > MAX_FOLDS:
            raise ValueError(f"n_groups={n}, n_test_groups={k}: C({n}, {k}) = {splits} splits, each training a "
                             f"model, is more than {MAX_FOLDS}; use fewer groups or k further from n_groups / 2")
        given = data.get("n_folds")
        if given is None:
            return {**data, "n_folds": splits}
        if given != splits:
            raise ValueError(f"n_folds={given!r}: scheme='cpcv' with n_groups={n}, n_test_groups={k} has "
                             f"C({n}, {k}) = {splits} splits; leave n_folds out or set it to {splits}")
        return data

    @model_validator(mode="after")
    def _sizes_match_scheme(self) -> FoldConfig:
        if self.scheme == "rolling" and self.train_size is None:
            raise ValueError("train_size=None: the rolling scheme needs a train_size")
        if self.scheme != "rolling" and self.train_size is not None:
            raise ValueError(f"train_size={self.train_size}: only the rolling scheme takes a train_size")
        if self.train_size is not None and self.train_size < self.min_train_size:
            raise ValueError(f"train_size={self.train_size} is below min_train_size={self.min_train_size}")
        if self.train_size is not None and self.episode_length is not None and self.train_size < self.episode_length:
            raise ValueError(f"train_size={self.train_size} is below episode_length={self.episode_length}: "
                             "a training window must hold one episode")
        if self.scheme == "cpcv":
            if self.n_groups is None or self.n_test_groups is None:
                raise ValueError(f"n_groups={self.n_groups}, n_test_groups={self.n_test_groups}: "
                                 "the cpcv scheme needs both")
            if self.n_test_groups >= self.n_groups:
                raise ValueError(f"n_test_groups={self.n_test_groups}: must be below n_groups={self.n_groups}")
            if self.test_size is not None:
                raise ValueError(f"test_size={self.test_size}: the cpcv scheme tests whole groups "
                                 "(n_rows // n_groups rows each)")
        elif self.n_groups is not None or self.n_test_groups is not None:
            raise ValueError(f"n_groups={self.n_groups}, n_test_groups={self.n_test_groups}: "
                             "only the cpcv scheme takes groups")
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

    def with_episode_length(self, episode_length: int | None) -> FoldConfig:
        """This config for a model spec whose episodes are `episode_length` bars (None: whole segments)."""
        return FoldConfig.create(**{**self.model_dump(), "episode_length": episode_length})

    def canonical_json(self) -> str:
        fields = self.model_dump(mode="json")
        for name in _LATER_FIELDS:
            if fields[name] is None:
                del fields[name]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Fold:
    """One fold: the rows a fresh model trains on and the rows it is tested on.

    A walk-forward fold tests one range (`test_range`). A CPCV split tests one range per tested
    group (`test_ranges`, aligned with `test_groups`). `Fold(index, train_ranges, (start, end))`
    reads a bare (start, end) as the one test range, as walk-forward callers write it.
    """

    index: int
    train_ranges: tuple[Range, ...]
    test_ranges: tuple[Range, ...]
    test_groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        tests = tuple(self.test_ranges)
        if len(tests) == 2 and all(isinstance(x, numbers.Integral) for x in tests):
            tests = (tests,)
        object.__setattr__(self, "train_ranges", tuple((int(s), int(e)) for s, e in self.train_ranges))
        object.__setattr__(self, "test_ranges", tuple((int(s), int(e)) for s, e in tests))
        object.__setattr__(self, "test_groups", tuple(int(g) for g in self.test_groups))

    @property
    def test_range(self) -> Range:
        """The one test range of a walk-forward fold (or of a CPCV split testing one group)."""
        if len(self.test_ranges) != 1:
            raise ValueError(f"fold {self.index} tests {len(self.test_ranges)} ranges (a CPCV split of groups "
                             f"{list(self.test_groups)}), not one: read test_ranges")
        return self.test_ranges[0]

    @property
    def train_rows(self) -> int:
        return sum(end - start for start, end in self.train_ranges)

    @property
    def test_rows(self) -> int:
        return sum(end - start for start, end in self.test_ranges)

    def to_json(self) -> dict:
        data = {"index": self.index, "train_ranges": [list(r) for r in self.train_ranges]}
        if self.test_groups or len(self.test_ranges) != 1:
            return {**data, "test_ranges": [list(r) for r in self.test_ranges], "test_groups": list(self.test_groups)}
        return {**data, "test_range": list(self.test_range)}

    @classmethod
    def from_json(cls, data: dict) -> Fold:
        train = tuple((int(s), int(e)) for s, e in data["train_ranges"])
        if "test_ranges" in data:
            return cls(int(data["index"]), train, tuple((int(s), int(e)) for s, e in data["test_ranges"]),
                       tuple(int(g) for g in data.get("test_groups", ())))
        return cls(int(data["index"]), train, ((int(data["test_range"][0]), int(data["test_range"][1])),))


@dataclass(frozen=True)
class Backtest:
    """One contiguous test range traded by one fold's model: what one backtest runs and one report row
    keeps. A walk-forward fold is one backtest; a CPCV split one per tested group (its model trades each
    group on its own, so no position is held across the training rows between them)."""

    index: int  # the report's row: 0.. over all folds' backtests, split by split
    split: int  # the fold (walk-forward) or split (CPCV) whose model trades it
    test_range: Range
    test_group: int | None = None  # CPCV: the group tested


def backtests(folds: list[Fold]) -> list[Backtest]:
    """Every fold's backtests, in fold order; a walk-forward fold's backtest has the fold's index."""
    out: list[Backtest] = []
    for fold in folds:
        for rows, group in zip(fold.test_ranges, fold.test_groups or (None,) * len(fold.test_ranges), strict=True):
            out.append(Backtest(len(out), fold.index, rows, group))
    return out


def splits_of(backtests_: list[Backtest], train_ranges: dict[int, tuple[Range, ...]]) -> list[Fold]:
    """The folds back from their backtests (each fold's test ranges in order) and train ranges: how a
    stored report's folds are re-derived for the leak check."""
    folds = []
    for fold in sorted({b.split for b in backtests_}):
        tests = sorted((b for b in backtests_ if b.split == fold), key=lambda b: b.test_range)
        groups = tuple(b.test_group for b in tests) if all(b.test_group is not None for b in tests) else ()
        folds.append(Fold(fold, train_ranges[fold], tuple(b.test_range for b in tests), groups))
    return folds


def _subtract(span: Range, holes: list[Range]) -> tuple[Range, ...]:
    """`span` minus the `holes` (sorted by start; they may overlap), as ordered non-empty ranges."""
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


def _merge(ranges: list[Range]) -> list[Range]:
    """Sorted ranges with touching or overlapping ones joined: the maximal blocks they cover."""
    blocks: list[Range] = []
    for start, end in sorted(ranges):
        if blocks and start <= blocks[-1][1]:
            blocks[-1] = (blocks[-1][0], max(blocks[-1][1], end))
        else:
            blocks.append((start, end))
    return blocks


def train_floor(config: FoldConfig, test_size: int) -> int:
    """The fewest training rows a fold with `test_size` test rows may have under `config`."""
    floor = max(config.min_train_size, config.episode_length or 0)
    return max(floor, test_size) if config.scheme == "expanding" else floor


def _floor(config: FoldConfig, test_size: int, legacy: bool) -> int:
    # legacy: the floor before issue 16 (min_train_size alone), to verify reports stored before it
    return config.min_train_size if legacy else train_floor(config, test_size)


# --- walk-forward -------------------------------------------------------------------------------


def _layout(n_rows: int, config: FoldConfig, n_folds: int, test_size: int, legacy: bool = False) -> list[Fold] | None:
    """The folds for this many folds of this size, or None when they do not fit the data."""
    first_test = n_rows - n_folds * test_size
    if first_test < 0:
        return None
    floor = _floor(config, test_size, legacy)
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
        fold = Fold(k, train, (test,))
        if fold.train_rows < floor:
            return None
        folds.append(fold)
    return folds


def _largest_test_size(n_rows: int, config: FoldConfig, n_folds: int, legacy: bool = False) -> int | None:
    """The largest test size for which `n_folds` folds fit (None when not even MIN_TEST_SIZE does)."""
    if config.scheme == "rolling":
        size = (n_rows - config.purge_bars - config.train_size) // n_folds
    else:
        size = (n_rows - config.purge_bars - _floor(config, 0, legacy)) // n_folds
        if not legacy:  # fold 0 also trains on at least its test size: n_folds + 1 sizes before the purge
            size = min(size, (n_rows - config.purge_bars) // (n_folds + 1))
    while size >= MIN_TEST_SIZE:  # embargo holes can cost a few sizes; the first fit is the largest
        if _layout(n_rows, config, n_folds, size, legacy) is not None:
            return size
        size -= 1
    return None


def _walk_forward(n_rows: int, config: FoldConfig, n_folds: int, legacy: bool = False) -> list[Fold] | None:
    size = config.test_size or _largest_test_size(n_rows, config, n_folds, legacy)
    return None if size is None else _layout(n_rows, config, n_folds, size, legacy)


# --- combinatorial purged CV --------------------------------------------------------------------


def cpcv_groups(n_rows: int, n_groups: int) -> tuple[Range, ...]:
    """The N contiguous groups of CPCV: the first N - 1 of `n_rows // N` rows, the last the rest
    (skfolio's `CombinatorialPurgedCV` cut)."""
    size = n_rows // n_groups
    return tuple((g * size, (g + 1) * size if g < n_groups - 1 else n_rows) for g in range(n_groups))


def _check_groups(n_groups: int, n_test_groups: int) -> None:
    if not 1 <= n_test_groups < n_groups:
        raise UserInputError(f"n_test_groups={n_test_groups}: must be in [1, n_groups={n_groups})")


def cpcv_splits(n_groups: int, n_test_groups: int) -> list[tuple[int, ...]]:
    """The groups each split tests, split by split: `itertools.combinations(range(N), k)` order."""
    _check_groups(n_groups, n_test_groups)
    return list(itertools.combinations(range(n_groups), n_test_groups))


def cpcv_paths(n_groups: int, n_test_groups: int) -> list[list[tuple[int, int]]]:
    """The φ(N, k) = k/N · C(N, k) backtest paths of CPCV, each a list of (split index, group index)
    over groups 0..N-1: every group exactly once, from a split that tested it.

    Each group is tested by C(N-1, k-1) = φ splits; path p takes group g from the p-th of them in
    split order (López de Prado 2018, fig. 12.1; the same assignment as skfolio's `get_path_ids`)."""
    splits = cpcv_splits(n_groups, n_test_groups)
    testers = [[i for i, tested in enumerate(splits) if g in tested] for g in range(n_groups)]
    return [[(testers[g][p], g) for g in range(n_groups)] for p in range(len(testers[0]))]


def _cpcv_layout(n_rows: int, config: FoldConfig, n_groups: int) -> list[Fold] | None:
    """The CPCV splits of `n_rows` rows in `n_groups` groups, or None when a group or a split's
    training set is too small."""
    if n_rows // n_groups < MIN_TEST_SIZE:
        return None
    groups, floor = cpcv_groups(n_rows, n_groups), train_floor(config, 0)
    folds = []
    for index, tested in enumerate(cpcv_splits(n_groups, config.n_test_groups)):
        tests = [groups[g] for g in tested]
        holes = [(start - config.purge_bars, end + config.purge_bars + config.embargo_bars)
                 for start, end in _merge(tests)]
        fold = Fold(index, _subtract((0, n_rows), holes), tuple(tests), tested)
        if fold.train_rows < floor:
            return None
        folds.append(fold)
    return folds


def _cpcv_refusal(n_rows: int, config: FoldConfig) -> str:
    k = config.n_test_groups
    candidates = sorted((n for n in range(k + 1, 101) if n != config.n_groups and math.comb(n, k) <= MAX_FOLDS),
                        key=lambda n: (abs(n - config.n_groups), n))  # the nearest group count that fits
    fit = next((n for n in candidates if _cpcv_layout(n_rows, config, n) is not None), None)
    hint = f"n_groups={fit} would fit" if fit else f"no n_groups fits with n_test_groups={k}"
    return (f"scheme='cpcv': {n_rows} rows cannot hold n_groups={config.n_groups} groups of >= {MIN_TEST_SIZE} "
            f"rows with n_test_groups={config.n_test_groups}, purge_bars={config.purge_bars}, "
            f"embargo_bars={config.embargo_bars} and every split training on >= {train_floor(config, 0)} rows "
            f"(min_train_size={config.min_train_size}, episode_length={config.episode_length}); "
            f"only 0 fold(s) fit ({hint})")


# --- public ---------------------------------------------------------------------------------------


def _check_purge(config: FoldConfig, label_horizon: int) -> None:
    if label_horizon < 0:
        raise UserInputError(f"label_horizon={label_horizon}: must be >= 0")
    if config.purge_bars < label_horizon:
        raise UserInputError(
            f"purge_bars={config.purge_bars} is below the dataset's label horizon of {label_horizon} bars: "
            f"training labels would look into the test range; use purge_bars >= {label_horizon}"
        )


def folds_that_fit(n_rows: int, config: FoldConfig, label_horizon: int) -> int:
    """The most folds (<= config.n_folds) of the configured test size the data holds (0 when none);
    cpcv: all C(N, k) splits or none."""
    _check_purge(config, label_horizon)
    if config.scheme == "cpcv":
        return config.n_folds if _cpcv_layout(n_rows, config, config.n_groups) is not None else 0
    for n_folds in range(config.n_folds, 0, -1):
        if _walk_forward(n_rows, config, n_folds) is not None:
            return n_folds
    return 0


def make_folds(n_rows: int, config: FoldConfig, label_horizon: int) -> list[Fold]:
    """The folds of `n_rows` rows; refuses a purge below the label horizon and data too short
    (saying how many folds fit)."""
    _check_purge(config, label_horizon)
    if n_rows < 0:
        raise UserInputError(f"n_rows={n_rows}: must be >= 0")
    if config.scheme == "cpcv":
        folds = _cpcv_layout(n_rows, config, config.n_groups)
        if folds is None:
            raise UserInputError(_cpcv_refusal(n_rows, config))
        return folds
    folds = _walk_forward(n_rows, config, config.n_folds)
    if folds is None:
        fit = folds_that_fit(n_rows, config, label_horizon)
        train = (f"rolling train_size={config.train_size}" if config.scheme == "rolling"
                 else f"min_train_size={config.min_train_size}")
        test = f"test_size={config.test_size}" if config.test_size else f"test_size >= {MIN_TEST_SIZE}"
        floor = ("max(min_train_size, episode_length, its test size)" if config.scheme == "expanding"
                 else "max(min_train_size, episode_length)")
        raise UserInputError(
            f"n_folds={config.n_folds}: {n_rows} rows cannot hold {config.n_folds} folds with {test}, {train}, "
            f"episode_length={config.episode_length}, purge_bars={config.purge_bars}, "
            f"embargo_bars={config.embargo_bars}, each fold training on at least {floor} rows; "
            f"only {fit} fold(s) fit"
        )
    return folds


# --- verification ---------------------------------------------------------------------------------


def _check_train_ranges(name: str, fold: Fold, n_rows: int) -> list[str]:
    problems, previous_end = [], -1
    for start, end in fold.train_ranges:
        if not 0 <= start < end <= n_rows:
            problems.append(f"{name}: train range [{start}, {end}) is not inside [0, {n_rows})")
        if start < previous_end:
            problems.append(f"{name}: train ranges overlap or are out of order at [{start}, {end})")
        previous_end = end
    return problems


def _check_test_ranges(name: str, fold: Fold, n_rows: int) -> list[str]:
    problems = []
    for start, end in fold.test_ranges:
        if not 0 <= start < end <= n_rows:
            problems.append(f"{name}: test range [{start}, {end}) is not inside [0, {n_rows})")
    for earlier, later in itertools.pairwise(fold.test_ranges):
        if later[0] < earlier[1]:
            problems.append(f"{name}: test ranges {list(earlier)} and {list(later)} overlap or are out of order")
    return problems


def _verify_walk_forward(folds: list[Fold], n_rows: int, label_horizon: int, config: FoldConfig) -> list[str]:
    problems: list[str] = []
    purge = max(label_horizon, config.purge_bars)
    if any(len(f.test_ranges) != 1 for f in folds):
        return [f"fold {f.index}: a walk-forward fold tests one range, this one tests {len(f.test_ranges)}"
                for f in folds if len(f.test_ranges) != 1]
    tests = [f.test_range for f in folds]
    for fold in folds:
        name = f"fold {fold.index}"
        test_start, test_end = fold.test_range
        problems += _check_test_ranges(name, fold, n_rows) + _check_train_ranges(name, fold, n_rows)
        for start, end in fold.train_ranges:
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
    for earlier, later in itertools.pairwise(tests):
        if later[0] < earlier[1]:
            problems.append(f"test ranges {list(earlier)} and {list(later)} overlap or are out of order")
    return problems


def _verify_cpcv(folds: list[Fold], n_rows: int, label_horizon: int, config: FoldConfig) -> list[str]:
    problems: list[str] = []
    purge = max(label_horizon, config.purge_bars)
    for fold in folds:
        name = f"split {fold.index}"
        problems += _check_test_ranges(name, fold, n_rows) + _check_train_ranges(name, fold, n_rows)
        if len(fold.test_groups) != len(fold.test_ranges) or len(fold.test_ranges) != config.n_test_groups:
            problems.append(f"{name}: {len(fold.test_ranges)} test ranges for groups {list(fold.test_groups)}; "
                            f"n_test_groups={config.n_test_groups}")
        for start, end in fold.train_ranges:
            for block_start, block_end in _merge(list(fold.test_ranges)):
                block = f"test block [{block_start}, {block_end})"
                if start < block_end and end > block_start:
                    problems.append(f"{name}: train range [{start}, {end}) overlaps {block}")
                elif block_start - purge < end <= block_start:
                    problems.append(f"{name}: train row {end - 1}'s label or purge window reaches {block} "
                                    f"(label horizon {label_horizon}, purge_bars {config.purge_bars})")
                elif block_end <= start < block_end + purge:
                    problems.append(f"{name}: train row {start}'s label overlaps the labels of {block} "
                                    f"(the purge after it: label horizon {label_horizon}, "
                                    f"purge_bars {config.purge_bars})")
                elif config.embargo_bars and block_end + purge <= start < block_end + purge + config.embargo_bars:
                    problems.append(f"{name}: train range [{start}, {end}) lies within the {config.embargo_bars}-bar "
                                    f"embargo after {block}")
    return problems


def verify_folds(folds: list[Fold], n_rows: int, label_horizon: int, config: FoldConfig) -> list[str]:
    """Re-check stored folds from their ranges alone; returns the violations found (empty: leak-free).

    The folds must also be exactly those the config re-derives. Walk-forward reports stored before
    the train floor existed (configs without episode_length) re-derive under the floor they were
    made with, min_train_size alone: their ranges are as leak-free as ever."""
    problems = [f"fold {f.index}: stored at position {p}" for p, f in enumerate(folds) if f.index != p]
    if config.scheme == "cpcv":
        problems += _verify_cpcv(folds, n_rows, label_horizon, config)
    else:
        problems += _verify_walk_forward(folds, n_rows, label_horizon, config)
    floor = max(config.min_train_size, config.episode_length or 0)
    problems += [f"fold {f.index}: {f.train_rows} training rows < {floor} (min_train_size "
                 f"{config.min_train_size}, episode_length {config.episode_length})"
                 for f in folds if f.train_rows < floor]
    if config.purge_bars < label_horizon:
        problems.append(f"purge_bars={config.purge_bars} is below the label horizon {label_horizon}")
    if not problems:
        try:
            expected = make_folds(n_rows, config, label_horizon)
        except UserInputError as exc:
            expected = None
            refusal = str(exc)
        if expected != list(folds):
            legacy = (_walk_forward(n_rows, config, config.n_folds, legacy=True)
                      if config.scheme != "cpcv" and config.episode_length is None else None)
            if legacy != list(folds):
                problems.append(f"the config does not re-derive these folds: {refusal}" if expected is None
                                else "stored ranges differ from the folds re-derived from the config and row count")
    return problems
