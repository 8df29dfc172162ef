"""Calibration of the gates: skill-less and planted-edge contenders through the whole policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.synthetic import synthetic_candles
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.promotion.calibration import (
    Bars,
    calibrate,
    clopper_pearson,
    planted_edge_positions,
    policy_sha256,
    skill_less_positions,
)
from rl_lifecycle.promotion.policy import load_policy, parse_policy
from rl_lifecycle.windows import to_us
from rl_lifecycle_tests.cli_helpers import run_cli

MARKET = Market("CALUSDT", "1h")


@pytest.fixture(scope="module")
def bars() -> Bars:
    candles = CandleArrays.from_frame(synthetic_candles(MARKET, to_us("2024-04-01"), to_us("2024-07-01"), seed=7))
    return Bars(MARKET, candles.ts, candles.close)


def test_skill_less_positions_trade_at_the_rate_asked_and_an_edge_of_one_is_the_oracle(bars):
    rng = np.random.default_rng(1)
    positions = skill_less_positions(rng, 100_000, 1 / 22)
    assert set(np.unique(positions)) == {0, 1}
    assert np.mean(positions[1:] != positions[:-1]) == pytest.approx(1 / 22, rel=0.05)
    oracle = planted_edge_positions(rng, bars.close, 1.0, 1 / 22)
    assert np.array_equal(oracle[:-1], (bars.close[1:] > bars.close[:-1]).astype(np.int8))


def test_the_exact_interval_is_scipys_clopper_pearson():
    low, high = clopper_pearson(0, 500)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 500), rel=1e-9)  # the k = 0 closed form
    low, high = clopper_pearson(5, 500)
    assert low < 0.01 < high


def test_skill_less_challengers_are_rarely_promoted_and_a_strong_edge_often(bars):
    result = calibrate(bars, load_policy(), nulls=40, edge=0.5, edge_trials=20, seed=3)
    assert result.nulls == 40 and result.folds >= 2 and result.bars == len(bars.close)
    assert result.false_promotion_rate <= 0.05
    assert result.power >= 0.8  # docs/evaluation.md: 0.99 at E = 0.5 over 100 decisions
    assert result.ci95[0] <= result.false_promotion_rate <= result.ci95[1]
    assert result.null_reasons  # every rejected null names the gates that stopped it
    assert result.policy_sha256 == policy_sha256(load_policy()) != policy_sha256(parse_policy({"min_psr": 0.5}))
    # a policy without any gate but the fold count promotes nearly every null: the measurement can fail
    lax = parse_policy({key: None for key in ("paired_test", "min_median_sharpe_delta", "min_median_return_delta",
                                              "max_drawdown_worsening", "min_fold_wins", "min_excess_return_over_flat",
                                              "min_excess_return_over_buy_and_hold", "min_psr", "min_dsr")})
    assert calibrate(bars, lax, nulls=10, edge=0.0, edge_trials=1, seed=3).false_promotion_rate >= 0.9


def test_the_cli_prints_one_json_object(conn, rl_env, capsys, monkeypatch):
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.markets.table import add_market

    add_market(conn, MARKET, source="import")
    ingest_synthetic(conn, MARKET, to_us("2024-04-01"), to_us("2024-07-01"), seed=7)
    code, out, err = run_cli(capsys, monkeypatch, "gates", "calibrate", "--market", MARKET.key, "--nulls", "4",
                             "--edge-trials", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    for key in ("nulls", "false_promotions", "false_promotion_rate", "ci95", "edge", "power", "policy_sha256"):
        assert key in result
    assert result["nulls"] == 4 and len(result["ci95"]) == 2
    code, _, err = run_cli(capsys, monkeypatch, "gates", "calibrate", "--market", "NOPE-1h", "--nulls", "2")
    assert code == 2 and "has no candles" in err
