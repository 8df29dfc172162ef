"""Walk-forward evaluation of a model spec on a partition's dataset: train per fold, backtest per fold, report.

Each fold trains a fresh model of the spec on the fold's train rows only, saves it, and backtests
the fold's test range in NautilusTrader in its own process; the strategy there loads the saved
policy and acts on the dataset's canonical vectors (the rows the feature read path gave the
dataset) through `Policy.act`. A spec and its paired opponent (the champion's spec) see identical
folds, so every comparison is paired.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import psycopg

from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.cluster.placement import this_process, worker_label
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.backtest import FoldJob, FoldResult, align_candles, run_fold_backtest, run_folds
from rl_lifecycle.evaluation.curves import database_curve_writer
from rl_lifecycle.evaluation.folds import (
    Backtest,
    Fold,
    FoldConfig,
    backtests,
    make_folds,
    splits_of,
    verify_folds,
)
from rl_lifecycle.evaluation.report import summarise
from rl_lifecycle.evaluation.store import (
    EvaluationReport,
    evaluation_key,
    market_trials,
    read_report,
    write_report,
)
from rl_lifecycle.evaluation.trials import report_pbo
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.policy import Policy
from rl_lifecycle.models.service import (
    TrainingData,
    check_spec_matches_dataset,
    partition_version,
    registered_spec,
    training_data,
)
from rl_lifecycle.models.spec import ModelSpec
from rl_lifecycle.models.tracking import ModelRegistry
from rl_lifecycle.models.trainer import train_policy
from rl_lifecycle.trading import ACTION_POSITIONS
from rl_lifecycle.windows import Window, from_us, iso


@cache
def _load_saved(directory: str) -> Policy:
    return Policy.load(Path(directory))


@dataclass(frozen=True)
class SavedPolicy:
    """A fold's trained policy by path: picklable, loaded once in the backtest process that acts with it."""

    directory: str
    fingerprint: str
    positions: tuple[int, ...]

    def act(self, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return _load_saved(self.directory).act(vectors, positions, fingerprint=self.fingerprint)


def _rows(ranges) -> np.ndarray:
    return np.concatenate([np.arange(start, end) for start, end in ranges]) if ranges else np.empty(0, np.int64)


@dataclass(frozen=True)
class _Rows:
    """A subset of a dataset's rows, as the trainer reads them."""

    ts: np.ndarray
    values: np.ndarray
    close: np.ndarray


def subset_continues(continues: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`continues` of a subset of a dataset's rows (sorted row indices): two rows continue when they are
    adjacent in the dataset and the dataset's rows continue there (the market's calendar decided that);
    a join between two train ranges (a purged or tested stretch left out) is a gap."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        return np.zeros(0, dtype=bool)
    return (np.diff(rows) == 1) & np.asarray(continues, dtype=bool)[rows[:-1]]


def train_fold(data: TrainingData, spec: ModelSpec, fold: Fold, directory: Path) -> SavedPolicy:
    """A fresh model of `spec` trained on the fold's train rows only (joins between ranges count as gaps;
    the market's closes do not)."""
    rows = _rows(fold.train_ranges)
    content = data.content
    subset = _Rows(content.ts[rows], content.values[rows], content.close[rows])
    trained = train_policy(subset, subset_continues(data.continues, rows), spec,
                           feature_names=data.features.feature_names,
                           opens=None if data.open is None else data.open[rows])
    Policy(trained.model, spec, data.dataset.fingerprint, data.features.feature_names).save(directory)
    return SavedPolicy(str(directory), data.dataset.fingerprint, ACTION_POSITIONS[spec.action_set])


@dataclass(frozen=True)
class EvaluationPlan:
    """One spec's walk-forward evaluation of a partition's dataset, before any fold ran (picklable:
    the folds may run in other processes, as Dagster steps)."""

    market: Market
    window: Window
    spec: ModelSpec
    config: FoldConfig
    folds: tuple[Fold, ...]
    dataset_hash: str
    label_horizon: int
    root: Path  # the fold policies trained and backtested here: `<workdir>/<market>/<evaluation key[:16]>`
    starting_balance: float = 100_000.0
    fold_timeout_s: float | None = None

    def under(self, workdir: Path) -> EvaluationPlan:
        """The same plan with its fold policies under `workdir`: a fold run by another worker than the one that
        planned it keeps them on its own disk."""
        return replace(self, root=workdir / self.market.key / self.root.name)


def contenders_fold_config(config: FoldConfig, specs: list[ModelSpec]) -> FoldConfig:
    """The one fold config every contender is evaluated on (paired tests need the same folds): each fold
    trains on at least the longest of their episodes."""
    episodes = [spec.episode_length for spec in specs if spec.episode_length is not None]
    return config.with_episode_length(max(episodes)) if episodes else config


def plan_evaluation(
    conn: psycopg.Connection, market: Market, window: Window, spec: ModelSpec, config: FoldConfig, *,
    workdir: Path, starting_balance: float = 100_000.0, fold_timeout_s: float | None = None,
) -> EvaluationPlan:
    """The folds of the partition's dataset for `spec`; refuses a spec the dataset cannot serve, or
    more folds than the rows hold (saying how many fit)."""
    data = training_data(conn, market, window)
    check_spec_matches_dataset(spec, data)
    horizon = data.dataset.spec.forward_return_horizon
    try:
        folds = make_folds(len(data.content), config, horizon)
    except UserInputError as exc:
        spec = data.dataset.spec
        raise UserInputError(
            f"the dataset {data.dataset.dataset_hash[:12]} of {market.key} spans {len(spec.windows())} window(s) "
            f"({spec.first_window} .. {spec.last_window}) and holds {len(data.content)} rows: {exc}; a longer span "
            f"holds more (training_dataset config span_windows, `--span-windows N`)") from None
    key = evaluation_key(market, spec.spec_hash, data.dataset.dataset_hash, config)
    return EvaluationPlan(market, window, spec, config, tuple(folds), data.dataset.dataset_hash, horizon,
                          workdir / market.key / key[:16], starting_balance, fold_timeout_s)


def _fold_job(plan: EvaluationPlan, data: TrainingData, candles, test: Backtest, policy: SavedPolicy) -> FoldJob:
    start, end = test.test_range
    return FoldJob(plan.market.key, test.index, candles.slice(start, end), data.content.values[start:end], policy,
                   plan.spec.cost_bps, plan.starting_balance, timeout_s=plan.fold_timeout_s, fill=data.fill)


def _backtests_of(plan: EvaluationPlan, fold_index: int) -> list[Backtest]:
    return [b for b in backtests(list(plan.folds)) if b.split == fold_index]


def _aligned_candles(conn: psycopg.Connection, market: Market, ts: np.ndarray):
    return align_candles(load_candles(conn, market, int(ts[0]), int(ts[-1]) + market.interval_us), ts)


def run_one_fold(conn: psycopg.Connection, plan: EvaluationPlan, fold_index: int, log=print) -> list[FoldResult]:
    """Train the fold's fresh model and backtest each of its test ranges (one for a walk-forward fold, one
    per tested group for a CPCV split), each in a process of its own. Never raises: a fold that fails, in
    training or in a backtest, gives failed FoldResults with the traceback."""
    started = time.perf_counter()
    fold, tests = plan.folds[fold_index], _backtests_of(plan, fold_index)
    ran_on = this_process()
    try:
        data = training_data(conn, plan.market, plan.window)
        if data.dataset.dataset_hash != plan.dataset_hash:
            raise RuntimeError(f"the partition's dataset changed since the folds were planned "
                               f"({plan.dataset_hash[:12]} -> {data.dataset.dataset_hash[:12]})")
        log(f"{plan.spec.name} fold {fold.index}: training on {fold.train_rows} rows")
        policy = train_fold(data, plan.spec, fold, plan.root / f"policy-{fold.index}")
        candles = _aligned_candles(conn, plan.market, data.content.ts)
        jobs = [_fold_job(plan, data, candles, test, policy) for test in tests]
    except Exception:
        error, timings = traceback.format_exc(), {"train_s": round(time.perf_counter() - started, 3)}
        return [replace(FoldResult.failed(test.index, error, timings), ran_on=ran_on) for test in tests]
    results = []
    for job, test in zip(jobs, tests, strict=True):
        start, end = test.test_range
        log(f"{plan.spec.name} fold {fold.index}: backtesting {end - start} bars"
            + ("" if test.test_group is None else f" of group {test.test_group}"))
        results.append(replace(with_replay(job, run_fold_backtest(job)), ran_on=ran_on))
    return results


def with_replay(job: FoldJob, result: FoldResult) -> FoldResult:
    """The Nautilus result with the accountant's booking of the same positions beside it."""
    from rl_lifecycle.evaluation.accountant import replay

    if not result.ok:
        return result
    # the account the backtest ran on: a margin account iff the policy can go short (backtest.run_fold_in_this_process)
    return replace(result, replay=replay(job.market, job.candles, result, job.cost_bps,
                                         initial_position=job.initial_position, margin=min(job.policy.positions) < 0,
                                         fill=job.fill))


def assemble_report(
    conn: psycopg.Connection, plan: EvaluationPlan, results: list[FoldResult], *, strict: bool, timings: dict
) -> EvaluationReport:
    """Metrics, baselines and aggregates of the folds' results (failed folds included); stored and returned."""
    data = training_data(conn, plan.market, plan.window)
    results = sorted(results, key=lambda r: r.fold_index)
    key = evaluation_key(plan.market, plan.spec.spec_hash, plan.dataset_hash, plan.config)
    trials = market_trials(conn, plan.market, excluding=key)  # this evaluation counts itself (a rerun: once)
    with conn.transaction():  # the curves with their report, or neither (a rerun replaces both)
        records, aggregates, status = summarise(
            plan.market, list(plan.folds), results, data.content.ts, plan.spec.cost_bps, trials, strict,
            database_curve_writer(conn, f"{plan.market.key}/{key}"), calendar=data.calendar, fill=data.fill)
        pbo = report_pbo(conn, plan.market, records, excluding_key=key)
        aggregates["pbo"], aggregates["pbo_detail"] = pbo["pbo"], pbo
        report = EvaluationReport(
            market=plan.market.key, spec=json.loads(plan.spec.canonical_json()), model_spec_hash=plan.spec.spec_hash,
            dataset_hash=plan.dataset_hash, fold_config=plan.config, label_horizon=plan.label_horizon, strict=strict,
            status=status, aggregates=aggregates, folds=records, timings=timings,
        )
        return replace(report, id=write_report(conn, report))


def evaluate_spec(
    conn: psycopg.Connection,
    market: Market,
    window: Window,
    spec: ModelSpec,
    config: FoldConfig,
    *,
    workdir: Path,
    workers: int = 1,
    strict: bool = True,
    starting_balance: float = 100_000.0,
    fold_timeout_s: float | None = None,
    log=print,
) -> EvaluationReport:
    """Evaluate `spec` on walk-forward folds of the partition's dataset in this process: the folds'
    models are trained one after another, their backtests run `workers` at a time (one process each).
    The `fold_report` asset runs the same steps as one Dagster step per fold instead."""
    started = time.perf_counter()
    plan = plan_evaluation(conn, market, window, spec, config, workdir=workdir, starting_balance=starting_balance,
                           fold_timeout_s=fold_timeout_s)
    data = training_data(conn, market, window)
    candles = _aligned_candles(conn, market, data.content.ts)
    jobs = []
    for fold in plan.folds:
        log(f"{spec.name} fold {fold.index}: training on {fold.train_rows} rows")
        policy = train_fold(data, spec, fold, plan.root / f"policy-{fold.index}")
        jobs += [_fold_job(plan, data, candles, test, policy) for test in _backtests_of(plan, fold.index)]
    trained_at = time.perf_counter()
    log(f"{spec.name}: backtesting {len(jobs)} test ranges on {workers} worker(s)")
    results = [with_replay(job, result) for job, result in zip(jobs, run_folds(jobs, workers), strict=True)]
    return assemble_report(conn, plan, results, strict=strict, timings={
        "train_s": round(trained_at - started, 3), "backtest_s": round(time.perf_counter() - trained_at, 3),
        "workers": workers,
    })


def check_backtest_parity(report: EvaluationReport) -> list[str]:
    """Folds whose Nautilus book and the accountant's disagree beyond the tolerance, or that lack the
    accountant's replay (a report stored before it was kept): one line each; [] when every fold agrees."""
    problems = []
    for fold in report.folds:
        if fold.status != "ok":
            continue
        replay = (fold.baselines or {}).get("accountant")
        if replay is None:
            problems.append(f"fold {fold.index}: no accountant replay stored (re-materialize fold_report)")
        elif not replay.get("agrees"):
            problems.append(f"fold {fold.index}: equity differs by up to {replay.get('max_equity_difference')}, "
                            f"account by {replay.get('account_equity_difference')} (tolerance {replay.get('tolerance')})")
    return problems


def check_leak_free(report: EvaluationReport, n_rows: int) -> list[str]:
    """Re-derive the report's folds (CPCV: its splits) from its stored ranges and verify purge, embargo and
    disjointness."""
    train: dict[int, set] = {}
    for record in report.folds:
        train.setdefault(record.backtest.split, set()).add(tuple(tuple(x) for x in record.train_ranges))
    problems = [f"split {split}: its backtests record {len(ranges)} different train ranges (one model trades them all)"
                for split, ranges in sorted(train.items()) if len(ranges) > 1]
    return problems + verify_folds(report_folds(report), n_rows, report.label_horizon, report.fold_config)


def report_folds(report: EvaluationReport) -> list[Fold]:
    """The folds (CPCV: the splits) a report's rows came from, rebuilt from the rows (a split's train
    ranges from its first row)."""
    train: dict[int, tuple] = {}
    for record in report.folds:
        train.setdefault(record.backtest.split, tuple(tuple(x) for x in record.train_ranges))
    return splits_of([r.backtest for r in report.folds], train)


def partition_report(conn: psycopg.Connection, market: Market, model_spec_hash: str, dataset_hash: str) -> EvaluationReport | None:
    """The latest evaluation of a spec on a dataset (what a partition's `fold_report` wrote)."""
    row = conn.execute(
        """SELECT id FROM evaluation_reports WHERE pair = %s AND interval = %s AND model_spec_hash = %s
           AND dataset_hash = %s ORDER BY updated_at DESC, id DESC LIMIT 1""",
        (market.pair, market.interval, model_spec_hash, dataset_hash),
    ).fetchone()
    return None if row is None else read_report(conn, row[0])


FOLD_TABLE_HEADERS = ("fold", "status", "test span (UTC)", "return", "sharpe", "max dd", "trades", "flat", "buy&hold")
EQUITY_PANEL_COLUMNS = 3  # panels a row in `equity_curves_png`
EQUITY_PANEL_HEIGHT_IN = 3.2


def challenger_report(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window,
                      ) -> tuple[EvaluationReport | None, TrainingData | None]:
    """The stored evaluation of the partition's challenger on its dataset, with that dataset (None, None:
    no challenger, or not evaluated yet)."""
    challenger = partition_version(registry, market, window)
    if challenger is None:
        return None, None
    data = training_data(conn, market, window)
    return partition_report(conn, market, registered_spec(registry, challenger).spec_hash, data.dataset.dataset_hash), data


def span_text(start_us: int, end_us: int) -> str:
    """A [start, end) span for a table cell: minutes, no seconds or zone; dates only when both are midnights."""
    start, end = from_us(start_us), from_us(end_us)
    midnight = all(t.hour == t.minute == t.second == 0 for t in (start, end))
    shape = "%Y-%m-%d" if midnight else "%Y-%m-%d %H:%M"
    return f"{start:{shape}} .. {end:{shape}}"


def fold_table(report: EvaluationReport) -> list[tuple]:
    """One row per fold for people (FOLD_TABLE_HEADERS): the test span, the main metrics and both
    baselines' returns, rounded; narrow enough for the Dagster metadata panel (full precision: `--json`)."""

    def pct(value) -> str:
        return "-" if value is None or value != value else f"{value:+.2%}"

    rows = []
    for fold in report.folds:
        m, b = fold.metrics or {}, fold.baselines or {}
        rows.append((
            fold.index if fold.test_group is None else f"{fold.index} (split {fold.split}, group {fold.test_group})",
            fold.status, span_text(*fold.test_span), pct(m.get("total_return")),
            "-" if m.get("sharpe") is None else f"{m['sharpe']:.2f}",
            "-" if m.get("max_drawdown") is None else f"{m['max_drawdown']:.2%}", m.get("trades", "-"),
            pct((b.get("flat") or {}).get("total_return")), pct((b.get("buy_and_hold") or {}).get("total_return")),
        ))
    return rows


def equity_curves_png(conn: psycopg.Connection, report: EvaluationReport) -> bytes | None:
    """Each fold's equity beside buy-and-hold and flat, one panel per fold, `EQUITY_PANEL_COLUMNS` panels
    a row; `PLOT_WIDTH_IN` wide at `PLOT_DPI`, whatever the number of folds (they add rows, not width)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_lifecycle.evaluation.curves import read_curve
    from rl_lifecycle.plots import PLOT_DPI, PLOT_WIDTH_IN, concise_dates

    curves = [(f.index, frame) for f in report.folds
              if f.equity_curve_uri and (frame := read_curve(conn, f.equity_curve_uri)) is not None]
    if not curves:
        return None
    columns = min(len(curves), EQUITY_PANEL_COLUMNS)
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(PLOT_WIDTH_IN, EQUITY_PANEL_HEIGHT_IN * rows), dpi=PLOT_DPI,
                             squeeze=False, layout="constrained")
    panels = list(axes.flat)
    for ax, (index, frame) in zip(panels, curves, strict=False):
        ts = frame["ts"].to_numpy()
        for column, style in (("equity", "-"), ("buy_and_hold", "--"), ("flat", ":")):
            ax.plot(ts, frame[column].to_numpy(), style, linewidth=1.0, label=column)
        ax.set_title(f"fold {index}", fontsize=11)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        concise_dates(ax, max_ticks=5)
    for ax in panels[len(curves):]:
        ax.set_visible(False)
    panels[0].legend(fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # no tight bounding box: the size stays the one asked for
    plt.close(fig)
    return buffer.getvalue()


def cpcv_paths_png(conn: psycopg.Connection, report: EvaluationReport) -> bytes | None:
    """A CPCV report's backtest paths: each path's equity (its groups' backtests chained) on one panel,
    the groups' boundaries marked; None for a walk-forward report or when no path is complete."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_lifecycle.evaluation.curves import fold_returns
    from rl_lifecycle.evaluation.metrics import chained_equity
    from rl_lifecycle.evaluation.report import path_returns
    from rl_lifecycle.plots import PLOT_DPI, PLOT_HEIGHT_IN, PLOT_WIDTH_IN

    if report.fold_config.scheme != "cpcv":
        return None
    paths = [(p, r) for p, r in enumerate(path_returns(report_folds(report), report.folds, fold_returns(conn, report)))
             if r is not None]
    if not paths:
        return None
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, PLOT_HEIGHT_IN * 1.25), dpi=PLOT_DPI, layout="constrained")
    for index, returns in paths:
        ax.plot(chained_equity(returns), linewidth=1.0, label=f"path {index}")
    group_rows = sorted({r.test_range for r in report.folds})
    for boundary in np.cumsum([end - start - 1 for start, end in group_rows])[:-1]:  # returns per group
        ax.axvline(boundary, color="grey", linewidth=0.5, linestyle=":")
    ax.set_title(f"{len(paths)} CPCV paths: equity (start = 1)", fontsize=12)
    ax.set_xlabel("tested bar", fontsize=10)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, ncol=min(len(paths), 6))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # no tight bounding box: the size stays the one asked for
    plt.close(fig)
    return buffer.getvalue()


