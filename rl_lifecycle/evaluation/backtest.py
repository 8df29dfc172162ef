"""One fold's backtest in NautilusTrader, in a freshly spawned process.

`run_fold_backtest(job) -> FoldResult` spawns a child interpreter (Nautilus keeps global state: one
engine per process), builds a BacktestEngine there, and returns a plain picklable result. Any error
in the child, or the child dying, comes back as a failed FoldResult with the traceback or exit code.
`run_folds(jobs, workers)` runs several such children at once.

Conventions (docs/evaluation.md):
* Bars carry `ts_event = ts_init = open time + interval` (their close): Nautilus releases a bar to
  strategies at `ts_init`, so keyed by open time a strategy would see a bar before it formed.
* Fill convention `close`, verified by tests: the exchange processes a bar (open, high, low, close)
  before the strategy's `on_bar`, and the market order sent from `on_bar` is matched right after, at
  that bar's close and timestamp. That is trading.py's convention: the position chosen at bar t's
  close is filled at close[t] and held over bar t+1. The fill model offers unlimited size at the top
  of the book, so there is no slippage beyond the fee (slippage belongs in the spec's cost_bps).
* Fill convention `next_open` (`FoldJob.fill`): Nautilus 1.221 has no market-on-open order for bar
  data: a market order is matched when the exchange processes its command queue, which it does after
  each data point, so an order sent from `on_bar` fills at that close and one sent from the next
  `on_bar` at the next close (the exchange has already moved the book through the next bar's open, high,
  low and close). So the venue also receives each bar's open as a trade tick stamped 1 ns after the
  bar opens (after the previous bar's close, before its own: `opens_after_open`); the strategy decides
  at `on_bar` and sends the order from `on_trade_tick`, sized at that open, and the exchange matches it
  right away against the book the tick set: at open[t+1], stamped at the tick. The bar's own open then
  moves nothing (Nautilus skips an open equal to the last price) and its high, low and close follow.
  `_result_from_run` refuses a fill at any other time.
* Sizing: when the target position changes, buy or sell to hold target x equity / close units,
  rounded to the size precision; while the target is unchanged nothing is traded. No order is sent
  at the fold's last bar (its outcome lies after the fold); the final equity is marked at the last
  close without liquidation, like the env's cumulative reward.
* Fees: the instrument's maker and taker fee are cost_bps / 1e4 of the traded notional
  (`MakerTakerFeeModel`). The cash account may borrow (allow_cash_borrowing), which lets the fee of a
  fully invested buy, and shorts, take a balance below zero.
"""

from __future__ import annotations

import math
import multiprocessing
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import numpy as np

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import FILL_NEXT_OPEN, ActsOnVectors, check_fill, rollout

VENUE = "SIM"
MAX_PRECISION = 9
# Quote assets recognised at the end of a crypto pair, longest first (FDUSD before USD).
CRYPTO_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "DAI", "USD", "EUR", "GBP", "TRY", "BRL",
                 "BTC", "ETH", "BNB")
_NS_PER_US = 1_000
_NEVER_MS = 10**13  # ~317 years (Nautilus keeps it in ns, a uint64): no backtest spans it


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold backtest needs, picklable: the fold's bars and vectors, and the policy."""

    market: str
    fold_index: int
    candles: CandleArrays  # the test range's candles, keyed by open time, one per vector row
    vectors: np.ndarray  # float64 [n, k]: canonical vectors of the same rows, from the feature read path
    policy: ActsOnVectors
    cost_bps: float
    starting_balance: float = 100_000.0
    initial_position: int = 0
    strategy: Literal["rl", "idle", "replay"] = "rl"  # idle: does nothing; replay: sends `orders` (benchmarks)
    timeout_s: float | None = None
    fill: str = "close"  # the fill convention (`trading.FILLS`): at the deciding bar's close, or the next open
    # replay: (bar index, signed quantity) of each order, sent at that bar as the rl strategy sent it
    orders: tuple[tuple[int, float], ...] = ()


