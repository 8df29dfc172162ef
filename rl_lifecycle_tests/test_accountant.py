"""The exact accountant (evaluation/accountant.py) against NautilusTrader, its own scalar loop and the env.

Tolerance against Nautilus: none. The accountant does Nautilus' arithmetic rather than approximating it:
prices, quantities and money are Nautilus fixed-point values (built from a float by rounding half away
from zero at the precision, read back as raw / 10^16: checked here against Nautilus' own objects),
orders are sized in the strategy's float64 order of operations, the fee is MakerTakerFeeModel's Money
of Money, the equity curve is `_result_from_run`'s cumulative sums and the account is booked in
integers of the quote currency's smallest unit, as Nautilus' balance is. So fills, equity curves and
the account's final equity are compared with `==`, bar by bar, on crypto (USDT: 8 decimals) and FX
(USD: 2 decimals) pairs, cash and margin accounts.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.evaluation import accountant
from rl_lifecycle.evaluation.accountant import account, account_candles, fold_result, precisions_for, replay
from rl_lifecycle.evaluation.backtest import FoldJob, build_instrument, run_folds
from rl_lifecycle.evaluation.metrics import buy_and_hold_equity
from rl_lifecycle.evaluation.policies import FixedPositions
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import cost_fraction, step_rewards
from rl_lifecycle.windows import to_us

BALANCE = 100_000.0


def _runs(rng: np.random.Generator, n: int, states: tuple[int, ...], longest: int) -> tuple[int, ...]:
    """Runs of random lengths (1..longest) of positions drawn from `states`, each differing from the last."""
    out, position = [], states[0]
    while len(out) < n:
        out += [position] * int(rng.integers(1, longest + 1))
        position = int(rng.choice([s for s in states if s != position]))
    return tuple(out[:n])


def _sequences(n: int, seed: int) -> dict[str, tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return {
        "long_flat": _runs(rng, n, (0, 1), 24),
        "long_short": _runs(rng, n, (1, 0, -1), 12),
        "flips": tuple(1 if i % 2 else -1 for i in range(n)),  # a reversal at every bar
        "no_trades": (0,) * n,
        "always_long": (1,) * n,
    }


def _assert_same(booked, result, candles) -> None:
    """Every field the accountant shares with the backtest's FoldResult, with ==."""
    assert result.ok, result.error
    fills = [(f.bar, f.quantity, f.price, f.fee) for f in result.fills]
    assert fills == list(zip(booked.fill_bars.tolist(), booked.fill_quantities.tolist(),
                             booked.fill_prices.tolist(), booked.fill_fees.tolist(), strict=True))
    assert np.array_equal(booked.equity, result.equity)
    assert np.array_equal(booked.positions, result.positions)
    assert np.array_equal(booked.fees, result.fees)
    assert np.array_equal(booked.traded_notional, result.traded_notional)
    assert booked.account_equity == result.account_equity
    assert np.array_equal(booked.close, candles.close)


# -- parity with NautilusTrader through the production path ---------------------------------------


