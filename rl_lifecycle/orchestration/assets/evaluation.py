"""`fold_report`: walk-forward NautilusTrader evaluation of the challenger's spec (and the champion's, paired).

The services (torch, SB3, Nautilus) are imported where used: every run process loads this code
location, most of them only for the data assets.
"""

from dataclasses import dataclass

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetIn,
    Config,
    ConfigMapping,
    DynamicOut,
    DynamicOutput,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Output,
    asset_check,
    graph_asset,
    op,
)
from pydantic import Field

from rl_lifecycle.evaluation.folds import MAX_FOLDS, FoldConfig
from rl_lifecycle.orchestration.assets.presentation import markdown_table, png_markdown, rounded
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import (
    ONE_WINDOW_PER_RUN,
    market_window_partitions,
    parse_partition_key,
)
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.switches import settings_in_force


class FoldReportConfig(Config):
    folds: int = Field(default=3, ge=1, le=MAX_FOLDS, description="number of walk-forward folds (cpcv: ignored)")
    scheme: str = Field(default="expanding", description="expanding, rolling (with train_size), or cpcv (with "
                        "groups and test_groups)")
    groups: int | None = Field(default=None, description="cpcv only: contiguous groups N")
    test_groups: int | None = Field(default=None, description="cpcv only: groups each split tests, k < N")
    train_size: int | None = Field(default=None, description="rows per training window (rolling only)")
    test_size: int | None = Field(default=None, description="rows per test range; None: the largest that fits")
    purge: int | None = Field(default=None, description="bars purged before each test range; None: the label horizon")
    embargo: int = Field(default=0, ge=0, description="bars embargoed after each test range")
    starting_balance: float = Field(default=100_000.0, gt=0, description="account balance per fold, quote currency")
    fold_timeout_s: float | None = Field(default=3600.0, gt=0, description="a fold backtest running longer fails")


def fold_config(config: FoldReportConfig, label_horizon: int) -> FoldConfig:
    layout = ({"n_groups": config.groups, "n_test_groups": config.test_groups} if config.scheme == "cpcv"
              else {"n_folds": config.folds, "n_groups": config.groups, "n_test_groups": config.test_groups})
    return FoldConfig.create(
        **{k: v for k, v in layout.items() if v is not None}, scheme=config.scheme, train_size=config.train_size,
        test_size=config.test_size, purge_bars=label_horizon if config.purge is None else config.purge,
        embargo_bars=config.embargo,
    )


@dataclass(frozen=True)
class FoldTask:
    """One fold of one contender's evaluation: what a `run_fold` step gets (pickled by Dagster)."""

    role: str  # challenger | champion
    version: int
    plan: object  # evaluation.service.EvaluationPlan
    fold_index: int


@op(ins={"trained": In(Nothing)}, out=DynamicOut(FoldTask),
    description="The folds of the partition's dataset for the challenger's spec and the champion's (same folds).")
def plan_folds(context: OpExecutionContext, config: FoldReportConfig, database: PostgresResource,
               mlflow: MlflowResource):
    from rl_lifecycle.evaluation.service import contenders_fold_config, plan_evaluation
    from rl_lifecycle.models.service import registered_spec, training_data
    from rl_lifecycle.promotion.service import contenders

    market, window = parse_partition_key(context.partition_key)
    registry = mlflow.registry()
    with user_errors_fail_the_step(), database.connect() as conn:
        horizon = training_data(conn, market, window).dataset.spec.forward_return_horizon
        specs = {role: (version, registered_spec(registry, version))
                 for role, version in contenders(conn, registry, market, window).items()}
        folds = contenders_fold_config(fold_config(config, horizon), [spec for _, spec in specs.values()])
        for role, (version, spec) in specs.items():
            plan = plan_evaluation(conn, market, window, spec, folds,
                                   workdir=load_settings().home / "evaluations",
                                   starting_balance=config.starting_balance, fold_timeout_s=config.fold_timeout_s)
            context.log.info(f"{role} v{version.version} ({plan.spec.name}): {len(plan.folds)} folds")
            for fold in plan.folds:
                yield DynamicOutput(FoldTask(role, version.version, plan, fold.index), mapping_key=f"{role}_{fold.index}")


@op(description="Train the fold's fresh model on its train rows and backtest its test range (a CPCV split: each "
    "tested group) in NautilusTrader, a process each. A failing fold is a result, not an error: the other folds go on.")