@dataclass
class Fill:
    bar: int  # index of the bar at whose close it filled (fill next_open: at whose open)
    ts: int  # fill time, epoch us (next_open: the bar's open time)
    quantity: float  # signed: + buy, - sell
    price: float
    fee: float


@dataclass
class FoldResult:
    fold_index: int
    status: Literal["ok", "failed"]
    error: str | None = None
    instrument: str = ""
    starting_balance: float = 0.0
    close_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # bar close times, epoch us
    close: np.ndarray = field(default_factory=lambda: np.empty(0))
    equity: np.ndarray = field(default_factory=lambda: np.empty(0))  # marked at each close, before its order
    positions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))  # held after each bar's order
    traded_notional: np.ndarray = field(default_factory=lambda: np.empty(0))
    fees: np.ndarray = field(default_factory=lambda: np.empty(0))  # per bar, quote currency
    fills: list[Fill] = field(default_factory=list)
    trade_pnls: list[float] = field(default_factory=list)
    account_equity: float = math.nan  # quote balance + position x last close, read from the Nautilus account
    timings: dict[str, float] = field(default_factory=dict)
    replay: dict | None = None  # the same positions booked by the exact accountant (`accountant.replay`)
    fill: str = "close"  # the fill convention the backtest ran under (`trading.FILLS`)
    open: np.ndarray | None = None  # each bar's open under fill next_open (the buy-and-hold baseline's entry)
    ran_on: dict | None = None  # the process whose step ran it (`cluster.placement.this_process`)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def bars(self) -> int:
        return len(self.close)

    @property
    def fees_paid(self) -> float:
        return float(self.fees.sum()) if len(self.fees) else 0.0

    @classmethod
    def failed(cls, fold_index: int, error: str, timings: dict | None = None) -> FoldResult:
        return cls(fold_index=fold_index, status="failed", error=error, timings=timings or {})


# -- instrument ---------------------------------------------------------------------------------