@pytest.mark.slow
def test_the_accountant_books_what_the_nautilus_backtest_books_to_the_last_bit(conn):
    start = to_us("2024-05-01")
    jobs, cases = [], []
    for pair, cost_bps in (("BTCUSDT", 10.0), ("EURUSD", 25.0)):
        market = Market(pair, "1h")
        ingest_synthetic(conn, market, start, start + 20 * 24 * market.interval_us, seed=17)
        candles = load_candles(conn, market, start, start + 20 * 24 * market.interval_us)
        assert len(candles) >= 400
        for name, sequence in _sequences(len(candles), seed=len(jobs)).items():
            policy = FixedPositions(sequence)
            jobs.append(FoldJob(market.key, len(jobs), candles, np.zeros((len(candles), 1)), policy, cost_bps, BALANCE))
            cases.append((name, market, candles, sequence, policy, 0))
        # a fold that starts "long": the strategy believes it, and holds nothing until its target changes
        sequence = (1, 1, 1, *_sequences(len(candles), seed=99)["long_flat"][3:])
        jobs.append(FoldJob(market.key, len(jobs), candles, np.zeros((len(candles), 1)), FixedPositions(sequence),
                            cost_bps, BALANCE, initial_position=1))
        cases.append(("starts_long", market, candles, sequence, FixedPositions(sequence), 1))
    results = run_folds(jobs, workers=2)

    for (name, market, candles, sequence, policy, initial), job, result in zip(cases, jobs, results, strict=True):
        margin = min(policy.positions) < 0  # the backtest's choice of account
        # positions as rollout gives them (the policy's targets) and as the backtest returns them
        for positions in (np.asarray(sequence, np.int8), result.positions):
            booked = account_candles(market, candles, positions, job.cost_bps, BALANCE, initial, margin=margin)
            _assert_same(booked, result, candles)
        assert booked.margin == margin
        summary = replay(market, candles, result, job.cost_bps, initial_position=initial)  # the account inferred
        assert summary["agrees"] and summary["exact"] and summary["fills_agree"]
        assert summary["max_equity_difference"] == summary["account_equity_difference"] == 0.0
        assert summary["account"] == ("margin" if margin else "cash") or name == "no_trades"
        expected_fills = {"flips": len(candles) - 1, "no_trades": 0, "always_long": 1}
        if name in expected_fills:
            assert booked.fills == expected_fills[name], name
        elif name == "starts_long":
            assert booked.fill_bars[0] > 3 and booked.fill_quantities[0] > 0  # no sale of what it never bought
        else:
            assert booked.fills > 20, name


def test_precisions_are_the_instruments_the_backtest_builds():
    from rl_lifecycle.candles.frame import CandleArrays
    from rl_lifecycle.candles.synthetic import synthetic_candles

    for pair in ("BTCUSDT", "EURUSD", "ETHBTC", "USDJPY", "AAPL"):
        market = Market(pair, "1h")
        candles = CandleArrays.from_frame(synthetic_candles(market, to_us("2024-05-01"), to_us("2024-05-08"), seed=2))
        instrument, _ = build_instrument(market, candles, 10.0, BALANCE)
        precisions = precisions_for(market, candles, BALANCE)
        assert precisions.size == instrument.size_precision
        assert precisions.price == instrument.price_precision
        assert precisions.currency == instrument.quote_currency.precision
        assert float(instrument.taker_fee) == accountant._fee_rate(10.0)


# -- Nautilus' number formats, against Nautilus' own objects -----------------------------------------


@settings(max_examples=300, deadline=None)
@given(value=st.floats(min_value=0.0, max_value=1e7, allow_nan=False), precision=st.integers(0, 9),
       half=st.sampled_from([0.0, 0.5, -0.5]))
def test_prices_quantities_and_money_round_as_nautilus_does(value, precision, half):
    from nautilus_trader.model.objects import FIXED_PRECISION, Currency, Money, Price, Quantity

    assert FIXED_PRECISION == accountant.FIXED_PRECISION
    value = abs(round(value, precision) + half * 10.0**-precision)  # near and at halves too
    units = accountant._fixed_units(np.array([value]), precision)
    as_double = accountant._fixed_as_double(units, precision)[0]
    for made in (Price(value, precision), Quantity(value, precision)):
        assert made.raw == int(units[0]) * 10 ** (FIXED_PRECISION - precision)
        assert made.as_double() == as_double
    for code in ("USDT", "USD", "JPY"):
        currency = Currency.from_str(code)
        money = Money(-value, currency)
        units = accountant._fixed_units(np.array([-value]), currency.precision)
        assert money.raw == int(units[0]) * 10 ** (FIXED_PRECISION - currency.precision)
        assert money.as_double() == accountant._money_as_double(int(units[0]), currency.precision)


@settings(max_examples=300, deadline=None)
@given(value=st.floats(min_value=0.0, max_value=1e6, allow_nan=False), digits=st.integers(0, 9))
def test_sizes_round_as_python_rounds_them(value, digits):
    near_half = (math.floor(value * 10**digits) + 0.5) / 10**digits  # a decimal half, as a float near it
    values = np.array([value, near_half, np.nextafter(near_half, 0.0), np.nextafter(near_half, np.inf)])
    units = accountant._round_units(values, digits)
    for v, u in zip(values.tolist(), units.tolist(), strict=True):
        assert u == float(Decimal(v).scaleb(digits).to_integral_value())  # half to even on the exact value
        assert u / 10.0**digits == round(v, digits)