def run_fold(context: OpExecutionContext, task: FoldTask, database: PostgresResource) -> tuple:
    from rl_lifecycle.evaluation.service import run_one_fold

    with database.connect() as conn:
        plan = task.plan.under(load_settings().home / "evaluations")  # this worker's disk, not the planner's
        results = run_one_fold(conn, plan, task.fold_index, log=context.log.info)
    for result in results:
        if not result.ok:
            context.log.error(f"{task.role} fold {task.fold_index} (backtest {result.fold_index}) failed: {result.error}")
    return task, results


@op(description="Metrics, baselines and aggregates per contender, stored as evaluation reports; metadata and MLflow.")
def assemble_fold_report(context: OpExecutionContext, config: FoldReportConfig, fold_results: list,
                         database: PostgresResource, mlflow: MlflowResource) -> Output:
    from rl_lifecycle.evaluation.service import (
        FOLD_TABLE_HEADERS,
        assemble_report,
        cpcv_paths_png,
        equity_curves_png,
        fold_table,
    )

    by_role: dict[str, list] = {}
    for task, results in fold_results:
        by_role.setdefault(task.role, []).extend((task, result) for result in results)
    reports, versions = {}, {}
    with database.connect() as conn:
        settings = settings_in_force(conn)  # the strict_backtest switch as stored, else RL_STRICT_BACKTEST
        for role, items in by_role.items():
            plan = items[0][0].plan
            versions[role] = items[0][0].version
            timings = {"fold_steps": len({task.fold_index for task, _ in items}),
                       "fold_s_total": round(sum(r.timings.get("total_s", 0.0) for _, r in items), 3)}
            reports[role] = assemble_report(conn, plan, [r for _, r in items], strict=settings.strict_backtest,
                                            timings=timings)
        report = reports["challenger"]
        png, paths_png = equity_curves_png(conn, report), cpcv_paths_png(conn, report)
    registry = mlflow.registry()
    run_id = registry.version(parse_partition_key(context.partition_key)[0], versions["challenger"]).run_id
    aggregates = report.aggregates
    registry.log_walkforward(run_id, aggregates, png, paths_png)
    metadata = {
        "report_id": report.id,
        "status": report.status,
        "strict": report.strict,
        "model_version": versions["challenger"],
        "dataset_hash": report.dataset_hash,
        "fold_config": MetadataValue.json(report.fold_config.model_dump(mode="json")),
        "fold_table": markdown_table(FOLD_TABLE_HEADERS, fold_table(report)),
        "aggregates": MetadataValue.json({k: v for k, v in aggregates.items() if not isinstance(v, dict)}),
        "psr": rounded(aggregates.get("psr")),  # rounded; full precision in `aggregates`
        "dsr": rounded(aggregates.get("dsr")),
        # what the DSR was deflated by when the report was assembled (a decision deflates again, by the trials then)
        "dsr_n_trials": aggregates.get("n_trials"),
        "dsr_trial_sharpe_variance": rounded(aggregates.get("trial_sharpe_variance")),
        "pbo": rounded(aggregates.get("pbo")),
        "pbo_n_trials": (aggregates.get("pbo_detail") or {}).get("n_trials"),
        "missing_folds": str(aggregates.get("missing_folds", [])),
        # the figures `rl_evaluation_folds` / `rl_evaluation_fold_failures` export, per partition in the UI
        "folds": len(report.folds),
        "failed_folds": sum(f.status != "ok" for f in report.folds),
    }
    if png is not None:
        metadata["equity_curves"] = png_markdown(png, "equity per fold vs buy-and-hold and flat")
    if report.fold_config.scheme == "cpcv":
        paths = aggregates.get("paths") or {}
        metadata["cpcv_paths"] = paths.get("count")
        metadata["cpcv_path_sharpe"] = MetadataValue.json({k: paths.get("sharpe", {}).get(k) for k in ("mean", "median", "worst")})
        if paths_png is not None:
            metadata["cpcv_paths_plot"] = png_markdown(paths_png, "equity of each CPCV backtest path")
    if "champion" in reports:
        metadata["champion_report_id"] = reports["champion"].id
        metadata["champion_version"] = versions["champion"]
    return Output(None, metadata=metadata)


