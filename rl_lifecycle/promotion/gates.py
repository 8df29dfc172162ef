"""Promotion gates: pure functions from fold reports and a policy to a decision.

Paired gates compare challenger minus champion over folds with identical test spans (two reports on
different folds cannot be compared: that is refused, not guessed): the paired test on every test bar
(`rl_lifecycle.promotion.paired`), and descriptive fold-by-fold deltas.
With no champion (bootstrap) only the absolute gates apply. A NaN value (a Sharpe undefined on a
short fold, a PSR without variation, a metric the report lacks) fails its gate: a gate passes only
on a number that clears its threshold. The one exception is PBO_ABOVE_MAX where fewer than two trials
test the challenger's bars: there is no choice among trials to overfit, so it passes with no value and
says why in its details.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.metrics import (
    Trials,
    deflated_sharpe_at_decision,
    expected_max_sharpe,
    returns_by_bar,
)
from rl_lifecycle.promotion.policy import GatePolicy

PROMOTED, REJECTED, PENDING_MANUAL = "promoted", "rejected", "pending_manual"
OUTCOMES = (PROMOTED, REJECTED, PENDING_MANUAL)

# Stable reason codes: stored in the audit, matched by alerts and tests. Never rename one.
NO_COMPLETED_FOLDS = "NO_COMPLETED_FOLDS"
FOLD_FAILED = "FOLD_FAILED"
NOT_BETTER_THAN_FLAT = "NOT_BETTER_THAN_FLAT"
NOT_BETTER_THAN_BUY_AND_HOLD = "NOT_BETTER_THAN_BUY_AND_HOLD"
TOO_FEW_TRADES = "TOO_FEW_TRADES"
PSR_BELOW_MIN = "PSR_BELOW_MIN"
DSR_BELOW_MIN = "DSR_BELOW_MIN"
SHARPE_DELTA_BELOW_MIN = "SHARPE_DELTA_BELOW_MIN"
RETURN_DELTA_BELOW_MIN = "RETURN_DELTA_BELOW_MIN"
DRAWDOWN_WORSE_THAN_MAX = "DRAWDOWN_WORSE_THAN_MAX"
TOO_FEW_FOLD_WINS = "TOO_FEW_FOLD_WINS"
PAIRED_TEST_NOT_SIGNIFICANT = "PAIRED_TEST_NOT_SIGNIFICANT"
PBO_ABOVE_MAX = "PBO_ABOVE_MAX"
MODEL_CHECKS_NOT_PASSED = "MODEL_CHECKS_NOT_PASSED"
# Not a gate: why a decision whose gates all passed waits for a person.
MANUAL_APPROVAL_REQUIRED = "MANUAL_APPROVAL_REQUIRED"
# Not a gate: auto promotion is on, but the market is not yet stable (rl_lifecycle.promotion.stability).
STABILITY_WINDOW_NOT_MET = "STABILITY_WINDOW_NOT_MET"

ABSOLUTE_CODES = (MODEL_CHECKS_NOT_PASSED, NO_COMPLETED_FOLDS, FOLD_FAILED, NOT_BETTER_THAN_FLAT, NOT_BETTER_THAN_BUY_AND_HOLD,
                  TOO_FEW_TRADES, PSR_BELOW_MIN, DSR_BELOW_MIN, PBO_ABOVE_MAX)
PAIRED_CODES = (PAIRED_TEST_NOT_SIGNIFICANT, SHARPE_DELTA_BELOW_MIN, RETURN_DELTA_BELOW_MIN, DRAWDOWN_WORSE_THAN_MAX,
                TOO_FEW_FOLD_WINS)
REASON_CODES = ABSOLUTE_CODES + PAIRED_CODES + (MANUAL_APPROVAL_REQUIRED, STABILITY_WINDOW_NOT_MET)


class FoldMismatchError(UserInputError):
    """The challenger's and the champion's reports were not evaluated on the same folds."""


def as_number(value: Any) -> float:
    """A float, NaN for anything missing or not numeric (stored reports hold NaN as null)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class FoldOutcome:
    index: int
    status: str  # ok | failed
    test_range: tuple[int, int]  # dataset rows [start, end)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    baselines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    test_span: tuple[int, int] | None = None  # epoch us [start, end): the fold's identity across datasets

    @property
    def completed(self) -> bool:
        return self.status == "ok" and bool(self.metrics)

    def metric(self, name: str) -> float:
        return as_number(self.metrics.get(name))

    def baseline(self, baseline: str, name: str) -> float:
        return as_number((self.baselines.get(baseline) or {}).get(name))

    @property
    def identity(self) -> tuple:
        return ("span", self.test_span) if self.test_span is not None else ("rows", self.test_range)


