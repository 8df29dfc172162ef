"""Folds: property tests of purge, embargo, ordering, the train floor and reproducibility; CPCV splits
and paths against skfolio's `CombinatorialPurgedCV` (the reference implementation).

Conventions shared with skfolio 1.12.2, so no mapping is needed: the groups are cut as skfolio cuts
them (the first N - 1 groups hold n_rows // N rows, the last the rest); splits come in
`itertools.combinations(range(N), k)` order (skfolio's `test_set_index`); a split's test sets are
listed group by group in ascending order; `purge_bars` = skfolio's `purged_size` (rows removed before
*and* after every test block) and `embargo_bars` = its `embargo_size` (rows removed after the purge
that follows a block); path p takes group g from the p-th split, in split order, that tests g
(skfolio's `get_path_ids`). Differences: we allow k = 1 and N = 2 (skfolio needs k >= 2, N >= 3)
and do not require purge + embargo < n_rows // N - 1 (the comparisons stay inside skfolio's domain);
a split left with no training row is refused, where skfolio yields an empty train set.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skfolio.model_selection import CombinatorialPurgedCV

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.folds import (
    Fold,
    FoldConfig,
    cpcv_groups,
    cpcv_paths,
    folds_that_fit,
    make_folds,
    verify_folds,
)


@st.composite
def fold_setups(draw):
    horizon = draw(st.integers(0, 5))
    scheme = draw(st.sampled_from(["expanding", "rolling"]))
    min_train = draw(st.integers(1, 40))
    episode = draw(st.one_of(st.none(), st.integers(1, 60)))
    fields = {
        "n_folds": draw(st.integers(1, 6)),
        "scheme": scheme,
        "test_size": draw(st.one_of(st.none(), st.integers(2, 30))),
        "purge_bars": horizon + draw(st.integers(0, 4)),
        "embargo_bars": draw(st.integers(0, 12)),
        "min_train_size": min_train,
        "episode_length": episode,
    }
    if scheme == "rolling":
        fields["train_size"] = max(min_train, episode or 0) + draw(st.integers(0, 40))
    n_rows = draw(st.integers(0, 300))
    return n_rows, FoldConfig.create(**fields), horizon


def _rows(ranges) -> set[int]:
    return {row for start, end in ranges for row in range(start, end)}


@settings(max_examples=400, deadline=None)
@given(fold_setups())
def test_folds_are_leak_free_or_refused_with_how_many_fit(setup):
    n_rows, config, horizon = setup
    try:
        folds = make_folds(n_rows, config, horizon)
    except UserInputError as exc:
        fit = int(re.search(r"(\d+) fold\(s\) fit", str(exc)).group(1))
        assert fit < config.n_folds
        assert str(config.n_folds) in str(exc) and str(n_rows) in str(exc)
        if fit:  # that many fit, and one more does not
            assert len(make_folds(n_rows, config.model_copy(update={"n_folds": fit}), horizon)) == fit
        with pytest.raises(UserInputError):
            make_folds(n_rows, config.model_copy(update={"n_folds": fit + 1}), horizon)
        return

    assert len(folds) == config.n_folds
    tests = [f.test_range for f in folds]
    assert tests[-1][1] == n_rows  # the test ranges end with the data
    for earlier, later in zip(tests, tests[1:], strict=False):
        assert earlier[1] <= later[0]  # ordered, non-overlapping
    every_test_row = _rows(tests)
    for fold in folds:
        train, test = _rows(fold.train_ranges), _rows([fold.test_range])
        assert train and test and not train & test
        # the train floor: min_train_size, the episode length and (expanding) the fold's test size
        assert len(train) >= config.min_train_size and len(train) >= (config.episode_length or 0)
        assert config.scheme != "expanding" or len(train) >= len(test)
        assert all(len(test) == config.test_size for _ in [0] if config.test_size)
        for row in train:
            assert row < fold.test_range[0]  # walk-forward: train before test
            # purge: the label window [row, row + horizon] never reaches the test range
            assert row + horizon < fold.test_range[0]
            assert row < fold.test_range[0] - config.purge_bars
            # embargo: no train row within embargo_bars after any test range
            assert not any(end <= row < end + config.embargo_bars for _, end in tests)
        window_start = fold.test_range[0] - config.purge_bars - config.train_size if config.scheme == "rolling" else 0
        embargoed = {row for _, end in tests for row in range(end, end + config.embargo_bars)}
        # the training rows are exactly the window before the purge, minus the embargoes
        assert train == set(range(window_start, fold.test_range[0] - config.purge_bars)) - embargoed
        assert every_test_row >= test
    # reproducible from the config and the row count alone
    assert make_folds(n_rows, FoldConfig.create(**config.model_dump()), horizon) == folds
    assert verify_folds(folds, n_rows, horizon, config) == []


def test_purge_below_the_label_horizon_is_refused():
    config = FoldConfig.create(n_folds=2, test_size=10, purge_bars=2)
    with pytest.raises(UserInputError, match=r"purge_bars=2 is below the dataset's label horizon of 5 bars"):
        make_folds(500, config, label_horizon=5)


def test_error_says_how_many_fold_fit():
    config = FoldConfig.create(n_folds=5, test_size=10, purge_bars=1, min_train_size=20)
    # 60 rows: 20 train + 1 purge leaves 39 rows, three tests of 10
    with pytest.raises(UserInputError, match=r"n_folds=5: 60 rows cannot hold 5 folds .* 3 fold\(s\) fit"):
        make_folds(60, config, label_horizon=1)
    assert folds_that_fit(60, config, 1) == 3


def test_config_errors_name_field_and_value():
    with pytest.raises(UserInputError, match=r"n_folds=0"):
        FoldConfig.create(n_folds=0)
    with pytest.raises(UserInputError, match=r"scheme='walk'"):
        FoldConfig.create(scheme="walk")
    with pytest.raises(UserInputError, match=r"colour='red': Extra inputs are not permitted"):
        FoldConfig.create(colour="red")
    with pytest.raises(UserInputError, match=r"train_size=None: the rolling scheme needs a train_size"):
        FoldConfig.create(scheme="rolling")
    with pytest.raises(UserInputError, match=r"train_size=50: only the rolling scheme"):
        FoldConfig.create(train_size=50)
    with pytest.raises(UserInputError, match=r"test_size=1"):
        FoldConfig.create(test_size=1)


def test_embargo_cuts_later_folds_training_after_earlier_tests():
    config = FoldConfig.create(n_folds=3, test_size=10, purge_bars=2, embargo_bars=3, min_train_size=20)
    folds = make_folds(100, config, label_horizon=2)
    assert [f.test_range for f in folds] == [(70, 80), (80, 90), (90, 100)]
    assert folds[0].train_ranges == ((0, 68),)
    assert folds[2].train_ranges == ((0, 80), (83, 88))  # 80..82: embargo after test (70, 80)


def test_verify_folds_finds_tampered_ranges():
    config = FoldConfig.create(n_folds=3, test_size=10, purge_bars=2, embargo_bars=3, min_train_size=20)
    folds = make_folds(100, config, label_horizon=2)
    assert verify_folds(folds, 100, 2, config) == []
    leaky = [folds[0], Fold(1, ((0, 79),), folds[1].test_range), folds[2]]
    assert any("label or purge window" in p for p in verify_folds(leaky, 100, 2, config))
    embargoed = [folds[0], folds[1], Fold(2, ((0, 88),), folds[2].test_range)]
    assert any("embargo" in p for p in verify_folds(embargoed, 100, 2, config))
    overlapping = [folds[0], Fold(1, folds[1].train_ranges, (75, 90)), folds[2]]
    assert any("overlap" in p for p in verify_folds(overlapping, 100, 2, config))
    # a longer label horizon than the config's purge is itself a violation
    assert any("below the label horizon" in p for p in verify_folds(folds, 100, 4, config))
    # ranges that are internally fine but not what the config gives
    shifted = [Fold(0, ((0, 60),), (70, 80)), folds[1], folds[2]]
    assert verify_folds(shifted, 100, 2, config) == [
        "stored ranges differ from the folds re-derived from the config and row count"
    ]


def test_fold_json_round_trip():
    config = FoldConfig.create(n_folds=2, scheme="rolling", train_size=30, test_size=5, purge_bars=1, embargo_bars=2,
                               min_train_size=10)
    folds = make_folds(80, config, 1)
    assert [Fold.from_json(f.to_json()) for f in folds] == folds
    assert FoldConfig.model_validate_json(config.canonical_json()) == config


# --- the train floor (issue 16, item 4) -----------------------------------------------------------


def test_default_config_trains_every_fold_on_at_least_its_test_size():
    """Before issue 16 the defaults (min_train_size=100, test_size=None) gave 2160 rows three tests of
    686 rows and fold 0 only 101 training rows. Now the test size is the largest for which fold 0
    trains on at least as many rows as it is tested on: (2160 - 1 purge) // 4 = 539."""
    folds = make_folds(2160, FoldConfig.create(), label_horizon=1)
    assert [f.test_range for f in folds] == [(543, 1082), (1082, 1621), (1621, 2160)]
    assert [f.train_rows for f in folds] == [542, 1081, 1620]
    assert all(f.train_rows >= f.test_rows for f in folds)