def test_the_fee_is_the_fee_models_money():
    from nautilus_trader.model.objects import Currency, Money, Price, Quantity

    book = accountant._Book(size=6, currency=8, fee_rate=accountant._fee_rate(7.5))
    rng = np.random.default_rng(3)
    units = np.floor(rng.uniform(1, 5e6, 500))
    seen = accountant._fixed_as_double(accountant._fixed_units(rng.uniform(100, 70_000, 500), 2), 2)
    usdt = Currency.from_str("USDT")
    for u, s, fee in zip(units.tolist(), seen.tolist(), book.fee(units, seen).tolist(), strict=True):
        quantity, price = Quantity(u / 1e6, 6), Price(s, 2)
        notional = Money(quantity.as_double() * 1.0 * price.as_double(), usdt)  # Instrument.notional_value
        commission = Money(notional.as_double() * book.fee_rate, usdt)  # MakerTakerFeeModel.get_commission
        assert fee == round(commission.as_double(), 8) == book.fee_scalar(u, s)


# -- properties -----------------------------------------------------------------------------------


def _closes(seed: int, n: int, sigma: float = 0.01, start: float = 40_000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(start * np.exp(np.cumsum(sigma * rng.standard_normal(n))), 2)


@contextmanager
def _one_fill_at_a_time():
    """`account` with every size solved by the scalar loop (the strategy's code) instead of the windows."""
    solve = accountant._solve_sizes
    accountant._solve_sizes = lambda *args: solve(*args, scalar_only=True)
    try:
        yield
    finally:
        accountant._solve_sizes = solve


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 3_000), states=st.sampled_from([(0, 1), (-1, 0, 1), (-1, 1)]),
       longest=st.integers(1, 40), cost_bps=st.sampled_from([0.0, 1.0, 10.0, 37.5]),
       size_precision=st.integers(0, 9), currency_precision=st.sampled_from([0, 2, 8]),
       initial=st.sampled_from([-1, 0, 1]))
def test_the_windows_book_what_the_scalar_loop_books(seed, n, states, longest, cost_bps, size_precision,
                                                     currency_precision, initial):
    """The vectorised windows and the strategy's code one fill at a time agree bit for bit."""
    close = _closes(seed, n)
    positions = np.asarray(_runs(np.random.default_rng(seed), n, states, longest), np.int8)
    kwargs = dict(price_precision=2, currency_precision=currency_precision, margin=min(states) < 0)
    booked = account(close, positions, cost_bps, BALANCE, size_precision, initial, **kwargs)
    with _one_fill_at_a_time():
        scalar = account(close, positions, cost_bps, BALANCE, size_precision, initial, **kwargs)
    assert np.array_equal(booked.fill_quantities, scalar.fill_quantities)
    assert np.array_equal(booked.equity, scalar.equity)
    assert (booked.cash, booked.units, booked.account_equity) == (scalar.cash, scalar.units, scalar.account_equity)


def test_windows_hand_stretches_to_the_scalar_loop_where_they_gain_little_and_stay_exact(monkeypatch):
    """Reversals every few bars with a holding of ~1e12 size increments: each size depends on the rounding
    of the ones before it, windows gain few fills, and the scalar loop takes stretches."""
    stretches = []
    scalar = accountant._Chain._scalar
    monkeypatch.setattr(accountant._Chain, "_scalar", lambda self, stop: (stretches.append(stop - self.j),
                                                                          scalar(self, stop)))
    close = _closes(5, 100_000, sigma=0.002)
    positions = np.where(np.arange(100_000) % 3 == 0, 1, -1).astype(np.int8)
    booked = account(close, positions, 0.0, 1e9, 8, price_precision=2, margin=True)
    windows_and_loop = list(stretches)
    with _one_fill_at_a_time():
        one_by_one = account(close, positions, 0.0, 1e9, 8, price_precision=2, margin=True)
    assert booked.fills > 60_000 and 0 < sum(windows_and_loop) < booked.fills
    assert np.array_equal(booked.fill_quantities, one_by_one.fill_quantities)
    assert np.array_equal(booked.equity, one_by_one.equity) and booked.cash == one_by_one.cash


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 2_000), cost_bps=st.floats(0.0, 100.0))
def test_no_positions_keep_the_balance(seed, n, cost_bps):
    booked = account(_closes(seed, n), np.zeros(n, np.int8), cost_bps, BALANCE, 6)
    assert booked.fills == 0 and booked.fees_paid == 0.0
    assert np.all(booked.equity == BALANCE) and booked.account_equity == BALANCE and booked.total_return == 0.0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 2_000), cost_bps=st.floats(0.0, 100.0),
       size_precision=st.integers(3, 9))