def decimals_needed(values: np.ndarray, limit: int = MAX_PRECISION) -> int:
    """Fewest decimals (<= limit) that represent every value exactly, up to float noise."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    for decimals in range(limit + 1):
        scaled = values * 10.0**decimals
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6 + 1e-10 * np.abs(scaled)):
            return decimals
    return limit


def _fiat(code: str):
    from nautilus_trader.model.enums import CurrencyType
    from nautilus_trader.model.objects import Currency

    try:
        currency = Currency.from_str(code, strict=True)
    except Exception:  # an unknown code
        return None
    return currency if currency is not None and currency.currency_type == CurrencyType.FIAT else None


def instrument_kind(pair: str) -> tuple[str, str | None, str]:
    """('fx', base, quote) for two fiat codes, ('crypto', base, quote) for a known quote asset, else ('equity', None, 'USD')."""
    if len(pair) == 6 and _fiat(pair[:3]) and _fiat(pair[3:]):
        return "fx", pair[:3], pair[3:]
    for quote in CRYPTO_QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return "crypto", pair[: -len(quote)], quote
    return "equity", None, "USD"


def size_precision_for(kind: str, candles: CandleArrays, starting_balance: float) -> int:
    """The volume's decimals, raised until one size increment at the highest price is <= 1e-6 of the
    balance (so rounding a full-equity order moves the exposure by at most 5e-7); equities trade whole shares."""
    if kind == "equity":
        return 0
    from_volume = decimals_needed(candles.volume, 8)
    top = float(np.max(candles.high)) if len(candles) else 1.0
    for_sizing = max(0, math.ceil(math.log10(max(top, 1e-12) / (1e-6 * starting_balance))))
    return min(MAX_PRECISION, max(from_volume, for_sizing))


def build_instrument(market: Market, candles: CandleArrays, cost_bps: float, starting_balance: float):
    """A Nautilus instrument for the market: CurrencyPair (crypto or FX) or Equity, precisions from the data."""
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
    from nautilus_trader.model.instruments import CurrencyPair, Equity
    from nautilus_trader.model.objects import Currency, Price, Quantity

    kind, base, quote = instrument_kind(market.pair)
    price_precision = decimals_needed(np.concatenate([candles.open, candles.high, candles.low, candles.close]))
    size_precision = size_precision_for(kind, candles, starting_balance)
    fee = Decimal(repr(float(cost_bps))) / Decimal(10_000)
    instrument_id = InstrumentId(Symbol(market.pair), Venue(VENUE))
    price_increment = Price(10.0**-price_precision, price_precision)
    if kind == "equity":
        return Equity(
            instrument_id=instrument_id, raw_symbol=Symbol(market.pair), currency=Currency.from_str(quote),
            price_precision=price_precision, price_increment=price_increment, lot_size=Quantity.from_int(1),
            maker_fee=fee, taker_fee=fee, ts_event=0, ts_init=0,
        ), kind
    return CurrencyPair(
        instrument_id=instrument_id, raw_symbol=Symbol(market.pair),
        base_currency=Currency.from_str(base), quote_currency=Currency.from_str(quote),
        price_precision=price_precision, size_precision=size_precision, price_increment=price_increment,
        size_increment=Quantity(10.0**-size_precision, size_precision), lot_size=None, max_quantity=None,
        min_quantity=None, max_notional=None, min_notional=None, max_price=None, min_price=None,
        margin_init=Decimal(0), margin_maint=Decimal(0), maker_fee=fee, taker_fee=fee, ts_event=0, ts_init=0,
    ), kind


def bar_type_for(instrument, interval: str):
    from nautilus_trader.model.data import BarSpecification, BarType
    from nautilus_trader.model.enums import AggregationSource, BarAggregation, PriceType

    unit = {"m": BarAggregation.MINUTE, "h": BarAggregation.HOUR, "d": BarAggregation.DAY}[interval[-1]]
    spec = BarSpecification(int(interval[:-1]), unit, PriceType.LAST)
    return BarType(instrument.id, spec, AggregationSource.EXTERNAL)


def bars_at_close(bar_type, instrument, candles: CandleArrays, interval_us: int) -> list:
    """Nautilus bars stamped at their close (open time + interval), for ts_event and ts_init alike."""
    from nautilus_trader.model.data import Bar

    close_ns = ((candles.ts + interval_us) * _NS_PER_US).astype(np.uint64)
    as_f64 = lambda a: np.array(a, dtype=np.float64)  # noqa: E731  (a writable copy: Cython memoryviews refuse read-only)
    return Bar.from_raw_arrays_to_list(
        bar_type, instrument.price_precision, instrument.size_precision,
        as_f64(candles.open), as_f64(candles.high), as_f64(candles.low), as_f64(candles.close),
        as_f64(np.round(candles.volume, instrument.size_precision)), close_ns, close_ns,
    )


def open_tick_ns(candles: CandleArrays) -> np.ndarray:
    """When the venue sees each bar's open (fill next_open): 1 ns after the bar opens, so after the previous
    bar's close (which may be that instant) and before its own close. uint64 ns."""
    return (candles.ts * _NS_PER_US + 1).astype(np.uint64)


def opens_after_open(instrument, candles: CandleArrays) -> list:
    """Trade ticks at the opens of bars 1 .. n-1 (bar 0's open precedes every decision), at `open_tick_ns`:
    the prices a `next_open` order fills at. One size increment each (the fill model sets the fill's size)."""
    from nautilus_trader.model.data import TradeTick
    from nautilus_trader.model.enums import AggressorSide

    m = max(len(candles) - 1, 0)
    ts = open_tick_ns(candles)[1:]
    return TradeTick.from_raw_arrays_to_list(
        instrument.id, instrument.price_precision, instrument.size_precision,
        np.array(candles.open[1:], dtype=np.float64), np.full(m, 10.0 ** -instrument.size_precision),
        np.full(m, int(AggressorSide.NO_AGGRESSOR), dtype=np.uint8), [f"OPEN-{i}" for i in range(1, m + 1)],
        ts, ts.copy(),
    )


# -- strategies (Nautilus classes are created lazily: importing this module stays light) ----------


