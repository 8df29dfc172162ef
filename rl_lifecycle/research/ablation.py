"""What the features are worth: feature-group ablation through the same walk-forward, and permutation importance.

**Ablation.** For a model spec and the feature set its partition's dataset holds, one variant per feature
group (the spec with that group's columns removed), plus the full spec and a "position only" baseline
(no feature at all, the position alone). Every variant is an ordinary `evaluate_spec` of the partition
on the same folds: a fresh model per fold trained on the fold's train rows, backtested in NautilusTrader,
replayed by the accountant, stored as an evaluation report, so **every variant is a trial of the market**
(it counts in the DSR's trial count and in the PBO's matrix, `store.market_trials`, `trials.report_pbo`).

Removing a group is a column selection recorded in the variant's model spec (`ModelSpec.features`): the
vectors stay the set's canonical vectors, computed by the one pipeline under its one fingerprint, and
the trainer and `Policy.act` select the spec's columns from them (`models.spec.observed`). The env, the
fold backtest, the accountant's replay and paper decisions all act through `Policy.act`, so they see the
same columns (rl_lifecycle_tests/test_ablation.py checks it). A variant's spec hash differs from the full
spec's, so it is a report, a trial and a model of its own.

**Permutation importance.** Without retraining: on each fold's test range, the full spec's fold policy
acts on the test vectors with one group's columns permuted (the rows of the group moved together, in
blocks of `block` consecutive bars whose order is shuffled with a seeded generator, so the serial
structure inside a block and the relations between the group's columns survive while their alignment
with the prices is broken), and the accountant books the positions it takes (`accountant.account_candles`,
exact to the fold backtest). `permutation_delta` is the mean over folds and repeats of the permuted
Sharpe minus the unpermuted one.

All deltas are **variant minus full**: a negative Δ says the group helps (removing or scrambling it costs).
Ranks: 1 = the group whose loss costs the most. The paired test (`promotion.paired.paired_test`, circular
block bootstrap) is of the full spec over the variant on the same test bars: its one-sided p-value is
small when removing the group hurts significantly.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.folds import FoldConfig, backtests
from rl_lifecycle.evaluation.metrics import sharpe_per_bar, simple_returns
from rl_lifecycle.evaluation.store import EvaluationReport, market_trials
from rl_lifecycle.features.spec import FeatureSetSpec, load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.spec import ModelSpec
from rl_lifecycle.trading import rollout
from rl_lifecycle.windows import Window

FULL = "full"
POSITION_ONLY = "position_only"
DEFAULT_REPEATS = 5
DEFAULT_SEED = 0
ABLATION_HEADERS = ("variant", "features", "Δ sharpe", "Δ return", "permutation Δ sharpe", "p-value", "trades",
                    "sharpe", "return")


@dataclass(frozen=True)
class Variant:
    """One contender of an ablation: the full spec, the spec without one group, or the position-only spec."""

    label: str  # full | <group> | position_only
    removed: tuple[str, ...]  # the features it does not observe
    spec: ModelSpec


def _variant_name(base: str, suffix: str) -> str:
    return f"{base[:63 - len(suffix)]}{suffix}"


def _with_features(spec: ModelSpec, features: tuple[str, ...], suffix: str) -> ModelSpec:
    data = {**json.loads(spec.canonical_json()), "features": list(features), "name": _variant_name(spec.name, suffix)}
    return ModelSpec.model_validate(data)


def parse_groups(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`momentum,trend` (or a list) -> ('momentum', 'trend'); None or empty: every group."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    return names or None


def ablation_variants(spec: ModelSpec, features: FeatureSetSpec, groups: Sequence[str] | None = None) -> list[Variant]:
    """The full spec, one variant per group (all of the set's, or `groups`, each refused by name when the
    set has no such group), and the position-only baseline; the variants observe the set's features minus
    the group's, in the set's order."""
    if features.groups is None:
        raise UserInputError(f"feature set {features.name} declares no feature groups: nothing to ablate "
                             "(add `groups:` to its YAML)")
    if spec.features is not None:
        raise UserInputError(f"model spec {spec.name!r} already observes a subset of its features; ablate a spec "
                             "that observes the whole set")
    if spec.feature_set != features.name:
        raise UserInputError(f"model spec {spec.name!r} wants feature set {spec.feature_set!r}, not {features.name!r}")
    chosen = tuple(groups) if groups else features.group_names
    out = [Variant(FULL, (), spec)]
    for group in chosen:
        removed = features.group_features(group)  # refuses an unknown group by name
        kept = tuple(name for name in features.feature_names if name not in removed)
        out.append(Variant(group, removed, _with_features(spec, kept, f"_no_{group}")))
    out.append(Variant(POSITION_ONLY, features.feature_names, _with_features(spec, (), "_position_only")))
    return out


# -- permutation ------------------------------------------------------------------------------------------


def block_permutation(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """Row order of `n` rows cut into consecutive blocks of `block` (the last one shorter), the blocks shuffled."""
    if block < 1:
        raise UserInputError(f"permutation block={block}: must be at least 1 bar")
    starts = np.arange(0, n, block)
    order = rng.permutation(len(starts))
    return np.concatenate([np.arange(starts[i], min(starts[i] + block, n)) for i in order]) if n else np.empty(0, np.int64)


def permute_columns(vectors: np.ndarray, columns: Sequence[int], order: np.ndarray) -> np.ndarray:
    """A copy of `vectors` whose `columns` are taken from the rows in `order` (the other columns untouched)."""
    out = np.array(vectors, dtype=np.float64, copy=True)
    cols = np.asarray(list(columns), dtype=np.int64)
    out[:, cols] = np.asarray(vectors)[order][:, cols]
    return out


def default_block(n_rows: int) -> int:
    """n^(1/3) bars (at least 2): the usual order of a block bootstrap's block length."""
    return max(2, int(round(n_rows ** (1 / 3))))


