"""Fold backtests in a real NautilusTrader engine, each in a spawned process."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.synthetic import synthetic_candles
from rl_lifecycle.evaluation.backtest import (
    Fill,
    FoldJob,
    align_candles,
    decimals_needed,
    instrument_kind,
    run_fold_backtest,
    run_folds,
    size_precision_for,
    trade_pnls,
)
from rl_lifecycle.evaluation.policies import FeatureSignPolicy, FixedPositions
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import to_us

MARKET = Market("BTCUSDT", "1h")
START = to_us("2024-03-01")


def _candles(bars: int, market: Market = MARKET) -> CandleArrays:
    return CandleArrays.from_frame(synthetic_candles(market, START, START + bars * market.interval_us, seed=11))


class RaisingPolicy:
    fingerprint = "any"
    positions = (0, 1)

    def act(self, vectors, positions):
        raise ArithmeticError("policy exploded on purpose")


class ExitingPolicy:
    fingerprint = "any"
    positions = (0, 1)

    def act(self, vectors, positions):
        os._exit(3)  # the process dies without a word, like a segfault would


def test_instrument_kinds_and_precisions():
    assert instrument_kind("BTCUSDT") == ("crypto", "BTC", "USDT")
    assert instrument_kind("ETHBTC") == ("crypto", "ETH", "BTC")
    assert instrument_kind("BTCUSD") == ("crypto", "BTC", "USD")  # BTC is no fiat currency
    assert instrument_kind("EURUSD") == ("fx", "EUR", "USD")
    assert instrument_kind("USDJPY") == ("fx", "USD", "JPY")
    assert instrument_kind("AAPL") == ("equity", None, "USD")
    assert decimals_needed(np.array([100.01, 99.5, 101.0])) == 2
    assert decimals_needed(np.array([1.23456, 1.2])) == 5
    assert decimals_needed(np.array([3.0, 4.0])) == 0
    candles = _candles(10)
    assert size_precision_for("equity", candles, 1e5) == 0
    # one size increment at the highest price is at most 1e-6 of the balance
    precision = size_precision_for("crypto", candles, 1e5)
    assert 10.0**-precision * candles.high.max() <= 1e-6 * 1e5


def test_trade_pnls_split_reversals_and_mark_open_trades():
    fills = [Fill(0, 0, 2.0, 10.0, 0.2), Fill(2, 0, -4.0, 12.0, 0.4), Fill(3, 0, 2.0, 11.0, 0.2)]
    # long 2 @10 -> sold @12 (half of the reversal fee): 4 - 0.2 - 0.2; short 2 @12 -> covered @11: 2 - 0.2 - 0.2
    assert trade_pnls(fills, last_close=50.0) == pytest.approx([3.6, 1.6])
    assert trade_pnls([Fill(0, 0, 1.0, 10.0, 0.1)], last_close=13.0) == pytest.approx([2.9])


def test_fills_at_the_deciding_bars_close_with_the_fee_on_notional():
    candles = _candles(40)
    sequence = tuple([0, 1, 1, 1, 0, 0, 1, 0] * 5)
    job = FoldJob(MARKET.key, 4, candles, np.zeros((40, 2)), FixedPositions(sequence), cost_bps=25.0,
                  starting_balance=50_000.0)
    result = run_fold_backtest(job)
    assert result.ok, result.error
    assert result.fold_index == 4 and result.instrument == "BTCUSDT.SIM"
    changes = [i for i in range(39) if sequence[i] != (sequence[i - 1] if i else 0)]
    assert [f.bar for f in result.fills] == changes
    for fill in result.fills:
        assert fill.price == candles.close[fill.bar]  # filled at the close of the bar that decided
        assert fill.ts == candles.ts[fill.bar] + MARKET.interval_us  # at that bar's close time
        assert fill.fee == pytest.approx(0.0025 * abs(fill.quantity) * fill.price, abs=1e-8)
    assert np.array_equal(result.close_ts, candles.ts + MARKET.interval_us)
    # positions held after each bar's order: the sequence, except no order at the last bar
    assert result.positions.tolist() == [*sequence[:-1], sequence[-2]]
    assert result.equity[0] == 50_000.0
    assert result.equity[-1] == pytest.approx(result.account_equity, abs=1e-6)
    assert sum(result.trade_pnls) == pytest.approx(result.account_equity - 50_000.0, abs=1e-6)
    assert result.fees_paid == pytest.approx(sum(f.fee for f in result.fills))


def test_rule_policy_goes_short_on_a_margin_account():
    candles = _candles(30)
    signal = np.sin(np.arange(30) / 2.0)[:, None]
    result = run_fold_backtest(FoldJob(MARKET.key, 0, candles, signal, FeatureSignPolicy(allow_short=True), 10.0))
    assert result.ok, result.error
    expected = np.sign(signal[:, 0]).astype(int)  # flat at sin(0) = 0
    assert result.positions[:-1].tolist() == expected[:-1].tolist()
    held = np.cumsum([f.quantity for f in result.fills])
    assert held.min() < 0 < held.max()
    assert result.equity[-1] == pytest.approx(result.account_equity, abs=1e-6)


def _probe_visibility(candles: CandleArrays, market_key: str, pipe) -> None:
    """In a fresh process: which bars can a strategy see, and when?"""
    from nautilus_trader.config import StrategyConfig
    from nautilus_trader.trading.strategy import Strategy

    from rl_lifecycle.evaluation.backtest import build_engine

    engine, instrument, bar_type, _ = build_engine(Market.parse(market_key), candles, 10.0, 10_000.0)

    class Recorder(Strategy):
        def __init__(self):
            super().__init__(StrategyConfig(strategy_id="PROBE-001"))
            self.seen = []

        def on_start(self):
            self.subscribe_bars(bar_type)

        def on_bar(self, bar):
            latest = max(b.ts_init for b in self.cache.bars(bar_type))
            self.seen.append((self.clock.timestamp_ns(), bar.ts_event, bar.ts_init, bar.close.as_double(), latest))

    recorder = Recorder()
    engine.add_strategy(recorder)
    engine.run()
    pipe.send(recorder.seen)
    engine.dispose()


def test_bars_are_not_visible_before_they_close():
    candles = _candles(24)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_probe_visibility, args=(candles, MARKET.key, sender))
    process.start()
    seen = receiver.recv()
    process.join()
    assert len(seen) == 24
    for i, (now, ts_event, ts_init, close, latest) in enumerate(seen):
        closes_at = (int(candles.ts[i]) + MARKET.interval_us) * 1000
        assert ts_event == ts_init == closes_at  # stamped at the close, not the open
        assert now == closes_at  # delivered when the bar has closed
        assert latest <= now  # nothing in the cache from the future
        assert close == pytest.approx(candles.close[i], abs=1e-9)


def test_failing_and_crashing_folds_do_not_take_others_down():
    candles = _candles(20)
    vectors = np.ones((20, 1))
    jobs = [
        FoldJob(MARKET.key, 0, candles, vectors, FeatureSignPolicy(), 10.0),
        FoldJob(MARKET.key, 1, candles, vectors, RaisingPolicy(), 10.0),
        FoldJob(MARKET.key, 2, candles, vectors, ExitingPolicy(), 10.0),
        FoldJob(MARKET.key, 3, candles, vectors[:5], FeatureSignPolicy(), 10.0),
    ]
    results = run_folds(jobs, workers=2)
    assert [r.fold_index for r in results] == [0, 1, 2, 3]
    assert [r.status for r in results] == ["ok", "failed", "failed", "failed"]
    assert results[0].bars == 20 and len(results[0].fills) == 1  # long from the first bar
    assert "ArithmeticError: policy exploded on purpose" in results[1].error
    assert "Traceback" in results[1].error
    assert "exit code 3" in results[2].error
    assert "20 candles for 5 vector rows" in results[3].error


def test_align_candles_refuses_rows_without_a_candle():
    candles = _candles(10)
    rows = candles.ts[[1, 3, 4]]
    assert np.array_equal(align_candles(candles, rows).close, candles.close[[1, 3, 4]])
    with pytest.raises(ValueError, match="1 row\\(s\\) have no stored candle"):
        align_candles(candles, np.array([candles.ts[2], candles.ts[2] + 7]))
