"""Calibration of the promotion gates: how often do challengers without skill pass them (the
false-promotion rate), and how often does a challenger with a planted edge (the power)?

Every decision runs the whole policy (all folds, every gate, paired and absolute) through the same
code a real decision takes: the market's stored candles cut into the default walk-forward folds
(`evaluation.folds.make_folds`), each fold's positions booked by the exact accountant
(`evaluation.accountant`, the Nautilus account's arithmetic), reports summarised by
`evaluation.report.summarise`, and `promotion.gates.evaluate` with auto promotion on.

- **Skill-less** contender: positions that cannot know the future. A two-state Markov chain over the
  spec's positions (long/flat by default) that changes position with probability `switch_rate` per bar
  (default 1/22: the demo challengers trade about once per 22 bars), started at random, drawn
  independently of the prices. A null decision is a skill-less challenger against a skill-less
  champion, both evaluated on the same folds.
- **Planted edge E**: on each bar, with probability E the challenger takes the position that profits
  over the next bar (long before a rise, flat before a fall: it sees the next close), and otherwise
  follows its own skill-less chain. E = 0 is a null; E = 1 an oracle. Power = the share of edge-E
  challengers promoted over a skill-less champion.
- **Trials**: each decision's DSR is deflated by `n_trials` skill-less evaluations of the market (the
  champion, the challenger and `n_trials - 2` more), as a market with that many stored evaluations
  would deflate it; the PBO gate chooses among the same trials' returns on the test bars.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.backtest import FoldResult
from rl_lifecycle.evaluation.folds import Fold, FoldConfig, backtests, make_folds
from rl_lifecycle.evaluation.metrics import Trials, returns_by_bar, sharpe_moments, simple_returns
from rl_lifecycle.evaluation.report import summarise
from rl_lifecycle.markets.calendars import DEFAULT_CALENDAR
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.promotion.gates import ReportSummary, evaluate
from rl_lifecycle.promotion.policy import GatePolicy
from rl_lifecycle.windows import WindowScheme

DEFAULT_SWITCH_RATE = 1.0 / 22.0
DEFAULT_TRIALS = 10
STARTING_BALANCE = 100_000.0


@dataclass(frozen=True)
class Bars:
    """The market's bars the calibration trades on: open times (epoch us) and closes, in order."""

    market: Market
    ts: np.ndarray
    close: np.ndarray
    calendar: str = DEFAULT_CALENDAR  # the market's trading calendar: the reports' annualisation


@dataclass(frozen=True)
class Calibration:
    market: str
    bars: int
    folds: int
    nulls: int
    false_promotions: int
    ci95: tuple[float, float]
    edge: float
    edge_trials: int
    edge_promotions: int
    n_trials: int
    cost_bps: float
    switch_rate: float
    policy_sha256: str
    null_reasons: dict[str, int] = field(default_factory=dict)  # how often each gate rejected a null
    edge_reasons: dict[str, int] = field(default_factory=dict)  # ... and a planted-edge challenger

    @property
    def false_promotion_rate(self) -> float:
        return self.false_promotions / self.nulls if self.nulls else math.nan

    @property
    def power(self) -> float:
        return self.edge_promotions / self.edge_trials if self.edge_trials else math.nan

    def to_json(self) -> dict:
        return {
            "market": self.market, "bars": self.bars, "folds": self.folds, "nulls": self.nulls,
            "false_promotions": self.false_promotions, "false_promotion_rate": self.false_promotion_rate,
            "ci95": list(self.ci95), "edge": self.edge, "edge_trials": self.edge_trials,
            "edge_promotions": self.edge_promotions, "power": self.power, "n_trials": self.n_trials,
            "cost_bps": self.cost_bps, "switch_rate": self.switch_rate, "policy_sha256": self.policy_sha256,
            "null_reasons": self.null_reasons, "edge_reasons": self.edge_reasons,
        }


def market_bars(conn, market: Market, scheme: WindowScheme, windows: int = 3) -> Bars:
    """The market's stored candles of its last `windows` windows with data (a training dataset's span)."""
    from rl_lifecycle.candles.store import load_candles, newest_candle_ts
    from rl_lifecycle.markets.table import registered_calendar

    newest = newest_candle_ts(conn, market)
    if newest is None:
        raise UserInputError(f"market {market.key} has no candles: ingest some before calibrating on it")
    last = scheme.containing(newest)
    first = last
    for _ in range(windows - 1):
        first = scheme.previous(first)
    candles = load_candles(conn, market, first.start, last.end)
    return Bars(market, candles.ts, candles.close, registered_calendar(conn, market) or DEFAULT_CALENDAR)