@dataclass(frozen=True)
class FoldBook:
    """What the accountant books for one test range: Sharpe (annualised like the reports') and total return."""

    sharpe: float
    total_return: float


def _book(market: Market, candles, positions: np.ndarray, spec: ModelSpec, starting_balance: float,
          periods_per_year: float, margin: bool, fill: str) -> FoldBook:
    from rl_lifecycle.evaluation.accountant import account_candles

    booked = account_candles(market, candles, positions, spec.cost_bps, starting_balance, margin=margin, fill=fill)
    equity = booked.equity
    return FoldBook(sharpe_per_bar(simple_returns(equity)) * math.sqrt(periods_per_year),
                    float(equity[-1] / equity[0] - 1.0) if len(equity) else 0.0)


def permutation_importance(
    conn: psycopg.Connection, market: Market, window: Window, spec: ModelSpec, config: FoldConfig,
    features: FeatureSetSpec, groups: Sequence[str], *, workdir: Path, report: EvaluationReport,
    block: int | None = None, repeats: int = DEFAULT_REPEATS, seed: int = DEFAULT_SEED,
    starting_balance: float = 100_000.0,
) -> dict[str, dict]:
    """Per group: the mean Δ Sharpe and Δ return (permuted minus unpermuted) of `spec`'s trained fold
    policies (the evaluation `report` left under `workdir`) over each fold's test range, and the
    unpermuted books per fold. Deterministic: the generator is seeded by `seed`, the repeat and the fold."""
    from rl_lifecycle.evaluation.service import _aligned_candles, contenders_fold_config, plan_evaluation
    from rl_lifecycle.models.policy import Policy
    from rl_lifecycle.models.service import training_data

    if repeats < 1:
        raise UserInputError(f"permutation repeats={repeats}: must be at least 1")
    config = contenders_fold_config(config, [spec])  # the folds `run_ablation` evaluated on
    plan = plan_evaluation(conn, market, window, spec, config, workdir=workdir, starting_balance=starting_balance)
    data = training_data(conn, market, window)
    candles = _aligned_candles(conn, market, data.content.ts)
    periods = float(report.aggregates.get("bars_per_year") or 0.0)
    names = data.features.feature_names
    ok = {f.index for f in report.folds if f.status == "ok"}
    deltas: dict[str, list[tuple[float, float]]] = {g: [] for g in groups}
    base_books: dict[int, FoldBook] = {}
    for test in backtests(list(plan.folds)):
        if test.index not in ok:
            continue
        policy = Policy.load(plan.root / f"policy-{test.split}")
        bound = policy.on(data.dataset.fingerprint)
        margin = min(policy.positions) < 0
        start, end = test.test_range
        vectors, fold_candles = data.content.values[start:end], candles.slice(start, end)
        base = _book(market, fold_candles, rollout(bound, vectors), spec, starting_balance, periods, margin, data.fill)
        base_books[test.index] = base
        size = block or default_block(end - start)
        for g_index, group in enumerate(groups):
            columns = [names.index(f) for f in features.group_features(group)]
            for r in range(repeats):
                rng = np.random.default_rng([seed, r, test.index, g_index])
                permuted = permute_columns(vectors, columns, block_permutation(end - start, size, rng))
                book = _book(market, fold_candles, rollout(bound, permuted), spec, starting_balance, periods, margin,
                             data.fill)
                deltas[group].append((book.sharpe - base.sharpe, book.total_return - base.total_return))
    out = {}
    for group, values in deltas.items():
        arr = np.array(values, dtype=np.float64).reshape(-1, 2)
        out[group] = {"permutation_delta": float(np.mean(arr[:, 0])) if len(arr) else math.nan,
                      "permutation_delta_return": float(np.mean(arr[:, 1])) if len(arr) else math.nan}
    return {"groups": out, "base": {i: {"sharpe": b.sharpe, "total_return": b.total_return}
                                    for i, b in base_books.items()},
            "block": block, "repeats": repeats, "seed": seed}