def test_episode_length_raises_the_floor_and_a_config_that_cannot_fit_says_how_many_folds_do():
    config = FoldConfig.create(n_folds=3, purge_bars=1, min_train_size=10).with_episode_length(1200)
    assert config.episode_length == 1200
    folds = make_folds(2160, config, label_horizon=1)
    assert folds[0].train_rows >= 1200 and folds[0].test_rows == (2160 - 1 - 1200) // 3
    fixed = FoldConfig.create(n_folds=4, test_size=300, purge_bars=1, min_train_size=10, episode_length=1000)
    # 2160 rows: 1000 train + 1 purge leave 1159 rows, three tests of 300
    with pytest.raises(UserInputError, match=r"n_folds=4: 2160 rows cannot hold 4 folds .*episode_length=1000.*"
                                             r"; only 3 fold\(s\) fit"):
        make_folds(2160, fixed, 1)
    # without an episode length, the test size is the floor: 4 x 500 tests leave 159 rows for fold 0
    with pytest.raises(UserInputError, match=r"only 3 fold\(s\) fit"):
        make_folds(2160, FoldConfig.create(n_folds=4, test_size=500, min_train_size=10), 1)
    assert len(make_folds(2160, FoldConfig.create(n_folds=3, test_size=500, min_train_size=10), 1)) == 3
    with pytest.raises(UserInputError, match=r"train_size=50 is below episode_length=60"):
        FoldConfig.create(scheme="rolling", train_size=50, min_train_size=10, episode_length=60)