def report_json(report: EvaluationReport) -> dict:
    """The report as one JSON object; time ranges as [start, end) ISO-8601 UTC pairs, NaN as null."""
    from rl_lifecycle.evaluation.report import json_safe

    return json_safe({
        "id": report.id,
        "market": report.market,
        "status": report.status,
        "strict": report.strict,
        "spec": report.spec,
        "model_spec_hash": report.model_spec_hash,
        "dataset_hash": report.dataset_hash,
        "label_horizon": report.label_horizon,
        "purge_bars": report.fold_config.purge_bars,
        "embargo_bars": report.fold_config.embargo_bars,
        "fold_config": report.fold_config.model_dump(mode="json"),
        "scheme": report.fold_config.scheme,
        # the annualisation of every annualised figure: the market calendar's bars a year (null: stored before)
        "bars_per_year": report.aggregates.get("bars_per_year"),
        "calendar": report.aggregates.get("calendar"),
        # where the folds filled a position decided at a bar's close: close or next_open (null: stored before
        # the field, when every market filled at the close)
        "fill": report.aggregates.get("fill"),
        **({"paths": (report.aggregates.get("paths") or {}).get("count")} if report.fold_config.scheme == "cpcv" else {}),
        # pbo: null when not computed (fewer than two trials of the market on these test bars)
        "aggregate": {**report.aggregates, "pbo": report.aggregates.get("pbo")},
        "timings": report.timings,
        "folds": [
            {
                "index": f.index,
                "split": f.backtest.split,
                "test_group": f.test_group,
                "status": f.status,
                "train_ranges": [[iso(s), iso(e)] for s, e in f.train_spans],
                "test_range": [iso(f.test_span[0]), iso(f.test_span[1])],
                "train_rows": [list(r) for r in f.train_ranges],
                "test_rows": list(f.test_range),
                "metrics": f.metrics,
                "baselines": {k: v for k, v in (f.baselines or {}).items() if k != "accountant"},
                "accountant": (f.baselines or {}).get("accountant"),
                "error": f.error,
                "equity_curve": f.equity_curve_uri,
                "worker": worker_label(f.ran_on),  # the worker's --name, else host:pid (null: not recorded)
                "ran_on": f.ran_on,
            }
            for f in report.folds
        ],
    })