# -- the ablation -----------------------------------------------------------------------------------------


def _mean_metric(report: EvaluationReport, key: str) -> float:
    values = [f.metrics[key] for f in report.folds if f.status == "ok" and f.metrics]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _trades(report: EvaluationReport) -> int:
    return int(sum(int(f.metrics.get("trades", 0)) for f in report.folds if f.status == "ok" and f.metrics))


def _paired_p_value(conn: psycopg.Connection, full: EvaluationReport, variant: EvaluationReport) -> float | None:
    """One-sided p-value that the full spec's Sharpe beats the variant's on the same test bars; None when
    the two lack paired per-bar returns (a failed fold, a missing curve) or the test is undefined."""
    from rl_lifecycle.evaluation.curves import fold_returns
    from rl_lifecycle.promotion.paired import paired_test

    ours, theirs = fold_returns(conn, full), fold_returns(conn, variant)
    common = sorted(set(ours) & set(theirs))
    pairs = [(ours[i], theirs[i]) for i in common if len(ours[i]) == len(theirs[i])]
    if not pairs or len(pairs) != len(common):
        return None
    test = paired_test(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))
    return test.sharpe_p_value if math.isfinite(test.sharpe_p_value) else None


def _ranks(values: dict[str, float]) -> dict[str, int | None]:
    """1 = the most negative Δ (the group whose loss costs most); NaN ranks last (None)."""
    finite = sorted((v, g) for g, v in values.items() if v is not None and math.isfinite(v))
    ranks: dict[str, int | None] = {g: None for g in values}
    for rank, (_, group) in enumerate(finite, start=1):
        ranks[group] = rank
    return ranks