@dataclass(frozen=True)
class ReportSummary:
    """What the gates need of an evaluation report."""

    report_id: int | None
    folds: tuple[FoldOutcome, ...]
    aggregate: Mapping[str, Any]
    dataset_hash: str | None = None
    market: str | None = None
    returns: Mapping[int, np.ndarray] = field(default_factory=dict)  # fold -> per-bar net returns (paired test)
    trials: Trials | None = None  # the market's trials at decision time; None: the DSR stored with the report
    # the market's trials on the challenger's test bars at decision time (T bars x N trials, the challenger
    # one of them: `evaluation.trials`); None: the PBO stored with the report
    trial_returns: np.ndarray | None = None

    def deflated_sharpe(self) -> tuple[float, dict]:
        """The DSR against the market's trials now (when known and the report keeps its Sharpe statistics),
        else the one stored with the report; with what it was deflated by."""
        if self.trials is not None and self.aggregate.get("sharpe_per_bar") is not None:
            return deflated_sharpe_at_decision(dict(self.aggregate), self.trials), {
                "n_trials": self.trials.n_trials, "trial_sharpe_variance": self.trials.variance,
                "expected_max_sharpe": expected_max_sharpe(self.trials.n_trials, self.trials.variance),
                "at": "decision"}
        return as_number(self.aggregate.get("dsr")), {
            "n_trials": self.aggregate.get("n_trials"), "trial_sharpe_variance": self.aggregate.get("trial_sharpe_variance"),
            "at": "report"}

    def overfitting(self) -> tuple[float, dict]:
        """The probability of backtest overfitting over the market's trials on these test bars: computed
        now from `trial_returns` when given, else the one stored with the report; NaN when not computed."""
        if self.trial_returns is not None:
            from rl_lifecycle.evaluation.trials import TrialMatrix, pbo_of

            detail = {**pbo_of(TrialMatrix(self.trial_returns, (None,) * self.trial_returns.shape[1])), "at": "decision"}
            detail.pop("report_ids")
        else:
            detail = {**(self.aggregate.get("pbo_detail") or {"pbo": self.aggregate.get("pbo")}), "at": "report"}
        return as_number(detail.get("pbo")), detail

    @classmethod
    def from_stored(cls, report, returns: Mapping[int, np.ndarray] | None = None,
                    trials: Trials | None = None, trial_returns: np.ndarray | None = None) -> ReportSummary:
        """From `rl_lifecycle.evaluation.store.EvaluationReport` (as `read_report` returns it), with its
        folds' per-bar returns (`rl_lifecycle.evaluation.curves.fold_returns`) for the paired test."""
        folds = tuple(
            FoldOutcome(
                index=int(f.index), status=f.status, test_range=(int(f.test_range[0]), int(f.test_range[1])),
                metrics=dict(f.metrics or {}), baselines=dict(f.baselines or {}),
                test_span=None if f.test_span is None else (int(f.test_span[0]), int(f.test_span[1])),
            )
            for f in sorted(report.folds, key=lambda f: f.index)
        )
        return cls(report.id, folds, dict(report.aggregates or {}), report.dataset_hash, report.market,
                   dict(returns or {}), trials, trial_returns)

    @property
    def completed_folds(self) -> tuple[FoldOutcome, ...]:
        return tuple(f for f in self.folds if f.completed)


@dataclass(frozen=True)
class GateResult:
    code: str  # the reason code recorded when this gate fails
    passed: bool
    value: float
    threshold: float
    description: str
    comparison: str  # how value is held against threshold: >=, <=, >
    details: Mapping[str, Any] | None = None  # what else a person needs to read the value (the paired test)

    def to_json(self) -> dict:
        out = {
            "code": self.code, "passed": self.passed, "value": _json_number(self.value),
            "threshold": _json_number(self.threshold), "comparison": self.comparison,
            "description": self.description,
        }
        if self.details is not None:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class Decision:
    outcome: str  # promoted | rejected | pending_manual
    reason_codes: tuple[str, ...]
    gates: tuple[GateResult, ...]
    bootstrap: bool  # no champion: only the absolute gates were applied

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> tuple[GateResult, ...]:
        return tuple(g for g in self.gates if not g.passed)

    def gates_json(self) -> list[dict]:
        return [g.to_json() for g in self.gates]


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
}