def _one_config(config: FoldReportConfig) -> dict:
    """The asset's config, as `ops.fold_report.config`, handed to the ops that read it."""
    # Dagster infers the schema from the annotation but hands over the validated values as a dict
    values = {"config": config if isinstance(config, dict) else config.model_dump()}
    return {"plan_folds": values, "assemble_fold_report": values}


@graph_asset(
    partitions_def=market_window_partitions,
    backfill_policy=ONE_WINDOW_PER_RUN,
    ins={"challenger_model": AssetIn(dagster_type=Nothing)},
    config=ConfigMapping(config_fn=_one_config),
    group_name="lifecycle",
    kinds={"nautilustrader", "postgres"},
    description="Walk-forward folds (purged, embargoed) of the partition's dataset: a fresh model of the challenger's "
    "spec per fold, backtested in NautilusTrader; the champion's spec on the same folds when there is one. One "
    "Dagster step per fold (`run_fold`), spread by the job's executor.",
)
def fold_report(challenger_model):
    return assemble_fold_report(plan_folds(trained=challenger_model).map(run_fold).collect())


def _stored_challenger_report(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource):
    """(the partition challenger's stored report, its training data), or a failed check result when none is stored."""
    from rl_lifecycle.evaluation.service import challenger_report

    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        report, data = challenger_report(conn, mlflow.registry(), market, window)
    if report is None:
        return None, None, AssetCheckResult(passed=False, description=f"no evaluation stored for {context.partition_key}")
    return report, data, None


@asset_check(asset=fold_report, blocking=True, partitions_def=market_window_partitions,
             description="Re-derive the folds from the stored ranges; verify purge, embargo and disjointness against "
             "the label horizon.")
def folds_leak_free(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    from rl_lifecycle.evaluation.service import check_leak_free

    report, data, missing = _stored_challenger_report(context, database, mlflow)
    if missing is not None:
        return missing
    problems = check_leak_free(report, len(data.content))
    if problems:
        return AssetCheckResult(passed=False, description=f"{len(problems)} leak(s): {problems[0]}",
                                metadata={"problems": MetadataValue.json(problems)})
    return AssetCheckResult(passed=True, description=f"{len(report.folds)} folds: purge {report.fold_config.purge_bars} "
                            f">= label horizon {report.label_horizon}, embargo {report.fold_config.embargo_bars}, disjoint")


@asset_check(asset=fold_report, blocking=True, partitions_def=market_window_partitions,
             description="Strict mode (the strict_backtest switch): every fold backtest completed.")
def folds_complete(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    report, _, missing = _stored_challenger_report(context, database, mlflow)
    if missing is not None:
        return missing
    failed = [f for f in report.folds if f.status != "ok"]
    if not failed:
        return AssetCheckResult(passed=True, description=f"all {len(report.folds)} folds completed")
    summary = f"{len(failed)} of {len(report.folds)} folds failed: " + "; ".join(
        f"fold {f.index}: {(f.error or '').strip().splitlines()[-1] if f.error else '?'}" for f in failed[:3])
    return AssetCheckResult(passed=not report.strict, description=summary + ("" if report.strict else " (non-strict: aggregated without them)"),
                            metadata={"errors": MetadataValue.json([{"fold": f.index, "error": f.error} for f in failed])})


@asset_check(asset=fold_report, blocking=True, partitions_def=market_window_partitions,
             description="Every completed fold's NautilusTrader book equals the exact accountant's booking of the same "
             "positions (equity per bar and the account at the end, within a millionth of a quote unit).")
def backtest_parity(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    from rl_lifecycle.evaluation.service import check_backtest_parity

    report, _, missing = _stored_challenger_report(context, database, mlflow)
    if missing is not None:
        return missing
    problems = check_backtest_parity(report)
    if problems:
        return AssetCheckResult(passed=False, description=f"{len(problems)} fold(s) disagree: {problems[0]}",
                                metadata={"problems": MetadataValue.json(problems)})
    exact = all(f.baselines["accountant"].get("exact") for f in report.folds if f.status == "ok")
    return AssetCheckResult(passed=True, description=f"{len(report.folds)} folds: the accountant books what Nautilus "
                            f"booked ({'to the last bit' if exact else 'within the tolerance'})")


EVALUATION_CHECKS = [folds_leak_free, folds_complete, backtest_parity]