def _strategy_config(strategy_id: str):
    """Both strategies alike: no per-event and per-command log lines (Nautilus formats them even
    when logging is bypassed); UUID client order ids (the default formats a datetime through pandas
    for every order)."""
    from nautilus_trader.config import StrategyConfig

    return StrategyConfig(strategy_id=strategy_id, log_events=False, log_commands=False,
                          use_uuid_client_order_ids=True)


def _strategy_classes():
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.model.objects import Quantity
    from nautilus_trader.trading.strategy import Strategy

    class IdleStrategy(Strategy):
        """Subscribes to the bars and does nothing with them."""

        def __init__(self, bar_type):
            super().__init__(_strategy_config("IDLE-001"))
            self.bar_type = bar_type
            self.bars_seen = 0

        def on_start(self):
            self.subscribe_bars(self.bar_type)

        def on_bar(self, bar):
            self.bars_seen += 1

    class _Trader(Strategy):
        """Market orders to a target holding, with the position id followed from the position events: on a
        HEDGING venue (see build_engine) an order that reduces, closes or reverses the holding names the open
        position, an order from flat opens a new one. (Asking `cache.positions_open(...)` before each order
        gives the same ids but costs more with every position ever opened.)"""

        def __init__(self, strategy_id: str, instrument, bar_type, close_ns: np.ndarray, starting_balance: float,
                     fill: str):
            super().__init__(_strategy_config(strategy_id))
            self.instrument = instrument
            self.bar_type = bar_type
            self.close_ns = close_ns.tolist()
            self.next_open = fill == "next_open"
            self.fills: list[tuple[int, int, float, float, float]] = []  # (ts_ns, side, qty, price, fee)
            # Holdings as a cash account books them (the same for a margin account's economics):
            # equity = cash + quantity x price. Followed from the fill events, checked against the account.
            self.cash = float(starting_balance)
            self.held = 0.0
            self.bars_seen = 0
            self.position_id = None  # the open position's id, from the position events
            self.precision = instrument.size_precision

        def on_start(self):
            self.subscribe_bars(self.bar_type)
            if self.next_open:
                self.subscribe_trade_ticks(self.instrument.id)

        def _check_bar(self, bar) -> int:
            i = self.bars_seen
            self.bars_seen += 1
            if bar.ts_init != self.close_ns[i]:
                raise RuntimeError(f"bar {i} arrived at {bar.ts_init}, expected its close {self.close_ns[i]}")
            return i

        def _send(self, delta: float) -> None:
            size = round(abs(delta), self.precision)
            if size > 0:  # a change smaller than one size increment trades nothing
                side = OrderSide.BUY if delta > 0 else OrderSide.SELL
                self.submit_order(self.order_factory.market(self.instrument.id, side, Quantity(size, self.precision)),
                                  position_id=self.position_id)

        def on_position_opened(self, event):
            self.position_id = event.position_id

        def on_position_closed(self, event):
            if event.position_id == self.position_id:
                self.position_id = None

        def on_order_filled(self, event):
            sign = 1 if event.order_side == OrderSide.BUY else -1
            quantity = round(event.last_qty.as_double(), self.precision)  # undo fixed-point noise
            price = round(event.last_px.as_double(), self.instrument.price_precision)
            fee = round(event.commission.as_double(), event.commission.currency.precision)
            self.fills.append((event.ts_event, sign, quantity, price, fee))
            self.held += sign * quantity
            self.cash -= sign * quantity * price + fee

    class TargetPositionStrategy(_Trader):
        """Holds the policy's target positions: one batched rollout at start, a market order per change, sent
        at the deciding bar's close (fill close) or at the next bar's open (fill next_open), sized there."""

        def __init__(self, instrument, bar_type, close_ns: np.ndarray, vectors: np.ndarray,
                     policy: ActsOnVectors, initial_position: int, starting_balance: float, fill: str = "close"):
            super().__init__("RL-001", instrument, bar_type, close_ns, starting_balance, fill)
            self.vectors = vectors
            self.policy = policy
            self.current = int(initial_position)
            self.initial_position = int(initial_position)
            self.targets: list[int] = []
            self.pending: int | None = None  # next_open: the target decided at the last close, traded at the open
            self.rollout_s = 0.0

        def on_start(self):
            started = time.perf_counter()
            self.targets = rollout(self.policy, self.vectors, self.initial_position).tolist()
            self.rollout_s = time.perf_counter() - started
            if len(self.targets) != len(self.close_ns):
                raise RuntimeError(f"policy gave {len(self.targets)} positions for {len(self.close_ns)} bars")
            super().on_start()

        def on_bar(self, bar):
            i = self._check_bar(bar)
            if i == len(self.targets) - 1:
                return  # the last decision would be held past the fold
            target = self.targets[i]
            if target == self.current:
                return
            self.current = target
            if self.next_open:
                self.pending = target
                return
            self._trade(target, bar.close.as_double())

        def on_trade_tick(self, tick):  # next_open: the next bar's open
            if self.pending is not None:
                target, self.pending = self.pending, None
                self._trade(target, tick.price.as_double())

        def _trade(self, target: int, price: float) -> None:
            equity = self.cash + self.held * price
            self._send(target * equity / price - self.held)

    class ReplayStrategy(_Trader):
        """Sends the given orders, (bar index, signed quantity), at those bars as TargetPositionStrategy sent
        them (at the bar's close, or at its open under next_open; a fill's `bar` and `quantity` are the order's):
        the same venue work without policy, rollout or sizing, the benchmark's measure of what the RL strategy
        itself costs."""

        def __init__(self, instrument, bar_type, close_ns: np.ndarray, orders, starting_balance: float,
                     fill: str = "close"):
            super().__init__("REPLAY-001", instrument, bar_type, close_ns, starting_balance, fill)
            self.at = {int(bar): float(quantity) for bar, quantity in orders}

        def on_bar(self, bar):
            i = self._check_bar(bar)
            if not self.next_open and i in self.at:
                self._send(self.at[i])

        def on_trade_tick(self, tick):
            if self.bars_seen in self.at:
                self._send(self.at[self.bars_seen])

    return IdleStrategy, TargetPositionStrategy, ReplayStrategy