def _gate(code: str, value: float, threshold: float, comparison: str, description: str,
          details: Mapping[str, Any] | None = None) -> GateResult:
    value, threshold = float(value), float(threshold)
    # NaN compares False both ways, but say it outright: an undefined value never passes.
    passed = math.isfinite(value) and math.isfinite(threshold) and _COMPARE[comparison](value, threshold)
    return GateResult(code, bool(passed), value, threshold, description, comparison, details)


def strict_median(values: Iterable[float]) -> float:
    """The median, NaN when empty or when any value is NaN (a hidden NaN fold must not vanish)."""
    array = np.asarray(list(values), dtype=np.float64)
    if not len(array) or np.isnan(array).any():
        return math.nan
    return float(np.median(array))


def strict_extreme(values: Iterable[float], pick: Callable) -> float:
    array = np.asarray(list(values), dtype=np.float64)
    if not len(array) or np.isnan(array).any():
        return math.nan
    return float(pick(array))


def paired_folds(challenger: ReportSummary, champion: ReportSummary) -> list[tuple[FoldOutcome, FoldOutcome]]:
    """(challenger fold, champion fold) pairs completed in both reports; refuses reports on different folds."""
    ours = {f.index: f for f in challenger.folds}
    theirs = {f.index: f for f in champion.folds}
    if set(ours) != set(theirs):
        raise FoldMismatchError(
            f"challenger report {challenger.report_id} has folds {sorted(ours)}, champion report "
            f"{champion.report_id} has folds {sorted(theirs)}: evaluate both on the same folds"
        )
    for index in sorted(ours):
        a, b = ours[index], theirs[index]
        # Spans (time) identify a fold across datasets; rows only when a report lacks spans.
        same = a.test_span == b.test_span if a.test_span is not None and b.test_span is not None \
            else a.test_range == b.test_range
        if not same:
            raise FoldMismatchError(
                f"fold {index}: challenger report {challenger.report_id} tests {a.identity[1]}, champion report "
                f"{champion.report_id} tests {b.identity[1]}: evaluate both on the same folds"
            )
    return [(ours[i], theirs[i]) for i in sorted(ours) if ours[i].completed and theirs[i].completed]


def absolute_gates(report: ReportSummary, policy: GatePolicy) -> list[GateResult]:
    done = report.completed_folds
    gates = [
        _gate(NO_COMPLETED_FOLDS, len(done), 1, ">=", "completed folds in the challenger's report"),
        _gate(FOLD_FAILED, len(report.folds) - len(done), policy.max_failed_folds, "<=",
              "failed or missing folds in the challenger's report"),
    ]
    for code, baseline, threshold, text in (
        (NOT_BETTER_THAN_FLAT, "flat", policy.min_excess_return_over_flat,
         "median fold total return minus the flat baseline's"),
        (NOT_BETTER_THAN_BUY_AND_HOLD, "buy_and_hold", policy.min_excess_return_over_buy_and_hold,
         "median fold total return minus buy-and-hold's, both after fees"),
    ):
        if threshold is not None:
            excess = strict_median(f.metric("total_return") - f.baseline(baseline, "total_return") for f in done)
            gates.append(_gate(code, excess, threshold, ">", text))
    if policy.min_trades_per_fold is not None:
        gates.append(_gate(TOO_FEW_TRADES, strict_extreme((f.metric("trades") for f in done), np.min),
                           policy.min_trades_per_fold, ">=", "fewest trades in a completed fold"))
    if policy.min_psr is not None:
        gates.append(_gate(PSR_BELOW_MIN, as_number(report.aggregate.get("psr")), policy.min_psr, ">=",
                           "probabilistic Sharpe ratio of the pooled fold returns"))
    if policy.min_dsr is not None:
        dsr, deflation = report.deflated_sharpe()
        gates.append(_gate(DSR_BELOW_MIN, dsr, policy.min_dsr, ">=",
                           f"deflated Sharpe ratio of the pooled fold returns, against {deflation['n_trials']} trials",
                           details=deflation))
    if policy.max_pbo is not None:
        gates.append(pbo_gate(report, policy.max_pbo))
    return gates


def pbo_gate(report: ReportSummary, max_pbo: float) -> GateResult:
    """PBO_ABOVE_MAX: choosing the best of the market's trials on these test bars must not overfit more
    often than `max_pbo`. Fewer than two trials there is no choice to overfit: the gate passes, saying so."""
    pbo, detail = report.overfitting()
    if not math.isfinite(pbo):
        return GateResult(PBO_ABOVE_MAX, True, math.nan, float(max_pbo),
                          f"probability of backtest overfitting not computed: {detail.get('reason', 'not stored')}",
                          "<=", detail)
    return _gate(PBO_ABOVE_MAX, pbo, max_pbo, "<=",
                 f"probability of backtest overfitting (CSCV, S={detail.get('n_partitions')}) over the "
                 f"{detail.get('n_trials')} trials of the market on these test bars", details=detail)