def test_configs_without_the_new_fields_keep_their_canonical_json_and_old_reports_still_verify():
    """Evaluation keys hash the canonical json: fields added later are left out at their default.
    A report stored before the floor (the 101-row fold 0 above) re-derives under the floor it was made
    with; with an episode length set it would not."""
    config = FoldConfig.create()
    assert config.canonical_json() == ('{"embargo_bars":0,"min_train_size":100,"n_folds":3,"purge_bars":1,'
                                       '"scheme":"expanding","test_size":null,"train_size":null}')
    assert FoldConfig.model_validate_json(config.canonical_json()) == config
    old = [Fold(0, ((0, 101),), (102, 788)), Fold(1, ((0, 787),), (788, 1474)), Fold(2, ((0, 1473),), (1474, 2160))]
    assert verify_folds(old, 2160, 1, config) == []
    assert verify_folds(old, 2160, 1, config.with_episode_length(50)) == [
        "stored ranges differ from the folds re-derived from the config and row count"
    ]


# --- combinatorial purged CV ----------------------------------------------------------------------


def _cpcv(n_rows, n_groups, n_test_groups, purge, embargo, **fields):
    config = FoldConfig.create(scheme="cpcv", n_groups=n_groups, n_test_groups=n_test_groups, purge_bars=purge,
                               embargo_bars=embargo, min_train_size=fields.pop("min_train_size", 1), **fields)
    return config, make_folds(n_rows, config, label_horizon=purge)