def _top_of_book_fill_model():
    from nautilus_trader.backtest.models import FillModel
    from nautilus_trader.model.book import OrderBook
    from nautilus_trader.model.data import BookOrder
    from nautilus_trader.model.enums import BookType, OrderSide
    from nautilus_trader.model.objects import Quantity

    class TopOfBookFillModel(FillModel):
        """Any size fills at the best price: orders are filled at the bar's close, no simulated impact."""

        def get_orderbook_for_fill_simulation(self, instrument, order, best_bid, best_ask):
            size = Quantity(max(order.quantity.as_double() * 2.0, 1.0), instrument.size_precision)
            book = OrderBook(instrument_id=instrument.id, book_type=BookType.L2_MBP)
            book.add(BookOrder(OrderSide.BUY, best_bid, size, 1), 0, 0)
            book.add(BookOrder(OrderSide.SELL, best_ask, size, 2), 0, 0)
            return book

    return TopOfBookFillModel()


# -- results --------------------------------------------------------------------------------------


def trade_pnls(fills: list[Fill], last_close: float) -> list[float]:
    """P&L after fees of each round trip (entry from flat or a reversal, to flat or the next reversal);
    a trade still open at the end is marked at the last close. A reversal fill is split pro rata."""
    pnls: list[float] = []
    held, running = 0.0, 0.0
    for fill in fills:
        remaining, fee_per_unit = fill.quantity, fill.fee / abs(fill.quantity) if fill.quantity else 0.0
        while abs(remaining) > 0:
            closing = held != 0 and np.sign(remaining) != np.sign(held)
            part = -held if closing and abs(remaining) >= abs(held) else remaining
            running += -part * fill.price - abs(part) * fee_per_unit
            held += part
            remaining -= part
            if closing and abs(held) < 1e-12:
                pnls.append(running)
                held, running = 0.0, 0.0
    if held != 0:
        pnls.append(running + held * last_close)
    return pnls


