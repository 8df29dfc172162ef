"""The exact accountant: a fold's fills, equity curve and Nautilus account in numpy, bit for bit.

`account(close, positions, cost_bps, starting_balance, size_precision, ...)` books the positions a
policy takes exactly as a fold backtest in NautilusTrader does (`backtest.py`), without running it:

* **Orders** (the strategy): when the target changes at bar t < n - 1, equity = cash + units x price
  and the order is `round(|target x equity / price - units|, size_precision)` units, bought or sold
  at bar t's close. Cash and units are followed in float64 in the strategy's order of operations;
  `price` is the close as Nautilus holds it (a fixed-point `Price` at the price precision, read back
  as a double), the fill price that decimal. A change of less than one size increment trades nothing.
* **Fees** (`MakerTakerFeeModel`): the notional `quantity x price` as `Money` (rounded half away from
  zero to the quote currency's precision), times the fee `cost_bps / 1e4`, as `Money` again.
* **Equity** (`FoldResult.equity`): marked at each close before its order, cash and units rebuilt
  from the fills by cumulative sums, as `backtest._result_from_run` does.
* **The account** (`FoldResult.account_equity`): the quote balance as Nautilus books it, in integers
  of the currency's smallest unit (a cash account books each fill's notional and fee; a margin
  account, used when the policy can go short, each closing fill's realised P&L and every fee), plus
  the holding valued at the last close.

All of it is exact: quantities, prices and fees per fill, the equity curve and the account equity
equal the backtest's to the last bit (rl_lifecycle_tests/test_accountant.py runs both).

**Fill convention** (`trading.FILLS`): with `opens`, `next_open`: a target decided at bar t's close is
traded at bar t+1's open, sized there (equity = cash + units x open[t+1], the open as Nautilus holds it) and
filled at that open; equity marked at bar t+1's close includes it. Same arithmetic, another price.

Vectorised: nothing loops over bars. A fill's size depends on the equity the fills before it left,
so the sizes form a chain, which `_Chain` solves in windows of fills: guess the holding after each
fill of the window from an equity path (at first the unrounded strategy's, a continued fraction; then
the path last booked, rescaled to the exact equity where the window starts), book the guesses with
cumulative sums (the float64 operations the strategy would do with them, in its order), recompute
every size from the state so booked, and accept the fills up to the first that differs, and that one
(recomputed from an exact state). A size moves the later equity only by the P&L of its rounding over
one holding period, a few thousandths of a size increment, so a window accepts hundreds of fills.
Where a holding runs to very many increments, sizes become sensitive to each other's rounding and
windows gain little; then the scalar loop (the strategy's code, one fill at a time) takes stretches.
Speed: `backtest.accountant_bars_per_s` in rl_lifecycle/bench/evaluation.py (docs/evaluation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cached_property

import numpy as np

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.evaluation.backtest import (
    MAX_PRECISION,
    Fill,
    FoldResult,
    decimals_needed,
    instrument_kind,
    size_precision_for,
    trade_pnls,
)
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import FILL_CLOSE, FILL_NEXT_OPEN, check_fill

FIXED_PRECISION = 16  # decimals of Nautilus' fixed-point values (its high-precision build; checked by the tests)
_FIXED_SCALE = 10.0**FIXED_PRECISION
_EXACT_INT = 2.0**53  # integers below this are exact in float64
_MIN_WINDOW, _MAX_WINDOW = 64, 1 << 15  # fills per window of `_Chain`
_MIN_GAIN, _SLOW_WINDOWS, _SCALAR_STRETCH = 64, 2, 256  # windows gaining less hand stretches to the scalar loop
_LEVELS_PER_CHUNK = 4096  # fills per slice of the equity curve


@dataclass(frozen=True)
class Precisions:
    """The instrument's decimals the fold backtest uses (`backtest.build_instrument`)."""

    size: int
    price: int
    currency: int  # of the quote currency, in which cash, fees and the account are kept


def precisions_for(market: str | Market, candles: CandleArrays, starting_balance: float) -> Precisions:
    """The precisions `build_instrument` gives the market's instrument for these candles."""
    from nautilus_trader.model.objects import Currency

    pair = (market if isinstance(market, Market) else Market.parse(market)).pair
    kind, _, quote = instrument_kind(pair)
    return Precisions(
        size=size_precision_for(kind, candles, starting_balance),
        price=decimals_needed(np.concatenate([candles.open, candles.high, candles.low, candles.close])),
        currency=int(Currency.from_str(quote).precision),
    )


