"""Walk-forward folds: property tests of purge, embargo, ordering and reproducibility."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.folds import Fold, FoldConfig, folds_that_fit, make_folds, verify_folds


@st.composite
def fold_setups(draw):
    horizon = draw(st.integers(0, 5))
    scheme = draw(st.sampled_from(["expanding", "rolling"]))
    min_train = draw(st.integers(1, 40))
    fields = {
        "n_folds": draw(st.integers(1, 6)),
        "scheme": scheme,
        "test_size": draw(st.one_of(st.none(), st.integers(2, 30))),
        "purge_bars": horizon + draw(st.integers(0, 4)),
        "embargo_bars": draw(st.integers(0, 12)),
        "min_train_size": min_train,
    }
    if scheme == "rolling":
        fields["train_size"] = min_train + draw(st.integers(0, 40))
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
        assert len(train) >= config.min_train_size
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