def _account_equity(engine, instrument, last_close: float) -> float:
    """The account's equity at the last close, in the quote currency, read from Nautilus."""
    from nautilus_trader.model.enums import AccountType
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.objects import Price

    account = engine.portfolio.account(Venue(VENUE))
    balance = account.balance_total(instrument.quote_currency).as_double()
    if account.type == AccountType.CASH:  # holds the instrument itself: value it at the close
        return balance + float(engine.portfolio.net_position(instrument.id)) * last_close
    mark = Price(last_close, instrument.price_precision)
    return balance + sum(p.unrealized_pnl(mark).as_double() for p in engine.cache.positions_open(instrument_id=instrument.id))


def _result_from_run(job: FoldJob, strategy, instrument, close_ns: np.ndarray, account_equity: float,
                     timings: dict) -> FoldResult:
    n = len(job.candles)
    close = np.asarray(job.candles.close, dtype=np.float64)
    fills = []
    next_open = job.fill == "next_open"
    # where a fill may happen: a bar's close (fill close) or the tick of a later bar's open (fill next_open)
    at_ns = open_tick_ns(job.candles) if next_open else close_ns
    bar_of = {int(t): i for i, t in enumerate(at_ns.tolist()) if not next_open or i > 0}
    stamp_us = np.asarray(job.candles.ts if next_open else close_ns // _NS_PER_US, dtype=np.int64)
    for ts_ns, sign, quantity, price, fee in strategy.fills:
        if int(ts_ns) not in bar_of:
            raise RuntimeError(f"a fill at {ts_ns} ns is not at any bar's {'open' if next_open else 'close'}")
        bar = bar_of[int(ts_ns)]
        if next_open and price != round(float(job.candles.open[bar]), instrument.price_precision):
            raise RuntimeError(f"a fill at bar {bar}'s open was at {price}, not its open {job.candles.open[bar]}")
        fills.append(Fill(bar, int(stamp_us[bar]), sign * quantity, price, fee))
    cash_flow, quantity_flow, fees, notional = (np.zeros(n) for _ in range(4))
    for fill in fills:
        cash_flow[fill.bar] += -fill.quantity * fill.price - fill.fee
        quantity_flow[fill.bar] += fill.quantity
        fees[fill.bar] += fill.fee
        notional[fill.bar] += abs(fill.quantity) * fill.price
    if next_open:  # marked at each close: the fills at its open are in, the order decided at it is not yet
        cash_before = job.starting_balance + np.cumsum(cash_flow)
        quantity_before = np.cumsum(quantity_flow)
    else:  # holdings before each bar's order: what the earlier bars' fills left
        cash_before = job.starting_balance + np.concatenate(([0.0], np.cumsum(cash_flow)[:-1]))
        quantity_before = np.concatenate(([0.0], np.cumsum(quantity_flow)[:-1]))
    equity = cash_before + quantity_before * close
    final_equity = job.starting_balance + cash_flow.sum() + quantity_flow.sum() * close[-1]
    if abs(final_equity - account_equity) > 1e-6 * job.starting_balance:
        raise RuntimeError(f"the fills give a final equity of {final_equity}, the Nautilus account {account_equity}")
    targets = np.asarray(strategy.targets, dtype=np.int8)
    held = targets.copy()
    if n:
        held[-1] = held[-2] if n > 1 else job.initial_position  # no order at the last bar
    return FoldResult(
        fold_index=job.fold_index, status="ok", instrument=str(instrument.id),
        starting_balance=job.starting_balance, close_ts=(close_ns // _NS_PER_US).astype(np.int64), close=close,
        equity=equity, positions=held, traded_notional=notional, fees=fees, fills=fills,
        trade_pnls=trade_pnls(fills, float(close[-1])),
        account_equity=account_equity,
        timings=timings, fill=job.fill, open=np.array(job.candles.open, dtype=np.float64) if next_open else None,
    )


def build_engine(market: Market, candles: CandleArrays, cost_bps: float, starting_balance: float,
                 shorts: bool = False, fill: str = "close"):
    """A BacktestEngine with the venue (fee model, fill model), the instrument and the bars of
    `candles` stamped at their close (fill next_open: and their opens as trade ticks, `opens_after_open`).
    Returns (engine, instrument, bar_type, close_ns).

    The account is a cash account; with `shorts`, a margin account at leverage 1 (a Nautilus 1.221
    cash account does not book a short sale's proceeds and borrowed base currency).

    The venue's OMS is HEDGING and the strategy names the open position on every order that reduces,
    closes or reverses it, so the fills, positions and account are those of a netting venue. Under
    NETTING, Nautilus 1.221 reuses one position id and pickles a snapshot of the closed position at
    every reopening (and the portfolio unpickles it): ~0.2 ms per order, about half its cost.
    Risk checks are bypassed (the strategy sizes its own orders) and account states are not
    formatted for the log: see docs/evaluation.md, benchmarks."""
    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.backtest.models import MakerTakerFeeModel
    from nautilus_trader.common.config import LoggingConfig
    from nautilus_trader.config import PortfolioConfig, RiskEngineConfig
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.objects import Money

    instrument, _ = build_instrument(market, candles, cost_bps, starting_balance)
    bar_type = bar_type_for(instrument, market.interval)
    bars = bars_at_close(bar_type, instrument, candles, market.interval_us)
    close_ns = ((candles.ts + market.interval_us) * _NS_PER_US).astype(np.int64)
    engine = BacktestEngine(BacktestEngineConfig(
        logging=LoggingConfig(log_level="ERROR", bypass_logging=True), run_analysis=False,
        # Pre-trade checks guard live accounts; here the strategy sizes every order itself.
        risk_engine=RiskEngineConfig(bypass=True),
        # Nautilus formats every account state for its log unless throttled, even with logging bypassed.
        # No unrealized P&L per bar either: the result values holdings at the last close itself.
        portfolio=PortfolioConfig(min_account_state_logging_interval_ms=_NEVER_MS, bar_updates=False),
    ))
    try:
        engine.add_venue(
            Venue(VENUE), OmsType.HEDGING, AccountType.MARGIN if shorts else AccountType.CASH,
            [Money(starting_balance, instrument.quote_currency)],
            base_currency=instrument.quote_currency if shorts else None, default_leverage=Decimal(1),
            fill_model=_top_of_book_fill_model(), fee_model=MakerTakerFeeModel(), allow_cash_borrowing=True,
        )
        engine.add_instrument(instrument)
        engine.add_data(bars)
        if check_fill(fill, "fill") == FILL_NEXT_OPEN:
            engine.add_data(opens_after_open(instrument, candles))
    except BaseException:
        engine.dispose()
        raise
    return engine, instrument, bar_type, close_ns


def run_fold_in_this_process(job: FoldJob) -> FoldResult:
    """Build an engine, run the fold, dispose the engine. Call once per process (see module doc)."""

    started = time.perf_counter()
    market = Market.parse(job.market)
    if len(job.candles) != len(job.vectors):
        raise ValueError(f"{len(job.candles)} candles for {len(job.vectors)} vector rows")
    if len(job.candles) < 2:
        raise ValueError(f"a fold backtest needs at least 2 bars, got {len(job.candles)}")
    # from the policy for both strategy kinds: the idle baseline runs on the same venue and account
    shorts = min(job.policy.positions) < 0
    engine, instrument, bar_type, close_ns = build_engine(market, job.candles, job.cost_bps, job.starting_balance,
                                                          shorts, job.fill)
    n = len(close_ns)
    try:
        idle_class, rl_class, replay_class = _strategy_classes()
        if job.strategy == "idle":
            strategy = idle_class(bar_type)
        elif job.strategy == "replay":
            strategy = replay_class(instrument, bar_type, close_ns, job.orders, job.starting_balance, job.fill)
        else:
            strategy = rl_class(instrument, bar_type, close_ns, np.asarray(job.vectors, dtype=np.float64),
                                job.policy, job.initial_position, job.starting_balance, job.fill)
        engine.add_strategy(strategy)
        prepared, prepared_cpu = time.perf_counter(), time.process_time()
        engine.run()
        ran, ran_cpu = time.perf_counter(), time.process_time()
        if strategy.bars_seen != n:
            raise RuntimeError(f"the strategy saw {strategy.bars_seen} of {n} bars")
        account_equity = _account_equity(engine, instrument, float(job.candles.close[-1]))
        timings = {"prepare_s": prepared - started, "engine_s": ran - prepared, "engine_cpu_s": ran_cpu - prepared_cpu,
                   "rollout_s": getattr(strategy, "rollout_s", 0.0)}
        if job.strategy in ("idle", "replay"):
            result = FoldResult(
                fold_index=job.fold_index, status="ok", instrument=str(instrument.id),
                starting_balance=job.starting_balance, close_ts=(close_ns // _NS_PER_US).astype(np.int64),
                close=np.array(job.candles.close, dtype=np.float64), equity=np.full(n, job.starting_balance),
                positions=np.zeros(n, np.int8), traded_notional=np.zeros(n), fees=np.zeros(n),
                account_equity=account_equity, timings=timings, fill=job.fill)
            if job.strategy == "replay":  # what it sent and what filled (the benchmark compares them)
                result.fills = [Fill(-1, int(ts) // _NS_PER_US, sign * q, p, f) for ts, sign, q, p, f in strategy.fills]
        else:
            result = _result_from_run(job, strategy, instrument, close_ns, account_equity, timings)
    finally:
        engine.dispose()
    result.timings["total_s"] = time.perf_counter() - started
    return result


# -- processes ------------------------------------------------------------------------------------


def _child_main(job: FoldJob, pipe) -> None:
    try:
        result = run_fold_in_this_process(job)
    except BaseException:  # report everything, including SystemExit from user code
        result = FoldResult.failed(job.fold_index, traceback.format_exc())
    try:
        pipe.send(result)
    except Exception:  # e.g. an unpicklable field: still say what happened
        pipe.send(FoldResult.failed(job.fold_index, traceback.format_exc()))
    finally:
        pipe.close()


def run_fold_backtest(job: FoldJob) -> FoldResult:
    """Run one fold in a fresh spawned process; never raises for a failing or crashing fold."""
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(job, sender), name=f"fold-{job.fold_index}", daemon=True)
    try:
        process.start()
    except Exception:  # the job itself could not be sent (e.g. an unpicklable policy)
        return FoldResult.failed(job.fold_index, traceback.format_exc())
    sender.close()
    result: FoldResult | None = None
    timed_out = False
    try:
        if receiver.poll(job.timeout_s):  # also wakes up when the child dies (end of file)
            result = receiver.recv()
        else:
            timed_out = True
    except (EOFError, OSError):
        result = None  # the child died before sending
    finally:
        receiver.close()
    if timed_out:
        process.kill()
        process.join()
        return FoldResult.failed(job.fold_index, f"fold {job.fold_index} timed out after {job.timeout_s} s",
                                 {"total_s": time.perf_counter() - started})
    process.join()
    if result is None:
        return FoldResult.failed(job.fold_index, f"fold {job.fold_index}: the backtest process died "
                                 f"(exit code {process.exitcode}) before returning a result",
                                 {"total_s": time.perf_counter() - started})
    result.timings["process_s"] = time.perf_counter() - started
    return result


def run_folds(jobs: list[FoldJob], workers: int = 1) -> list[FoldResult]:
    """Run fold backtests, up to `workers` processes at once; results in job order, failures included."""
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    with ThreadPoolExecutor(max_workers=workers) as pool:  # each thread waits on its own child process
        return list(pool.map(run_fold_backtest, jobs))


def align_candles(candles: CandleArrays, ts: np.ndarray) -> CandleArrays:
    """The candles of exactly the rows `ts` (open times), in order; refuses rows without a stored candle."""
    at = np.searchsorted(candles.ts, ts)
    inside = at < len(candles)
    if len(ts) and (not inside.all() or not np.array_equal(candles.ts[at], ts)):
        missing = ts[~inside] if not inside.all() else ts[candles.ts[at] != ts]
        raise ValueError(f"{len(missing)} row(s) have no stored candle, first at {int(missing[0])} us")
    return CandleArrays(*(getattr(candles, name)[at] for name in ("ts", "open", "high", "low", "close", "volume")))