def test_a_long_held_from_the_first_bar_is_buy_and_hold_minus_one_fee(seed, n, cost_bps, size_precision):
    close = _closes(seed, n)
    booked = account(close, np.ones(n, np.int8), cost_bps, BALANCE, size_precision, price_precision=2)
    assert booked.fills == 1 and booked.fill_bars[0] == 0
    quantity, fee = booked.fill_quantities[0], booked.fill_fees[0]
    seen = accountant._fixed_as_double(accountant._fixed_units(close[:1], 2), 2)[0]  # Price(close).as_double()
    assert quantity == round(BALANCE / seen, size_precision) and booked.fill_prices[0] == close[0]
    assert fee == pytest.approx(cost_fraction(cost_bps) * quantity * close[0], abs=1e-8)
    # the curve: cash left after the buy plus the units at each close
    assert booked.equity[0] == BALANCE
    assert np.array_equal(booked.equity[1:], (BALANCE - (quantity * close[0] + fee)) + quantity * close[1:])
    # metrics' buy-and-hold baseline holds BALANCE / close[0] units and pays c x BALANCE: apart only by
    # the order's rounding to the size increment (and its fee), and float64 noise
    baseline, _ = buy_and_hold_equity(close, cost_bps, BALANCE)
    increment = 10.0**-size_precision
    bound = 0.5 * increment * (np.abs(close - close[0]) + cost_fraction(cost_bps) * close[0]) + 1e-8 + 1e-12 * BALANCE
    assert np.all(np.abs(booked.equity[1:] - baseline[1:]) <= bound[1:])
    assert booked.account_equity == pytest.approx(booked.final_equity, abs=1e-8 + 1e-12 * BALANCE)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 2_000), states=st.sampled_from([(0, 1), (-1, 0, 1)]),
       cost_bps=st.floats(0.0, 50.0), currency_precision=st.sampled_from([0, 2, 8]))
def test_the_account_and_the_float_books_differ_by_money_rounding_alone(seed, n, states, cost_bps,
                                                                        currency_precision):
    """The strategy follows cash in float64; the account keeps money in currency units: each fill's
    booked amount (cash account: notional; margin: realised P&L) and the unrealised P&L round once."""
    positions = np.asarray(_runs(np.random.default_rng(seed), n, states, 30), np.int8)
    booked = account(_closes(seed, n), positions, cost_bps, BALANCE, 6, price_precision=2,
                     currency_precision=currency_precision)
    unit = 10.0**-currency_precision
    assert booked.account_equity == pytest.approx(booked.final_equity,
                                                  abs=0.5 * unit * (booked.fills + 1) + 1e-9 * BALANCE)


def test_the_last_bars_target_is_never_traded_and_bad_input_is_refused():
    close = _closes(1, 50)
    positions = np.zeros(50, np.int8)
    positions[-1] = 1
    booked = account(close, positions, 10.0, BALANCE, 6)
    assert booked.fills == 0 and booked.positions[-1] == 0
    with pytest.raises(ValueError, match="need one per close"):
        account(close, positions[:-1], 10.0, BALANCE, 6)
    with pytest.raises(ValueError, match="must be -1, 0 or 1"):
        account(close, positions * 2, 10.0, BALANCE, 6)
    with pytest.raises(ValueError, match="cash account cannot hold shorts"):
        account(close, -np.ones(50, np.int8), 10.0, BALANCE, 6, margin=False)
    with pytest.raises(ValueError, match="size_precision=12"):
        account(close, positions, 10.0, BALANCE, 12)
    with pytest.raises(ValueError, match="positive finite"):
        account(np.where(close > close[10], np.nan, close), positions, 10.0, BALANCE, 6)