def paired_returns(challenger: ReportSummary, champion: ReportSummary,
                   pairs: list[tuple[FoldOutcome, FoldOutcome]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Both contenders' returns on every paired test bar, one per bar (`returns_by_bar`: a CPCV bar's
    paths averaged); None when a fold's returns are missing or the two differ in length (then the
    paired test cannot run, and its gate fails)."""
    ours, theirs = [], []
    for a, b in pairs:
        ra, rb = challenger.returns.get(a.index), champion.returns.get(b.index)
        if ra is None or rb is None or len(ra) != len(rb):
            return None
        ours.append((a.identity[1], ra))
        theirs.append((a.identity[1], rb))
    if not ours:
        return None
    return returns_by_bar(ours), returns_by_bar(theirs)


def paired_test_gate(challenger: ReportSummary, champion: ReportSummary, pairs, policy: GatePolicy) -> GateResult:
    """PAIRED_TEST_NOT_SIGNIFICANT: the one-sided p-value of the policy's statistic must be at most alpha."""
    from rl_lifecycle.promotion.paired import paired_test

    rule = policy.paired_test
    series = paired_returns(challenger, champion, pairs)
    statistic = "sharpe difference" if rule.statistic == "sharpe" else "mean return difference"
    if series is None:
        return _gate(PAIRED_TEST_NOT_SIGNIFICANT, math.nan, rule.alpha, "<=",
                     f"paired test of the {statistic}: per-bar returns missing for a paired fold")
    test = paired_test(*series, replications=rule.replications)
    p_value = test.sharpe_p_value if rule.statistic == "sharpe" else test.mean_p_value
    return _gate(PAIRED_TEST_NOT_SIGNIFICANT, p_value, rule.alpha, "<=",
                 f"one-sided p-value of the {statistic} (challenger - champion) on {test.n_bars} paired test bars "
                 f"of {len(pairs)} paired backtests, circular block bootstrap (block {test.block_size})",
                 details={"statistic": rule.statistic, **test.to_json()})


def paired_gates(challenger: ReportSummary, champion: ReportSummary, policy: GatePolicy) -> list[GateResult]:
    pairs = paired_folds(challenger, champion)

    def deltas(metric: str) -> list[float]:
        return [ours.metric(metric) - theirs.metric(metric) for ours, theirs in pairs]

    n = len(pairs)
    gates = []
    if policy.paired_test is not None:
        gates.append(paired_test_gate(challenger, champion, pairs, policy))
    if policy.min_median_sharpe_delta is not None:
        gates.append(_gate(SHARPE_DELTA_BELOW_MIN, strict_median(deltas("sharpe")), policy.min_median_sharpe_delta,
                           ">=", f"median Sharpe delta (challenger - champion) over {n} paired folds"))
    if policy.min_median_return_delta is not None:
        gates.append(_gate(RETURN_DELTA_BELOW_MIN, strict_median(deltas("total_return")),
                           policy.min_median_return_delta, ">=",
                           f"median total-return delta (challenger - champion) over {n} paired folds"))
    if policy.max_drawdown_worsening is not None:
        gates.append(_gate(DRAWDOWN_WORSE_THAN_MAX, strict_extreme(deltas("max_drawdown"), np.max),
                           policy.max_drawdown_worsening, "<=",
                           f"largest max-drawdown increase (challenger - champion) over {n} paired folds"))
    if policy.min_fold_wins is not None:
        # A NaN delta is not a win; no pairs at all leaves nothing to win (NaN, fails).
        wins = sum(1 for d in deltas("total_return") if d > 0) if n else math.nan
        gates.append(_gate(TOO_FEW_FOLD_WINS, wins, policy.min_fold_wins.required(n), ">=",
                           f"paired folds whose total return beats the champion's (of {n}; policy: "
                           f"{policy.min_fold_wins.describe()})"))
    return gates


def model_checks_gate(checks: Mapping[str, str | None]) -> GateResult:
    """MODEL_CHECKS_NOT_PASSED: every blocking check of the challenger's model version (name -> its recorded
    outcome, `passed`, `failed` or None when it never ran) must have passed. Not a policy setting."""
    passed = sum(1 for outcome in checks.values() if outcome == "passed")
    states = ", ".join(f"{name} {outcome or 'never ran'}" for name, outcome in checks.items())
    return _gate(MODEL_CHECKS_NOT_PASSED, passed, len(checks), ">=",
                 f"blocking checks of the challenger's model version that passed ({states})",
                 details={name: outcome or "not run" for name, outcome in checks.items()})