@dataclass
class AccountResult:
    """A fold booked by the accountant; per-bar arrays in `FoldResult`'s conventions."""

    starting_balance: float
    close: np.ndarray
    positions: np.ndarray  # int8, held after each bar's order (no order at the last bar)
    equity: np.ndarray  # marked at each close, before its order
    fill_bars: np.ndarray  # int64, the bar at whose close (fill next_open: at whose open) each fill happened
    fill_quantities: np.ndarray  # signed: + buy, - sell
    fill_prices: np.ndarray
    fill_fees: np.ndarray  # quote currency
    units: float  # held after the last fill, as the strategy follows it
    cash: float  # quote cash after the last fill, as the strategy follows it
    account_equity: float  # the Nautilus account at the last close (FoldResult.account_equity)
    margin: bool  # booked as a margin account (else a cash account)
    precisions: Precisions = field(default_factory=lambda: Precisions(0, 0, 0))
    fill: str = "close"  # the fill convention booked (`trading.FILLS`)

    @property
    def bars(self) -> int:
        return len(self.close)

    @property
    def fills(self) -> int:
        return len(self.fill_bars)

    @property
    def final_equity(self) -> float:
        """Cash + units x the last close, in the strategy's float64 arithmetic."""
        return self.cash + self.units * float(self.close[-1]) if len(self.close) else self.starting_balance

    @property
    def total_return(self) -> float:
        """Over the equity curve: E_last / E_first - 1 (metrics.py's definition)."""
        return float(self.equity[-1] / self.equity[0] - 1.0) if len(self.equity) else 0.0

    @property
    def fees_paid(self) -> float:
        return float(self.fill_fees.sum())

    def _per_bar(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.close))
        out[self.fill_bars] = values
        return out

    @cached_property
    def quantities(self) -> np.ndarray:
        """Signed fill size at each bar (0 where nothing was traded)."""
        return self._per_bar(self.fill_quantities)

    @cached_property
    def fees(self) -> np.ndarray:
        """Fee paid at each bar, quote currency."""
        return self._per_bar(self.fill_fees)

    @cached_property
    def traded_notional(self) -> np.ndarray:
        """|quantity| x price traded at each bar, quote currency."""
        return self._per_bar(np.abs(self.fill_quantities) * self.fill_prices)


# -- Nautilus' number formats ----------------------------------------------------------------------


def _round_half_up(y: np.ndarray) -> np.ndarray:
    """Rust's f64::round for y >= 0 (or NaN), exactly: y - floor(y) is exact in float64."""
    whole = np.floor(y)
    whole += (y - whole) >= 0.5
    return whole


def _round_half_away(y: np.ndarray) -> np.ndarray:
    """Rust's f64::round (half away from zero), exactly: y - trunc(y) is exact in float64."""
    whole = np.trunc(y)
    return whole + np.copysign((np.abs(y - whole) >= 0.5).astype(np.float64), y)


def _round_half_away_scalar(y: float) -> float:
    whole = float(math.trunc(y))
    return whole + math.copysign(1.0, y) if abs(y - whole) >= 0.5 else whole


def _fixed_units(values: np.ndarray, precision: int) -> np.ndarray:
    """The integer n (as float64) of a Nautilus Price/Quantity/Money built from a float: raw = n x 10^(16 - precision)."""
    return _round_half_away(values * 10.0**precision)


def _fixed_as_double(units: np.ndarray | float, precision: int) -> np.ndarray | float:
    """`as_double()` of that value: raw / 10^16, with raw converted to float64 first (exact below 2^53 units)."""
    return (units * 10.0 ** (FIXED_PRECISION - precision)) / _FIXED_SCALE


def _round_units(values: np.ndarray, digits: int) -> np.ndarray:
    """`round(v, digits) x 10^digits` as Python rounds floats (half to even, on the exact binary value),
    as float64 integers, for v >= 0. x * 10^digits is rounded once; only a product within two ulps of a
    half can round to the other side, and those few are rounded in Decimal."""
    scaled = values * 10.0**digits
    units = np.rint(scaled)
    top = float(np.max(scaled)) if len(scaled) else 0.0
    # within two ulps of a half (judged at the largest value: a few more candidates, never fewer)
    near = np.abs(scaled - units) >= 0.5 - 2.0 * float(np.spacing(top if math.isfinite(top) else 0.0))
    for i in np.flatnonzero(near & np.isfinite(scaled)):
        units[i] = float(Decimal(float(values[i])).scaleb(digits).to_integral_value(ROUND_HALF_EVEN))
    return units