def run_ablation(
    conn: psycopg.Connection, market: Market, window: Window, spec: ModelSpec, config: FoldConfig, *,
    workdir: Path, groups: Sequence[str] | None = None, workers: int = 1, strict: bool = True,
    starting_balance: float = 100_000.0, fold_timeout_s: float | None = None,
    permutation_block: int | None = None, permutation_repeats: int = DEFAULT_REPEATS,
    permutation_seed: int = DEFAULT_SEED, log: Callable[[str], None] = print,
) -> dict:
    """Evaluate the full spec, each group's variant and the position-only baseline on the same folds
    (each a stored report and a trial of the market), then the permutation importance of every chosen
    group for the full spec's fold policies; returns the ablation as one JSON-ready dict (`ablation_json`)."""
    from rl_lifecycle.evaluation.report import json_safe
    from rl_lifecycle.evaluation.service import contenders_fold_config, evaluate_spec
    from rl_lifecycle.models.service import check_spec_matches_dataset, training_data

    data = training_data(conn, market, window)
    check_spec_matches_dataset(spec, data)
    # the grouping is the shipped set's today (a grouping moves no value: the dataset's fingerprint matched)
    features = load_feature_set(data.features.name, anchor=data.features.anchor)
    variants = ablation_variants(spec, features, groups)
    config = contenders_fold_config(config, [spec])
    trials_before = market_trials(conn, market).n_trials
    reports: dict[str, EvaluationReport] = {}
    for n, variant in enumerate(variants, start=1):
        observed = len(features.feature_names) - len(variant.removed)
        log(f"ablation {n}/{len(variants)}: {variant.label} ({observed} of {len(features.feature_names)} features)")
        reports[variant.label] = evaluate_spec(
            conn, market, window, variant.spec, config, workdir=workdir, workers=workers, strict=strict,
            starting_balance=starting_balance, fold_timeout_s=fold_timeout_s, log=log)
    full = reports[FULL]
    chosen = [v.label for v in variants if v.label not in (FULL, POSITION_ONLY)]
    log(f"permutation importance of {', '.join(chosen)} ({permutation_repeats} repeat(s) per fold)")
    permutation = permutation_importance(conn, market, window, spec, config, features, chosen, workdir=workdir,
                                         report=full, block=permutation_block, repeats=permutation_repeats,
                                         seed=permutation_seed, starting_balance=starting_balance)
    full_sharpe, full_return = _mean_metric(full, "sharpe"), _mean_metric(full, "total_return")

    def row(variant: Variant) -> dict:
        report = reports[variant.label]
        sharpe, total = _mean_metric(report, "sharpe"), _mean_metric(report, "total_return")
        perm = permutation["groups"].get(variant.label, {})
        return {
            "group": variant.label, "features": list(variant.removed), "model_spec": variant.spec.name,
            "model_spec_hash": variant.spec.spec_hash, "report_id": report.id, "status": report.status,
            "sharpe": sharpe, "total_return": total, "trades": _trades(report),
            "delta_sharpe": 0.0 if variant.label == FULL else sharpe - full_sharpe,
            "delta_return": 0.0 if variant.label == FULL else total - full_return,
            "permutation_delta": perm.get("permutation_delta"),
            "permutation_delta_return": perm.get("permutation_delta_return"),
            "p_value": None if variant.label == FULL else _paired_p_value(conn, full, report),
        }

    rows = {v.label: row(v) for v in variants}
    group_rows = [rows[g] for g in chosen]
    by_ablation = _ranks({r["group"]: r["delta_sharpe"] for r in group_rows})
    by_permutation = _ranks({r["group"]: r["permutation_delta"] for r in group_rows})
    for r in group_rows:
        r["rank_ablation"], r["rank_permutation"] = by_ablation[r["group"]], by_permutation[r["group"]]
    n_trials = market_trials(conn, market).n_trials
    return json_safe({
        "market": market.key, "window": window.key, "feature_set": features.name,
        "fingerprint": features.fingerprint, "grouping_digest": features.grouping_digest,
        "model_spec": spec.name, "model_spec_hash": spec.spec_hash, "dataset_hash": data.dataset.dataset_hash,
        "fold_config": config.model_dump(mode="json"),
        "full": rows[FULL], "position_only": rows[POSITION_ONLY], "groups": group_rows,
        "permutation": {"block": permutation_block, "repeats": permutation_repeats, "seed": permutation_seed,
                        "block_default": "n^(1/3) bars of each test range" if permutation_block is None else None},
        "n_trials": n_trials, "trials_added": n_trials - trials_before,
    })