def test_fold_result_is_a_fold_result_the_report_reads():
    close = _closes(4, 500)
    positions = np.asarray(_runs(np.random.default_rng(4), 500, (0, 1), 20), np.int8)
    ts = np.arange(500, dtype=np.int64) * 3_600_000_000
    result = fold_result(3, ts, close, positions, 10.0, BALANCE)
    booked = account(close, positions, 10.0, BALANCE, 6, price_precision=2)  # 6: one increment <= 1e-6 of it
    assert result.ok and result.fold_index == 3 and np.array_equal(result.equity, booked.equity)
    assert [f.ts for f in result.fills] == ts[booked.fill_bars].tolist()
    assert sum(result.trade_pnls) == pytest.approx(result.account_equity - BALANCE, abs=1e-6)


# -- the env's rewards ------------------------------------------------------------------------------


def _trades(positions: np.ndarray, close: np.ndarray):
    """(side, price ratio, closed?, price move, entered by a reversal?) of each run of a non-flat position
    held after each bar's order."""
    trades, entry, reversal = [], None, False
    for i, held in enumerate(positions.tolist()):
        if entry is not None and held != positions[entry]:
            trades.append((int(positions[entry]), close[i] / close[entry], True, close[i] - close[entry], reversal))
            entry, reversal = None, held != 0
        if held and entry is None:
            entry = i
    if entry is not None:
        trades.append((int(positions[entry]), close[-1] / close[entry], False, close[-1] - close[entry], reversal))
    return trades


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 3_000), cost_bps=st.sampled_from([0.0, 5.0, 10.0, 50.0]),
       states=st.sampled_from([(0, 1), (-1, 0, 1), (-1, 1)]), size_precision=st.integers(4, 8))
def test_the_env_rewards_are_the_accounts_log_growth_in_the_conventions_limit(seed, n, cost_bps, states,
                                                                              size_precision):
    """`trading.step_rewards` are log returns of a fractional exposure, the cost charged as -c per unit
    of position change. The accountant holds whole size increments bought with the equity at each
    order, pays c x notional in cash, and holds a short's quantity rather than its exposure. Per trade
    (a run of one non-flat position) with price ratio R:

    * long/flat without cost: the same log growth, up to the order's rounding to the size increment
      (at most half an increment, held over the trade: 0.5 inc |P_exit - P_entry| / equity);
    * a long pays c at entry and exit in cash: R(1 - c) - c against R e^(-2c), apart by at most
      c |R - 1| / R + 3c^2 (test_backtest_parity's bound; an open trade R - c: c |R - 1| / R + c^2);
    * a short from P0 to P1 earns log(2 - R) in the account and -log R in the env: apart by
      -log(1 - (1 - R)^2), second order in the move. Its fees are c x its quantity at both ends, not c x
      the equity, and a trade entered by a reversal is sized with the equity before the reversal's fee
      (exposure 1 + 2c): for these, at most 4c |R - 1| / min(R, 2 - R) + 10c^2.
    In the limit the convention defines (long/flat, no cost, unbounded size precision) they are equal."""
    close = _closes(seed, n, sigma=0.003)
    positions = np.asarray(_runs(np.random.default_rng(seed + 1), n, states, 40), np.int8)
    booked = account(close, positions, cost_bps, BALANCE, size_precision, price_precision=2, margin=True)
    rewards = float(step_rewards(close, booked.positions[:-1], cost_bps).sum())
    growth = math.log(booked.equity[-1] / BALANCE)
    c = cost_fraction(cost_bps)
    trades = _trades(booked.positions, close)
    assert all(0.8 <= r <= 1.25 for _, r, _, _, _ in trades)
    lowest = float(booked.equity.min())
    increment = 10.0**-size_precision
    rounding = sum(0.5 * increment * (abs(move) + 2 * c * close.max()) for _, _, _, move, _ in trades) / lowest
    rounding += 1e-12 * (booked.fills + 1)  # float64 noise of the books
    fees = sum(c * abs(r - 1) / r + (3 if closed else 1) * c * c if side > 0 and not reversal
               else 4 * c * abs(r - 1) / min(r, 2 - r) + 10 * c * c for side, r, closed, _, reversal in trades)
    shorts = sum(-math.log(1 - (1 - r) ** 2) for side, r, _, _, _ in trades if side < 0)
    assert abs(rewards - growth) <= rounding + fees + shorts
    if c == 0 and min(states) == 0:
        assert rewards == pytest.approx(growth, abs=rounding)  # long/flat: equal but for the rounding
        assert rounding < 1e-4