def _assert_matches_skfolio(n_rows, n_groups, n_test_groups, purge, embargo):
    cv = CombinatorialPurgedCV(n_folds=n_groups, n_test_folds=n_test_groups, purged_size=purge, embargo_size=embargo)
    reference = list(cv.split(np.zeros((n_rows, 1))))
    if any(len(train) == 0 for train, _ in reference):  # skfolio yields it; we refuse a split with nothing to train on
        with pytest.raises(UserInputError, match=r"only 0 fold\(s\) fit"):
            _cpcv(n_rows, n_groups, n_test_groups, purge, embargo)
        return
    config, folds = _cpcv(n_rows, n_groups, n_test_groups, purge, embargo)
    assert len(folds) == len(reference) == cv.n_splits == config.n_folds
    for fold, (train, tests), groups in zip(folds, reference, cv.test_set_index, strict=True):
        assert fold.test_groups == tuple(int(g) for g in groups)
        assert [list(range(*r)) for r in fold.test_ranges] == [t.tolist() for t in tests]  # group by group
        assert sorted(_rows(fold.train_ranges)) == train.tolist()
    paths = cpcv_paths(n_groups, n_test_groups)
    assert len(paths) == cv.n_test_paths
    path_ids = cv.get_path_ids()  # [split, j]: the path of the split's j-th test group
    theirs = {(split, int(group)): int(path_ids[split, j])
              for split, groups in enumerate(cv.test_set_index) for j, group in enumerate(groups)}
    ours = {(split, group): path for path, steps in enumerate(paths) for split, group in steps}
    assert ours == theirs
    assert verify_folds(folds, n_rows, purge, config) == []


@pytest.mark.parametrize(("n_rows", "n_groups", "n_test_groups", "purge", "embargo"), [
    (12, 3, 2, 0, 0),  # skfolio's docstring example
    (12, 3, 2, 1, 0),
    (12, 3, 2, 0, 1),
    (100, 5, 2, 2, 3),
    (103, 6, 3, 1, 0),  # 103 = 6 * 17 + 1: the last group holds 18 rows
    (57, 4, 2, 0, 2),
    (200, 8, 3, 4, 4),
    (331, 10, 4, 3, 2),
    (240, 6, 4, 5, 0),  # k > N / 2: adjacent test groups form long blocks
])
def test_cpcv_splits_and_paths_equal_skfoliosCombinatorialPurgedCV(n_rows, n_groups, n_test_groups, purge, embargo):
    _assert_matches_skfolio(n_rows, n_groups, n_test_groups, purge, embargo)


@st.composite
def skfolio_setups(draw):
    n_groups = draw(st.integers(3, 8))
    n_test_groups = draw(st.integers(2, n_groups - 1))
    n_rows = draw(st.integers(n_groups * 4, 240))
    room = n_rows // n_groups - 2  # skfolio needs purge + embargo < n_rows // n_groups - 1
    purge = draw(st.integers(0, room))
    return n_rows, n_groups, n_test_groups, purge, draw(st.integers(0, room - purge))


@settings(max_examples=150, deadline=None)
@given(skfolio_setups())
def test_cpcv_equals_skfolio_on_random_sizes(setup):
    _assert_matches_skfolio(*setup)


@st.composite
def cpcv_setups(draw):
    n_groups = draw(st.integers(2, 8))
    horizon = draw(st.integers(0, 4))
    fields = {"n_groups": n_groups, "n_test_groups": draw(st.integers(1, n_groups - 1)),
              "purge_bars": horizon + draw(st.integers(0, 3)), "embargo_bars": draw(st.integers(0, 8)),
              "min_train_size": draw(st.integers(1, 60)), "episode_length": draw(st.one_of(st.none(), st.integers(1, 80)))}
    return draw(st.integers(0, 300)), FoldConfig.create(scheme="cpcv", **fields), horizon