def _fee_rate(cost_bps: float) -> float:
    """float(instrument.taker_fee), the Decimal `build_instrument` gives the instrument."""
    return float(Decimal(repr(float(cost_bps))) / Decimal(10_000))


@dataclass(frozen=True)
class _Book:
    """The per-fill arithmetic of one fold: sizes in size increments ("units"), money in currency units."""

    size: int
    currency: int
    fee_rate: float

    @property
    def size_scale(self) -> float:
        return 10.0**self.size

    def commission_units(self, units: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """MakerTakerFeeModel: Money(Money(qty x px) x fee) for |units| at the prices as Nautilus reads them."""
        quantity = _fixed_as_double(np.abs(units), self.size)
        notional = _fixed_as_double(_round_half_up(quantity * seen * 10.0**self.currency), self.currency)
        commission = notional * self.fee_rate * 10.0**self.currency
        return _round_half_up(commission) if self.fee_rate >= 0 else _round_half_away(commission)

    def fee(self, units: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """The fee as the strategy and FoldResult record it: round(commission.as_double(), currency precision)."""
        return self.commission_units(units, seen) / 10.0**self.currency

    def fee_scalar(self, units: float, seen: float) -> float:
        quantity = (abs(units) * 10.0 ** (FIXED_PRECISION - self.size)) / _FIXED_SCALE
        scale = 10.0**self.currency
        notional = _round_half_away_scalar(quantity * seen * scale)
        notional = (notional * 10.0 ** (FIXED_PRECISION - self.currency)) / _FIXED_SCALE
        return _round_half_away_scalar(notional * self.fee_rate * scale) / scale


# -- the chain of fill sizes ------------------------------------------------------------------------


def _growth_guess(target: np.ndarray, seen: np.ndarray, cost: float) -> np.ndarray:
    """E[k+1] / E[k] between candidate fills k and k+1 (the last entry 1) for the unrounded strategy
    (holding target x equity / price), E[k] the equity before fill k.

    E[k+1] = a[k] E[k] + b[k] E[k-1], the fee of fill k being c |H[k+1] - H[k]| p[k] with
    H[k+1] = target[k] E[k] / p[k]; so r[k] = E[k+1] / E[k] = a[k] + b[k] / r[k-1], a continued
    fraction that a few fixed-point sweeps evaluate (each shrinks the error by about c). A guess only."""
    m = len(target)
    if not m:
        return np.empty(0)
    before = np.concatenate(([0.0], target[:-1]))  # the first fill starts from no holding
    direction = np.sign(target - before)  # the sign of the holding's change while equity is positive
    a = 1.0 - cost * direction * target
    a[:-1] += target[:-1] * (seen[1:] - seen[:-1]) / seen[:-1]
    b = np.zeros(m)
    b[1:] = cost * direction[1:] * before[1:] * seen[1:] / seen[:-1]
    ratio = a.copy()
    for _ in range(4):
        ratio[1:] = a[1:] + b[1:] / ratio[:-1]
    ratio[-1] = 1.0
    return ratio


def _solve_sizes(target: np.ndarray, seen: np.ndarray, price: np.ndarray, cash: float, book: _Book,
                 scalar_only: bool = False):
    """Signed size (units) of the order at each candidate fill, the strategy's arithmetic exactly
    (see the module doc). Returns (units, cash, held) with cash and held after the last fill.
    `scalar_only`: book every fill in the scalar loop (the tests compare both ways)."""
    chain = _Chain(target, seen, price, cash, book)
    with np.errstate(all="ignore"):  # a guess may overflow; every accepted size is recomputed exactly
        units, cash, held = chain.solve() if not scalar_only else chain.scalar_all()
    if len(units) and np.abs(units).max() >= _EXACT_INT:
        raise ValueError(f"an order of {np.abs(units).max():.0f} size increments exceeds what float64 holds exactly")
    return units, cash, held


class _Chain:
    """The windows of `_solve_sizes`; holdings in size increments ("units"), held after each fill.

    A window books guessed holdings from the exact state where it starts. Up to the first guess that
    differs from the size recomputed from the booked state, the booked state is exact, so those sizes
    are; the first differing one is recomputed from an exact state, so it is exact too. Windows that
    gain too few fills (a large holding in units makes each size sensitive to the rounding of the ones
    before it) hand a stretch to the scalar loop, the strategy's code one fill at a time."""

    def __init__(self, target, seen, price, cash, book: _Book):
        self.target, self.seen, self.price, self.book = target, seen, price, book
        self.m = len(target)
        self.units = np.empty(self.m)  # the answer: signed trade per candidate fill
        self.growth = _growth_guess(target, seen, cost=book.fee_rate)
        self.j, self.cash, self.held, self.holding = 0, float(cash), 0.0, 0.0  # exact state before fill j

    def solve(self):
        width, slow = 256, 0
        while self.j < self.m:
            if slow >= _SLOW_WINDOWS:
                self._scalar(min(self.m, self.j + _SCALAR_STRETCH))
                width, slow = 256, 0
                continue
            start = self.j
            self._window(min(self.m, start + width))
            gained = self.j - start
            width = max(_MIN_WINDOW, min(_MAX_WINDOW, 2 * gained + 64))
            slow = slow + 1 if gained < _MIN_GAIN else 0
        return self.units, self.cash, self.held

    def scalar_all(self):
        self._scalar(self.m)
        return self.units, self.cash, self.held

    def _window(self, stop: int) -> None:
        j, book = self.j, self.book
        scale = book.size_scale
        t, s, p = self.target[j:stop], self.seen[j:stop], self.price[j:stop]
        w = stop - j
        shape = np.empty(w)  # E[k] from the equity path's shape, rescaled to the exact equity at j
        shape[0] = self.cash + self.held * s[0]
        np.cumprod(self.growth[j:stop - 1], out=shape[1:])
        shape[1:] *= shape[0]
        guess = np.rint(t * shape / s * scale)  # holdings after each fill
        before = np.concatenate(([self.holding], guess[:-1]))
        trade = guess - before
        quantity = trade / scale
        held_path = np.cumsum(np.concatenate(([self.held], quantity)))
        cash_path = np.cumsum(np.concatenate(([self.cash], -(quantity * p + book.fee(trade, s)))))
        held_before, cash_before = held_path[:-1], cash_path[:-1]
        equity = cash_before + held_before * s
        delta = t * equity / s - held_before
        exact = np.copysign(_round_units(np.abs(delta), book.size), delta)
        differs = np.flatnonzero(exact != trade)  # a NaN guess differs too
        first = int(differs[0]) if len(differs) else w
        self.units[j:j + first] = trade[:first]
        if first < w:  # recomputed from the exact state before it
            size = float(exact[first])
            self.units[j + first] = size
            q = size / scale
            self.held = float(held_before[first]) + q
            self.cash = float(cash_before[first]) - (q * float(p[first]) + book.fee_scalar(size, float(s[first])))
            self.holding = float(before[first]) + size
            self.j = j + first + 1
        else:
            self.held, self.cash, self.holding = float(held_path[-1]), float(cash_path[-1]), float(guess[-1])
            self.j = stop
        # the path just booked is the next guess's shape (rescaled where the next window starts)
        booked = equity[1:] / equity[:-1]
        np.copyto(self.growth[j:stop - 1], booked, where=np.isfinite(booked) & (booked > 0))

    def _scalar(self, stop: int) -> None:
        """Fills j..stop-1 one at a time: TargetPositionStrategy.on_bar and on_order_filled, with the
        fee inlined (`_Book.fee_scalar`) and `round(x, digits)` as an integer rounding of x x 10^digits,
        except within two ulps of a half, where Python's own rounding decides."""
        book = self.book
        scale, digits = book.size_scale, book.size
        money, rate = 10.0**book.currency, book.fee_rate
        size_raw, money_raw = 10.0 ** (FIXED_PRECISION - book.size), 10.0 ** (FIXED_PRECISION - book.currency)
        floor, half_away = math.floor, _round_half_away_scalar
        cash, held, holding = self.cash, self.held, self.holding
        j = self.j
        out = []
        for t, s, p in zip(self.target[j:stop].tolist(), self.seen[j:stop].tolist(), self.price[j:stop].tolist(),
                           strict=True):
            delta = t * (cash + held * s) / s - held
            wanted = (delta if delta >= 0.0 else -delta) * scale
            units = round(wanted)
            if abs(wanted - units) >= 0.5 - 4.5e-16 * wanted:
                units = round(round(abs(delta), digits) * scale)
            if units:
                z = units * size_raw / _FIXED_SCALE * s * money  # the notional, in currency units
                whole = floor(z)
                z = (whole + (z - whole >= 0.5)) * money_raw / _FIXED_SCALE * rate * money  # the commission
                if rate >= 0.0:
                    whole = floor(z)
                    fee = (whole + (z - whole >= 0.5)) / money
                else:
                    fee = half_away(z) / money
                signed = float(units) if delta > 0 else -float(units)
                q = signed / scale
                held += q
                cash -= q * p + fee
                holding += signed
                out.append(signed)
            else:
                out.append(0.0)
        self.units[j:stop] = out
        self.cash, self.held, self.holding, self.j = cash, held, holding, stop


# -- the Nautilus account ---------------------------------------------------------------------------


def _money_sum(units: np.ndarray) -> int:
    """The exact sum of integer-valued floats below 2^53. int64 addition wraps, so the int64 sum is exact
    whenever the total fits, whatever the partial sums do; otherwise Python integers."""
    if not len(units) or abs(float(units.sum())) < 2.0**62:
        return int(units.astype(np.int64).sum())
    return sum(int(u) for u in units)


def _exact_product_units(a: np.ndarray, b: np.ndarray) -> list[int] | np.ndarray:
    product = a * b
    if not len(product) or product.max() < _EXACT_INT:
        return product
    return [int(x) * int(y) for x, y in zip(a, b, strict=True)]


def _cash_balance(units, before, price_units, book, precisions) -> int:
    """CashAccount.calculate_pnls: Money(-+ fill_px x fill_qty) as Decimals, then float, then Money."""
    closing = (before != 0) & (np.sign(before) != np.sign(units))
    booked = np.where(closing, np.minimum(np.abs(units), np.abs(before)), np.abs(units))
    digits = precisions.price + precisions.size
    product = _exact_product_units(price_units, booked)
    if isinstance(product, list):
        notional = np.array([n / 10**digits for n in product])
    else:
        notional = product / 10.0**digits  # correctly rounded: both operands are exact
    pnl = _fixed_units(np.where(units > 0, -notional, notional), book.currency)
    return _money_sum(pnl)


def _margin_balance(units, before, seen, book) -> tuple[int, float]:
    """MarginAccount.calculate_pnls: each closing fill's P&L against the position's average open price.
    Returns (balance change without fees, average open price of the position left open)."""
    after = before + units
    opens = (before == 0) | ((after != 0) & (np.sign(after) != np.sign(before)))
    adds = (before != 0) & (np.sign(units) == np.sign(before)) & (units != 0)
    if adds.any():
        return _margin_balance_scalar(units, before, seen, book)
    index = np.maximum.accumulate(np.where(opens, np.arange(len(units)), -1))
    opened_at = np.concatenate(([-1], index[:-1]))  # the fill that opened the position a fill meets
    closing = (before != 0) & (np.sign(units) != np.sign(before))
    k = np.flatnonzero(closing)
    average = seen[opened_at[k]]
    held_units = np.abs(before[k])
    quantity = _fixed_as_double(np.minimum(np.abs(units[k]), held_units), book.size)
    quantity = np.minimum(quantity, held_units / book.size_scale)  # fmin with |signed_qty|
    points = np.where(before[k] > 0, seen[k] - average, average - seen[k])
    pnl = _fixed_units(quantity * 1.0 * points, book.currency)
    last_open = float(seen[index[-1]]) if len(units) and index[-1] >= 0 else 0.0
    return _money_sum(pnl), last_open


def _margin_balance_scalar(units, before, seen, book) -> tuple[int, float]:
    """The same with Position's average open price over fills that add to a position."""
    total, average = 0, 0.0
    scale = book.size_scale
    for n, h, s in zip(units.tolist(), before.tolist(), seen.tolist(), strict=True):
        if h != 0 and (n > 0) != (h > 0):
            quantity = _fixed_as_double(min(abs(n), abs(h)), book.size)
            quantity = min(quantity, abs(h) / scale)
            points = s - average if h > 0 else average - s
            total += int(_round_half_away_scalar(quantity * 1.0 * points * 10.0**book.currency))
        after = h + n
        if h == 0 or (after != 0 and (after > 0) != (h > 0)):
            average = s
        elif (n > 0) == (h > 0):  # Position._calculate_avg_px over the open quantity
            qty = _fixed_as_double(abs(h), book.size)
            last_qty = _fixed_as_double(abs(n), book.size)
            average = (average * qty + s * last_qty) / (qty + last_qty)
    return total, average


def _account_equity(units, seen, price_units, close_last, starting_balance, book, precisions, margin) -> float:
    before = np.concatenate(([0.0], np.cumsum(units)[:-1]))  # exact: integers below 2^53
    balance = int(_round_half_away_scalar(float(starting_balance) * 10.0**book.currency))
    balance -= _money_sum(book.commission_units(units, seen))
    holding = int(units.sum()) if len(units) else 0
    if not margin:
        balance += _cash_balance(units, before, price_units, book, precisions)
        return _money_as_double(balance, book.currency) + (holding / 10**book.size) * close_last
    pnl, average = _margin_balance(units, before, seen, book) if len(units) else (0, 0.0)
    equity = _money_as_double(balance + pnl, book.currency)
    if holding:
        mark = float(_fixed_as_double(_round_half_away_scalar(close_last * 10.0**precisions.price), precisions.price))
        quantity = min(_fixed_as_double(abs(holding), book.size), abs(holding) / 10**book.size)
        points = mark - average if holding > 0 else average - mark
        equity += _money_as_double(int(_round_half_away_scalar(quantity * 1.0 * points * 10.0**book.currency)),
                                   book.currency)
    return equity


def _money_as_double(units: int, precision: int) -> float:
    """Money.as_double(): the i128 raw converted to float64 (correctly rounded, as Python converts ints), / 10^16."""
    return float(units * 10 ** (FIXED_PRECISION - precision)) / _FIXED_SCALE


# -- the accountant -----------------------------------------------------------------------------------


def account(close: np.ndarray, positions: np.ndarray, cost_bps: float, starting_balance: float,
            size_precision: int, initial_position: int = 0, *, price_precision: int | None = None,
            currency_precision: int = 8, margin: bool | None = None,
            opens: np.ndarray | None = None) -> AccountResult:
    """Book `positions` (target per bar, as `trading.rollout` or `FoldResult.positions` give them; the
    last bar's is never traded) over `close` as the fold backtest would; see the module doc.

    `price_precision` defaults to the closes' decimals (`decimals_needed`); the backtest takes it over
    open, high, low and close (`precisions_for`). `currency_precision` is the quote currency's
    (8: USDT, 2: USD, 0: JPY). `margin`: book a margin account (the backtest's choice for a policy that
    can go short); None: when some position is short. A cash account cannot hold shorts. `opens`: the bars'
    opens, for the `next_open` fill convention (a target decided at bar t fills at open[t + 1])."""
    close = np.ascontiguousarray(close, dtype=np.float64)
    targets = np.asarray(positions)
    n = len(close)
    if targets.shape != (n,):
        raise ValueError(f"positions: need one per close ({n}), got shape {targets.shape}")
    lowest, highest = (targets.min(), targets.max()) if n else (0, 0)
    if not (lowest >= -1 and highest <= 1
            and (targets.dtype.kind in "iub" or np.array_equal(targets, np.round(targets)))):
        raise ValueError(f"positions: targets must be -1, 0 or 1, got {np.unique(targets)[:10].tolist()}")
    if initial_position not in (-1, 0, 1):
        raise ValueError(f"initial_position={initial_position!r}: must be -1, 0 or 1")
    for name, value, top in (("size_precision", size_precision, MAX_PRECISION),
                             ("price_precision", price_precision, MAX_PRECISION),
                             ("currency_precision", currency_precision, FIXED_PRECISION)):
        if value is not None and not (isinstance(value, int | np.integer) and 0 <= value <= top):
            raise ValueError(f"{name}={value!r}: must be an integer in [0, {top}]")
    if not (math.isfinite(starting_balance) and starting_balance > 0):
        raise ValueError(f"starting_balance={starting_balance!r}: must be a positive number")
    if n and not (close.min() > 0 and close.max() < math.inf):  # NaN fails both
        raise ValueError("close: every close must be a positive finite number")
    if opens is not None:
        opens = np.ascontiguousarray(opens, dtype=np.float64)
        if opens.shape != (n,) or (n and not (opens.min() > 0 and opens.max() < math.inf)):
            raise ValueError(f"opens: need one positive finite open per close ({n}), got shape {opens.shape}")
    targets = targets.astype(np.int8, copy=False)
    shorts = bool(lowest < 0) or initial_position < 0
    margin = shorts if margin is None else bool(margin)
    if shorts and not margin and (targets[:-1] < 0).any():
        raise ValueError("a cash account cannot hold shorts: book positions with shorts with margin=True")
    if price_precision is None:
        price_precision = decimals_needed(close if opens is None else np.concatenate([close, opens]))
    price_precision = int(price_precision)
    precisions = Precisions(int(size_precision), price_precision, int(currency_precision))
    book = _Book(precisions.size, precisions.currency, _fee_rate(cost_bps))

    held_targets = targets.copy()
    if n:
        held_targets[-1] = targets[-2] if n > 1 else initial_position  # no order at the last bar
    decisions = targets[:-1]
    if len(decisions):
        changed = np.flatnonzero(decisions[1:] != decisions[:-1]) + 1
        bars = np.concatenate(([0], changed)) if decisions[0] != initial_position else changed
    else:
        bars = np.empty(0, np.int64)
    # where each decision trades: at its bar's close, or (next_open) at the next bar's open
    fill_at = bars if opens is None else bars + 1
    fill_source = close if opens is None else opens
    price_units = _fixed_units(fill_source[fill_at], precisions.price)
    if len(price_units) and price_units.max() >= _EXACT_INT:
        raise ValueError(f"prices: {fill_source[fill_at].max()} at {precisions.price} decimals exceeds float64's "
                         "exact integers")
    seen = _fixed_as_double(price_units, precisions.price)  # bar.close.as_double(): what the strategy sizes with
    fill_price = price_units / 10.0**precisions.price  # round(last_px.as_double(), price_precision)
    units, cash, held = _solve_sizes(decisions[bars].astype(np.float64), seen, fill_price,
                                     float(starting_balance), book)

    traded = units != 0
    units, bars, fill_at, seen, fill_price, price_units = (a[traded] for a in (units, bars, fill_at, seen, fill_price,
                                                                                price_units))
    quantity = units / book.size_scale
    fee = book.fee(units, seen)
    # a decision at bar b changes the equity marked from bar b + 1 on, filled at b's close or b + 1's open alike
    equity = _equity_curve(n, float(starting_balance), bars, quantity, fill_price, fee, close)
    account_equity = _account_equity(units, seen, price_units, float(close[-1]) if n else 0.0,
                                     starting_balance, book, precisions, margin)
    return AccountResult(
        starting_balance=float(starting_balance), close=close, positions=held_targets, equity=equity,
        fill_bars=fill_at.astype(np.int64), fill_quantities=quantity, fill_prices=fill_price, fill_fees=fee,
        units=held, cash=cash, account_equity=account_equity, margin=margin, precisions=precisions,
        fill="close" if opens is None else "next_open",
    )


def _equity_curve(n, starting_balance, bars, quantity, price, fee, close) -> np.ndarray:
    """FoldResult.equity: cash and units before each bar's order from cumulative sums of the fills
    (the same sums `_result_from_run` takes over every bar: adding the zeros between fills changes
    nothing), spread over the bars a few thousand fills at a time, so temporaries stay in cache."""
    cash_levels = np.empty(len(bars) + 1)
    cash_levels[0] = 0.0
    np.cumsum(-quantity * price - fee, out=cash_levels[1:])
    cash_levels += starting_balance
    unit_levels = np.empty(len(bars) + 1)
    unit_levels[0] = 0.0
    np.cumsum(quantity, out=unit_levels[1:])
    # level k holds over bars[k-1]+1 .. bars[k] (level 0 from bar 0, the last one to the end)
    first = np.concatenate(([0], bars + 1, [n]))
    counts = np.diff(first)
    equity = np.empty(n)
    for g in range(0, len(counts), _LEVELS_PER_CHUNK):
        h = min(len(counts), g + _LEVELS_PER_CHUNK)
        lo, hi = int(first[g]), int(first[h])
        part = equity[lo:hi]
        part[:] = np.repeat(unit_levels[g:h], counts[g:h])
        part *= close[lo:hi]
        part += np.repeat(cash_levels[g:h], counts[g:h])
    return equity


def account_candles(market: str | Market, candles: CandleArrays, positions: np.ndarray, cost_bps: float,
                    starting_balance: float = 100_000.0, initial_position: int = 0,
                    margin: bool | None = None, fill: str = FILL_CLOSE) -> AccountResult:
    """`account` with the instrument the fold backtest builds for this market and these candles, under the
    fill convention `fill` (`trading.FILLS`)."""
    precisions = precisions_for(market, candles, starting_balance)
    return account(candles.close, positions, cost_bps, starting_balance, precisions.size, initial_position,
                   price_precision=precisions.price, currency_precision=precisions.currency, margin=margin,
                   opens=candles.open if check_fill(fill, "fill") == FILL_NEXT_OPEN else None)


def fold_result(fold_index: int, close_ts: np.ndarray, close: np.ndarray, positions: np.ndarray, cost_bps: float,
                starting_balance: float = 100_000.0, *, size_precision: int | None = None,
                price_precision: int | None = None, currency_precision: int = 8, margin: bool | None = None,
                initial_position: int = 0, instrument: str = "") -> FoldResult:
    """A `FoldResult` booked by the accountant (what the report summary reads), without a backtest.

    Without `size_precision`, the backtest's sizing rule alone (one size increment at the highest close is
    at most 1e-6 of the balance; no volume decimals); the currency precision defaults to a crypto quote's (8)."""
    close = np.ascontiguousarray(close, dtype=np.float64)
    if size_precision is None:
        flat = np.zeros(len(close))
        size_precision = size_precision_for("crypto", CandleArrays(np.zeros(len(close), np.int64), close, close,
                                                                    close, close, flat), starting_balance)
    booked = account(close, positions, cost_bps, starting_balance, size_precision, initial_position,
                     price_precision=price_precision, currency_precision=currency_precision, margin=margin)
    fills = [Fill(int(b), int(close_ts[b]), float(q), float(p), float(f)) for b, q, p, f in
             zip(booked.fill_bars, booked.fill_quantities, booked.fill_prices, booked.fill_fees, strict=True)]
    return FoldResult(
        fold_index=fold_index, status="ok", instrument=instrument, starting_balance=float(starting_balance),
        close_ts=np.asarray(close_ts, dtype=np.int64), close=close, equity=booked.equity,
        positions=booked.positions, traded_notional=booked.traded_notional, fees=booked.fees, fills=fills,
        trade_pnls=trade_pnls(fills, float(close[-1])) if len(close) else [],
        account_equity=booked.account_equity, timings={},
    )


# Nautilus and the accountant book the same fills with the same arithmetic: they agree to the last bit
# (rl_lifecycle_tests/test_accountant.py). The check allows a millionth of a quote unit per bar so that
# it guards the books, not float formatting; `exact` says whether they are equal.
PARITY_TOLERANCE = 1e-6


def replay(market: str | Market, candles: CandleArrays, result: FoldResult, cost_bps: float, *,
           initial_position: int = 0, margin: bool | None = None, fill: str | None = None) -> dict:
    """A Nautilus fold's positions booked again by the accountant, and how far the two books are apart:
    what every fold report keeps beside the engine of record (the `backtest_parity` check reads it).

    `margin`: the account the backtest used (a margin account iff its policy could go short). None: a
    margin account when the positions go short; otherwise both kinds are tried (a long-only book of a
    policy that could have gone short ran on a margin account) and the closer one is reported. `fill`: the
    backtest's fill convention (None: `result.fill`)."""
    positions = np.asarray(result.positions, dtype=np.int8)
    if margin is not None:
        kinds = [bool(margin)]
    else:
        kinds = [True] if len(positions) and positions.min() < 0 else [False, True]
    best = None
    for kind in kinds:
        booked = account_candles(market, candles, positions, cost_bps, result.starting_balance, initial_position,
                                 margin=kind, fill=result.fill if fill is None else fill)
        gap = abs(booked.account_equity - result.account_equity)
        if best is None or gap < best[1]:
            best = (booked, gap)
    booked, account_gap = best
    equity_gap = (float(np.max(np.abs(booked.equity - result.equity), initial=0.0))
                  if len(booked.equity) == len(result.equity) else None)
    fills_agree = [(f.bar, f.quantity, f.price, f.fee) for f in result.fills] == list(zip(
        booked.fill_bars.tolist(), booked.fill_quantities.tolist(), booked.fill_prices.tolist(),
        booked.fill_fees.tolist(), strict=True))
    account_ok = not math.isfinite(account_gap) or account_gap <= PARITY_TOLERANCE
    return {
        "total_return": booked.total_return,
        "account_equity": float(booked.account_equity),
        "account": "margin" if booked.margin else "cash",
        "fill": booked.fill,
        "fills": booked.fills,
        "fills_agree": fills_agree,
        "max_equity_difference": equity_gap,
        "account_equity_difference": float(account_gap) if math.isfinite(account_gap) else None,
        "tolerance": PARITY_TOLERANCE,
        "exact": bool(fills_agree and equity_gap == 0.0 and account_gap == 0.0),
        "agrees": bool(fills_agree and equity_gap is not None and equity_gap <= PARITY_TOLERANCE and account_ok),
    }