def ablation_json(result: dict) -> dict:
    """The CLI's `--json` shape: market, window, feature set, one entry per group, the trial count."""
    keys = ("group", "features", "delta_sharpe", "delta_return", "permutation_delta", "p_value")
    return {"market": result["market"], "window": result["window"], "feature_set": result["feature_set"],
            "groups": [{k: g[k] for k in keys} for g in result["groups"]], "n_trials": result["n_trials"]}


def _number(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def ablation_table(result: dict) -> list[list[str]]:
    """Rows under `ABLATION_HEADERS`: the full spec, each group removed, the position-only baseline."""
    rows = []
    for r in [result["full"], *result["groups"], result["position_only"]]:
        label = {FULL: "full set", POSITION_ONLY: "position only"}.get(r["group"], f"- {r['group']}")
        shown = "all" if r["group"] == FULL else ("none" if r["group"] == POSITION_ONLY else ", ".join(r["features"]))
        rows.append([label, shown, _number(r["delta_sharpe"]), _number(r["delta_return"], 4),
                     _number(r["permutation_delta"]), _number(r["p_value"]), str(r["trades"]),
                     _number(r["sharpe"]), _number(r["total_return"], 4)])
    return rows


def ablation_png(result: dict) -> bytes:
    """Horizontal bars per group: Δ Sharpe when removed (retrained) and when permuted (not retrained)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rl_lifecycle.plots import PLOT_DPI, PLOT_WIDTH_IN

    rows = [*result["groups"], result["position_only"]]
    labels = [r["group"].replace("_", " ") for r in rows]
    removed = [np.nan if r["delta_sharpe"] is None else r["delta_sharpe"] for r in rows]
    permuted = [np.nan if r["permutation_delta"] is None else r["permutation_delta"] for r in rows]
    y = np.arange(len(rows))
    fig = Figure(figsize=(PLOT_WIDTH_IN, max(3.0, 0.55 * len(rows) + 1.5)), dpi=PLOT_DPI)
    fig.subplots_adjust(left=0.16, right=0.98, top=0.88, bottom=0.14)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(y - 0.2, removed, height=0.4, label="removed, retrained (Δ Sharpe vs full set)")
    ax.barh(y + 0.2, permuted, height=0.4, label="permuted on the test bars (Δ Sharpe, no retraining)")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=10)
    ax.invert_yaxis()
    ax.set_xlabel("Δ annualised Sharpe, variant - full set (negative: the group helps)", fontsize=10)
    ax.set_title(f"{result['market']} {result['window']}: what the {result['feature_set']} feature groups are worth "
                 f"(full set Sharpe {_number(result['full']['sharpe'], 2)})", fontsize=12)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=9, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def log_ablation(registry, run_id: str, result: dict, png: bytes) -> None:
    """The ablation on a model's MLflow run: `ablation/feature_ablation.json`, `plots/feature_ablation.png`
    and per group `ablation/<group>_delta_sharpe`, `_delta_return`, `_permutation_delta` metrics."""
    import tempfile
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for row in [*result["groups"], result["position_only"]]:
        for key in ("delta_sharpe", "delta_return", "permutation_delta", "p_value"):
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                metrics.append(Metric(f"ablation/{row['group']}_{key}", float(value), now, 0))
    if metrics:
        registry.client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="rl-ablation-") as tmp:
        root = Path(tmp)
        (root / "ablation").mkdir()
        (root / "ablation" / "feature_ablation.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        (root / "plots").mkdir()
        (root / "plots" / "feature_ablation.png").write_bytes(png)
        for sub in ("ablation", "plots"):
            registry.log_artifacts(run_id, root / sub, sub)