def policy_sha256(policy: GatePolicy) -> str:
    """The policy's identity: its validated values, canonical JSON."""
    return hashlib.sha256(json.dumps(policy.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion k/n."""
    from scipy.stats import binomtest

    if n == 0:
        return (math.nan, math.nan)
    interval = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return (float(interval.low), float(interval.high))


def skill_less_positions(rng: np.random.Generator, n: int, switch_rate: float,
                         positions: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """A Markov chain over `positions` that moves to another one with probability `switch_rate` per bar."""
    moves = rng.random(n) < switch_rate
    steps = rng.integers(1, len(positions), n) * moves  # 0: stay; k: k states along
    state = (int(rng.integers(len(positions))) + np.cumsum(steps)) % len(positions)
    return np.asarray(positions, dtype=np.int8)[state]


def planted_edge_positions(rng: np.random.Generator, close: np.ndarray, edge: float, switch_rate: float) -> np.ndarray:
    """Skill-less positions, except on a share `edge` of the bars: long before a rise, flat before a fall."""
    base = skill_less_positions(rng, len(close), switch_rate)
    knows = rng.random(len(close)) < edge
    ahead = np.zeros(len(close), dtype=np.int8)
    ahead[:-1] = (close[1:] > close[:-1]).astype(np.int8)
    return np.where(knows, ahead, base).astype(np.int8)


Simulate = Callable[[int, np.ndarray, np.ndarray, np.ndarray, float], FoldResult]


def account_fold(fold_index: int, close_ts: np.ndarray, close: np.ndarray, positions: np.ndarray,
                 cost_bps: float) -> FoldResult:
    """A fold booked by the exact accountant, in the shape the report summary reads."""
    from rl_lifecycle.evaluation.accountant import fold_result

    return fold_result(fold_index, close_ts, close, positions, cost_bps, STARTING_BALANCE)


class _Decider:
    """One market's folds: a contender's positions in, its report (or its Sharpe as a trial) out."""

    def __init__(self, bars: Bars, folds: list[Fold], cost_bps: float, simulate: Simulate):
        self.bars, self.folds, self.cost_bps, self.simulate = bars, folds, cost_bps, simulate

    def results(self, positions: np.ndarray) -> list[FoldResult]:
        """Each backtest's test range booked with the contender's positions over the whole series."""
        out = []
        for test in backtests(self.folds):
            start, end = test.test_range
            close_ts = self.bars.ts[start:end] + self.bars.market.interval_us
            out.append(self.simulate(test.index, close_ts, self.bars.close[start:end], positions[start:end],
                                     self.cost_bps))
        return out

    def bar_returns(self, results: list[FoldResult]) -> np.ndarray:
        """A contender's return per tested bar (a trial's column in the PBO's matrix)."""
        tests = backtests(self.folds)
        return returns_by_bar((tests[r.fold_index].test_range, simple_returns(r.equity)) for r in results)

    def report(self, positions: np.ndarray, trials: Trials, others: list[np.ndarray]) -> tuple[ReportSummary, np.ndarray]:
        """The report of a contender holding `positions`, deflated by `trials` (the market's others) and
        itself, its PBO over `others` (their bar returns) and itself; with its bar returns."""
        results = self.results(positions)
        records, aggregates, _ = summarise(self.bars.market, self.folds, results, self.bars.ts, self.cost_bps,
                                           trials, strict=True, calendar=self.bars.calendar)
        returns = {r.fold_index: simple_returns(r.equity) for r in results if r.ok}
        own = self.bar_returns(results)
        return ReportSummary.from_stored(_StoredReport(records, aggregates), returns,
                                         trials.plus(aggregates.get("sharpe_per_bar")),
                                         np.column_stack([*others, own])), own

    def trial(self, positions: np.ndarray) -> np.ndarray:
        """A background trial of the market: its bar returns (its Sharpe joins V, its column the PBO)."""
        return self.bar_returns(self.results(positions))


@dataclass(frozen=True)
class _StoredReport:
    """The fields `ReportSummary.from_stored` reads, for a report that is never stored."""

    folds: list
    aggregates: dict
    id: int | None = None
    dataset_hash: str | None = None
    market: str | None = None


def calibrate(bars: Bars, policy: GatePolicy, *, nulls: int = 500, edge: float = 0.4, edge_trials: int | None = None,
              n_trials: int = DEFAULT_TRIALS, cost_bps: float = 10.0, switch_rate: float = DEFAULT_SWITCH_RATE,
              fold_config: FoldConfig | None = None, seed: int = 0, simulate: Simulate = account_fold,
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """The false-promotion rate over `nulls` skill-less decisions and the power at `edge` (see the module)."""
    folds = make_folds(len(bars.close), fold_config or FoldConfig(), 1)
    decider = _Decider(bars, folds, cost_bps, simulate)
    rng = np.random.default_rng(seed)
    n = len(bars.close)
    edge_trials = nulls if edge_trials is None else edge_trials
    total = nulls + edge_trials
    trials = [decider.trial(skill_less_positions(rng, n, switch_rate)) for _ in range(max(0, n_trials - 2))]
    background = [sharpe_moments(r).sharpe for r in trials]

    def decide(challenger_positions: np.ndarray) -> tuple[bool, tuple[str, ...]]:
        champion, champion_returns = decider.report(skill_less_positions(rng, n, switch_rate),
                                                    Trials.of(len(background), background), trials)
        prior = Trials.of(len(background) + 1, [*background, champion.aggregate.get("sharpe_per_bar")])
        challenger, _ = decider.report(challenger_positions, prior, [*trials, champion_returns])
        decision = evaluate(challenger, champion, policy, auto_promotion=True)
        return decision.gates_passed, decision.reason_codes

    done = 0

    def run(draw: Callable[[], np.ndarray], count: int) -> tuple[int, dict[str, int]]:
        nonlocal done
        promoted, reasons = 0, {}
        for _ in range(count):
            passed, codes = decide(draw())
            promoted += passed
            for code in codes:
                reasons[code] = reasons.get(code, 0) + 1
            done += 1
            if progress:
                progress(done, total)
        return promoted, dict(sorted(reasons.items()))

    false_promotions, null_reasons = run(lambda: skill_less_positions(rng, n, switch_rate), nulls)
    edge_promotions, edge_reasons = run(lambda: planted_edge_positions(rng, bars.close, edge, switch_rate), edge_trials)
    return Calibration(
        market=bars.market.key, bars=n, folds=len(folds), nulls=nulls, false_promotions=int(false_promotions),
        ci95=clopper_pearson(int(false_promotions), nulls), edge=float(edge), edge_trials=edge_trials,
        edge_promotions=int(edge_promotions), n_trials=n_trials, cost_bps=float(cost_bps),
        switch_rate=float(switch_rate), policy_sha256=policy_sha256(policy), null_reasons=null_reasons,
        edge_reasons=edge_reasons,
    )
