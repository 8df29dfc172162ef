"""Parity: the env's cumulative reward and the Nautilus account agree for a fixed long/flat sequence.

Tolerance, and why (docs/evaluation.md, "Parity"): the env charges the cost as a log return (-c per
unit of position change); the account pays c x notional in cash. A round trip with price ratio
R = P_exit / P_entry grows the account by R(1 - c) - c and the env by R e^(-2c): per trade the log
difference is log(1 - c - c/R) + 2c ~ c(R - 1)/R - c^2 (1 + 1/R)^2 / 2, within c|R - 1|/R + 3c^2 for
R >= 0.8. A trade still open at the end pays no exit fee: log(R - c) vs log R - c, within
c|R - 1|/R + c^2. Everything else is rounding: the order quantity to the size increment (at most
one increment's value per order) and the fee to the quote currency's 8 decimals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.evaluation.backtest import FoldJob, run_fold_backtest, size_precision_for
from rl_lifecycle.evaluation.policies import FixedPositions
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import cost_fraction, step_rewards
from rl_lifecycle.windows import to_us

pytestmark = pytest.mark.slow

MARKET = Market("BTCUSDT", "1h")
BALANCE = 100_000.0


def _long_flat_sequence(n: int, seed: int) -> tuple[int, ...]:
    """Runs of long and flat of random lengths (1..24 bars)."""
    rng = np.random.default_rng(seed)
    out, position = [], 0
    while len(out) < n:
        out += [position] * int(rng.integers(1, 25))
        position = 1 - position
    return tuple(out[:n])


def _trades(positions: np.ndarray, close: np.ndarray) -> list[tuple[float, bool]]:
    """(price ratio, closed?) of each long run of positions held after each bar's order."""
    trades, entry = [], None
    for i, held in enumerate(positions):
        if held and entry is None:
            entry = i
        elif not held and entry is not None:
            trades.append((close[i] / close[entry], True))
            entry = None
    if entry is not None:
        trades.append((close[-1] / close[entry], False))
    return trades


@pytest.mark.parametrize("cost_bps", [0.0, 10.0, 50.0])
def test_env_return_equals_nautilus_account_return_within_fee_rounding(conn, cost_bps):
    start = to_us("2024-05-01")
    ingest_synthetic(conn, MARKET, start, start + 21 * 24 * MARKET.interval_us, seed=21)
    candles = load_candles(conn, MARKET, start, start + 21 * 24 * MARKET.interval_us)
    n = len(candles)
    assert n == 504
    sequence = _long_flat_sequence(n, seed=int(cost_bps))
    job = FoldJob(MARKET.key, 0, candles, np.zeros((n, 1)), FixedPositions(sequence), cost_bps, BALANCE)
    result = run_fold_backtest(job)
    assert result.ok, result.error

    c = cost_fraction(cost_bps)
    positions = result.positions  # the sequence; the last bar sends no order
    env_log = float(step_rewards(candles.close, positions[:-1], cost_bps).sum())
    nautilus_log = math.log(result.account_equity / BALANCE)
    trades = _trades(positions, candles.close)
    assert len(trades) >= 10

    # rounding: one size increment per order, valued at the highest price, against the lowest equity,
    # plus the fee's rounding to the quote currency's 8 decimals
    increment = 10.0 ** -size_precision_for("crypto", candles, BALANCE)
    lowest_equity = float(result.equity.min())
    rounding = len(result.fills) * (increment * float(candles.high.max()) / lowest_equity + 1e-8 / lowest_equity)

    # 1. the account follows cash accounting exactly, up to rounding
    account_model = sum(math.log(r * (1 - c) - c) if closed else math.log(r - c) for r, closed in trades)
    assert nautilus_log == pytest.approx(account_model, abs=rounding)

    # 2. the env's log growth differs from it only by the fee compounding terms, stated per trade
    fee_terms = sum(c * abs(r - 1) / r + (3 * c * c if closed else c * c) for r, closed in trades)
    assert min(r for r, _ in trades) >= 0.8
    assert abs(env_log - nautilus_log) <= fee_terms + rounding
    if cost_bps == 0.0:  # without fees the two are the same number, up to rounding alone
        assert env_log == pytest.approx(nautilus_log, abs=rounding)
    assert rounding < 1e-4