@settings(max_examples=300, deadline=None)
@given(cpcv_setups())
def test_cpcv_splits_are_leak_free_or_refused(setup):
    n_rows, config, horizon = setup
    try:
        folds = make_folds(n_rows, config, horizon)
    except UserInputError as exc:
        assert "only 0 fold(s) fit" in str(exc) and f"n_groups={config.n_groups}" in str(exc)
        assert folds_that_fit(n_rows, config, horizon) == 0
        return
    groups = cpcv_groups(n_rows, config.n_groups)
    assert groups[0][0] == 0 and groups[-1][1] == n_rows
    assert len(folds) == math.comb(config.n_groups, config.n_test_groups) == config.n_folds
    purge, embargo = config.purge_bars, config.embargo_bars
    for fold, tested in zip(folds, itertools.combinations(range(config.n_groups), config.n_test_groups), strict=True):
        train, test = _rows(fold.train_ranges), _rows(fold.test_ranges)
        assert fold.test_groups == tested and test == _rows([groups[g] for g in tested])
        assert not train & test
        assert len(train) >= max(config.min_train_size, config.episode_length or 0)
        for row in train:
            # no label window [row, row + horizon] overlaps a test row's label window
            assert not any(abs(row - t) <= horizon for t in test)
            for g in tested:
                start, end = groups[g]
                assert not start - purge <= row < start  # purge before
                assert not end <= row < end + purge + embargo  # purge after, then the embargo
        # every other row trains
        removed = {r for g in tested for r in range(groups[g][0] - purge, groups[g][1] + purge + embargo)}
        assert train == set(range(n_rows)) - removed
    assert make_folds(n_rows, FoldConfig.create(**config.model_dump()), horizon) == folds
    assert verify_folds(folds, n_rows, horizon, config) == []


def test_cpcv_paths_take_every_group_once_from_a_split_that_tested_it():
    for n_groups, n_test_groups in [(2, 1), (5, 1), (6, 2), (6, 3), (7, 4), (10, 2)]:
        paths = cpcv_paths(n_groups, n_test_groups)
        splits = list(itertools.combinations(range(n_groups), n_test_groups))
        assert len(paths) == n_test_groups * math.comb(n_groups, n_test_groups) // n_groups  # φ(N, k)
        for path in paths:
            assert [group for _, group in path] == list(range(n_groups))
            assert all(group in splits[split] for split, group in path)
        # together the paths use every tested (split, group) exactly once
        used = sorted(step for path in paths for step in path)
        assert used == sorted((split, g) for split, groups in enumerate(splits) for g in groups)
    assert cpcv_paths(6, 2)[0] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # López de Prado fig. 12.1
    with pytest.raises(UserInputError, match=r"n_test_groups=3: must be in \[1, n_groups=3\)"):
        cpcv_paths(3, 3)


def test_a_cpcv_split_is_a_fold_with_one_test_range_per_group():
    config, folds = _cpcv(60, 3, 2, 1, 2)
    split = folds[1]  # groups 0 and 2: [0, 20) and [40, 60); 20 is purged after, 21-22 embargoed; 39 purged
    assert split.test_groups == (0, 2) and split.test_ranges == ((0, 20), (40, 60))
    assert split.train_ranges == ((23, 39),) and split.train_rows == 16 and split.test_rows == 40
    with pytest.raises(ValueError, match=r"fold 1 tests 2 ranges \(a CPCV split of groups \[0, 2\]\)"):
        _ = split.test_range
    assert Fold.from_json(split.to_json()) == split and split.to_json()["test_groups"] == [0, 2]
    assert [Fold.from_json(f.to_json()) for f in folds] == folds
    # a walk-forward fold keeps its stored shape and its single-range constructor
    walk = Fold(0, ((0, 10),), (12, 20))
    assert walk.test_ranges == ((12, 20),) and walk.test_range == (12, 20) and walk.test_groups == ()
    assert walk.to_json() == {"index": 0, "train_ranges": [[0, 10]], "test_range": [12, 20]}