def evaluate(
    challenger: ReportSummary,
    champion: ReportSummary | None,
    policy: GatePolicy,
    auto_promotion: bool,
    model_checks: Mapping[str, str | None] | None = None,
    stability=None,
) -> Decision:
    """Every gate, then the outcome: rejected when any fails, else promoted or pending_manual.
    `model_checks`: the challenger version's blocking checks and their recorded outcomes
    (`rl_lifecycle.models.service.model_checks`); decisions on registered versions always give them, and
    a version whose checks did not all pass is rejected (MODEL_CHECKS_NOT_PASSED). None: no version
    behind the report (the calibration's synthetic challengers). `stability`: the market's
    `stability.StabilityWindow`; with auto promotion, a passing challenger whose market is not stable waits
    (pending_manual, STABILITY_WINDOW_NOT_MET). None: no window applies (a bootstrap, a direct caller)."""
    gates = [] if model_checks is None else [model_checks_gate(model_checks)]
    gates += absolute_gates(challenger, policy)
    if champion is not None:
        gates += paired_gates(challenger, champion, policy)
    failed = list(dict.fromkeys(g.code for g in gates if not g.passed))
    if failed:
        outcome, codes = REJECTED, tuple(failed)
    elif auto_promotion and stability is not None and not stability.met:
        outcome, codes = PENDING_MANUAL, (STABILITY_WINDOW_NOT_MET,)
    elif auto_promotion:
        outcome, codes = PROMOTED, ()
    else:
        outcome, codes = PENDING_MANUAL, (MANUAL_APPROVAL_REQUIRED,)
    return Decision(outcome, codes, tuple(gates), bootstrap=champion is None)


# What each gate measures, for people: a gate table row reads `fold_failures ≤ 0 | 0 | pass`. The
# reason code (stable, stored) is what a failing gate records; tables show it on failure only.
GATE_NAMES = {
    MODEL_CHECKS_NOT_PASSED: "model_checks_passed",
    NO_COMPLETED_FOLDS: "completed_folds",
    FOLD_FAILED: "fold_failures",
    NOT_BETTER_THAN_FLAT: "excess_return_vs_flat",
    NOT_BETTER_THAN_BUY_AND_HOLD: "excess_return_vs_buy_and_hold",
    TOO_FEW_TRADES: "min_trades_per_fold",
    PSR_BELOW_MIN: "psr",
    DSR_BELOW_MIN: "dsr",
    PBO_ABOVE_MAX: "pbo",
    PAIRED_TEST_NOT_SIGNIFICANT: "paired_test_p_value",
    SHARPE_DELTA_BELOW_MIN: "median_sharpe_delta",
    RETURN_DELTA_BELOW_MIN: "median_return_delta",
    DRAWDOWN_WORSE_THAN_MAX: "max_drawdown_increase",
    TOO_FEW_FOLD_WINS: "fold_wins",
}
COMPARISON_SIGNS = {">=": "≥", "<=": "≤", ">": ">"}


def gate_name(code: str) -> str:
    """What the gate of `code` measures (a code no longer in use, from an old audit record: the code in lower case)."""
    return GATE_NAMES.get(code, code.lower())


def gate_table(decision: Decision) -> list[dict]:
    """One row per gate, for a person: name, code, value, comparison, threshold, pass."""
    return [
        {"gate": gate_name(g.code), "code": g.code, "value": g.value, "comparison": g.comparison,
         "threshold": g.threshold, "passed": g.passed, "description": g.description}
        for g in decision.gates
    ]


GATE_TABLE_HEADERS = ("gate", "value", "result")


def table_number(value) -> str:
    """A figure for a table cell: 4 significant digits, `-` for none or NaN (full precision: the JSON)."""
    if value is None or isinstance(value, bool) or value != value:
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def gate_rows(gates: Iterable[dict]) -> list[tuple[str, str, str]]:
    """Rows of GATE_TABLE_HEADERS from gate JSON (`Decision.gates_json()` or an audit record's `gates`): the
    gate named for what it tests with its threshold (`fold_failures ≤ 0`), the value, and `pass` or
    `FAIL (REASON_CODE)`; figures rounded (the JSON keeps them whole)."""
    return [(f"{gate_name(g['code'])} {COMPARISON_SIGNS.get(g['comparison'], g['comparison'])} {table_number(g['threshold'])}",
             table_number(g["value"]), "pass" if g["passed"] else f"FAIL ({g['code']})")
            for g in gates]