def test_verify_folds_finds_tampered_cpcv_splits():
    config, folds = _cpcv(60, 3, 2, 1, 2)
    assert verify_folds(folds, 60, 1, config) == []
    test = folds[1].test_ranges, folds[1].test_groups

    def tampered(train):
        return [folds[0], Fold(1, train, *test), folds[2]]

    assert any("label or purge window reaches test block [40, 60)" in p
               for p in verify_folds(tampered(((23, 40),)), 60, 1, config))
    assert any("the purge after it" in p for p in verify_folds(tampered(((20, 39),)), 60, 1, config))
    assert any("2-bar embargo after test block [0, 20)" in p for p in verify_folds(tampered(((22, 39),)), 60, 1, config))
    assert any("overlaps test block" in p for p in verify_folds(tampered(((15, 39),)), 60, 1, config))
    # a longer label horizon than the purge: the purge after a block is too short as well
    assert any("below the label horizon" in p for p in verify_folds(folds, 60, 2, config))
    # internally fine, but not what the config gives
    assert verify_folds(tampered(((25, 39),)), 60, 1, config) == [
        "stored ranges differ from the folds re-derived from the config and row count"
    ]


def test_cpcv_config_errors_name_field_and_value():
    config = FoldConfig.create(scheme="cpcv", n_groups=6, n_test_groups=2)
    assert config.n_folds == 15
    assert FoldConfig.create(scheme="cpcv", n_groups=6, n_test_groups=2, n_folds=15) == config
    assert FoldConfig.model_validate_json(config.canonical_json()) == config
    with pytest.raises(UserInputError, match=r"n_folds=3: scheme='cpcv' with n_groups=6, n_test_groups=2 has "
                                             r"C\(6, 2\) = 15 splits"):
        FoldConfig.create(scheme="cpcv", n_groups=6, n_test_groups=2, n_folds=3)
    with pytest.raises(UserInputError, match=r"n_groups=None, n_test_groups=2: the cpcv scheme needs both"):
        FoldConfig.create(scheme="cpcv", n_test_groups=2)
    with pytest.raises(UserInputError, match=r"n_test_groups=4: must be below n_groups=4"):
        FoldConfig.create(scheme="cpcv", n_groups=4, n_test_groups=4)
    with pytest.raises(UserInputError, match=r"test_size=10: the cpcv scheme tests whole groups"):
        FoldConfig.create(scheme="cpcv", n_groups=4, n_test_groups=2, test_size=10)
    with pytest.raises(UserInputError, match=r"only the cpcv scheme takes groups"):
        FoldConfig.create(n_groups=4)
    with pytest.raises(UserInputError, match=r"C\(16, 8\) = 12870 splits, each training a model"):
        FoldConfig.create(scheme="cpcv", n_groups=16, n_test_groups=8)
    with pytest.raises(UserInputError, match=r"purge_bars=0 is below the dataset's label horizon of 2"):
        make_folds(100, FoldConfig.create(scheme="cpcv", n_groups=4, n_test_groups=2, purge_bars=0), 2)


def test_cpcv_too_few_rows_is_refused_naming_a_group_count_that_fits():
    config = FoldConfig.create(scheme="cpcv", n_groups=8, n_test_groups=2, purge_bars=2, embargo_bars=2,
                               min_train_size=200)
    # 8 groups of 40 rows: the split testing two separate inner groups trains on 320 - 80 - 2 * (2 + 2 + 2)
    # = 228 rows, the fewest; min_train_size 200 fits, 240 does not. 10 groups of 32: 320 - 64 - 12 = 244
    assert len(make_folds(320, config, 2)) == 28
    assert min(f.train_rows for f in make_folds(320, config, 2)) == 228
    strict = config.model_copy(update={"min_train_size": 240})
    with pytest.raises(UserInputError, match=r"scheme='cpcv': 320 rows cannot hold n_groups=8 .*only 0 fold\(s\) fit "
                                             r"\(n_groups=10 would fit\)"):
        make_folds(320, strict, 2)
    assert folds_that_fit(320, strict, 2) == 0
