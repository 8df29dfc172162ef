"""`fold_report`: walk-forward NautilusTrader evaluation of the challenger's spec (and the champion's, paired).

The services (torch, SB3, Nautilus) are imported where used: every run process loads this code
location, most of them only for the data assets.
"""

from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from rl_lifecycle.assets.presentation import markdown_table, png_markdown
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.partitions import ONE_WINDOW_PER_RUN, market_window_partitions, parse_partition_key
from rl_lifecycle.promotion.audit import current_champion
from rl_lifecycle.resources import MlflowResource, PostgresResource
from rl_lifecycle.settings import load_settings


class FoldReportConfig(Config):
    folds: int = Field(default=3, ge=1, le=100, description="number of walk-forward folds")
    scheme: str = Field(default="expanding", description="expanding, or rolling (with train_size)")
    train_size: int | None = Field(default=None, description="rows per training window (rolling only)")
    test_size: int | None = Field(default=None, description="rows per test range; None: the largest that fits")
    purge: int | None = Field(default=None, description="bars purged before each test range; None: the label horizon")
    embargo: int = Field(default=0, ge=0, description="bars embargoed after each test range")
    workers: int = Field(default=2, ge=1, le=64, description="fold backtests running at once (one process each)")
    starting_balance: float = Field(default=100_000.0, gt=0, description="account balance per fold, quote currency")
    fold_timeout_s: float | None = Field(default=3600.0, gt=0, description="a fold backtest running longer fails")


def fold_config(config: FoldReportConfig, label_horizon: int) -> FoldConfig:
    return FoldConfig.create(
        n_folds=config.folds, scheme=config.scheme, train_size=config.train_size, test_size=config.test_size,
        purge_bars=label_horizon if config.purge is None else config.purge, embargo_bars=config.embargo,
    )


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=ONE_WINDOW_PER_RUN,
    deps=["challenger_model"],
    group_name="evaluation",
    kinds={"nautilustrader", "postgres"},
    description="Walk-forward folds (purged, embargoed) of the partition's dataset: a fresh model of the challenger's "
    "spec per fold, backtested in NautilusTrader; the champion's spec on the same folds when there is one.",
)
def fold_report(
    context: AssetExecutionContext, config: FoldReportConfig, database: PostgresResource, mlflow: MlflowResource
) -> MaterializeResult:
    from rl_lifecycle.evaluation.service import (
        FOLD_TABLE_HEADERS,
        equity_curves_png,
        evaluate_spec,
        fold_table,
    )
    from rl_lifecycle.models.service import partition_version, registered_spec, training_data

    market, window = parse_partition_key(context.partition_key)
    settings = load_settings()
    registry = mlflow.registry()
    challenger = partition_version(registry, market, window)
    if challenger is None:
        raise Failure(description=f"no challenger trained for {market.key}|{window.key}: materialize challenger_model first")
    contenders = {"challenger": registered_spec(registry, challenger)}
    with database.connect() as conn:
        champion_version = current_champion(conn, market.key)  # the audit decides who is champion
        champion = None if champion_version is None else registry.version(market, champion_version)
        if champion is not None and champion.version != challenger.version:
            contenders["champion"] = registered_spec(registry, champion)
        try:
            data = training_data(conn, market, window)
            folds = fold_config(config, data.dataset.spec.forward_return_horizon)
            reports = {
                role: evaluate_spec(conn, market, window, spec, folds, workdir=settings.home / "evaluations",
                                    workers=config.workers, strict=settings.strict_backtest,
                                    starting_balance=config.starting_balance, fold_timeout_s=config.fold_timeout_s,
                                    log=context.log.info)
                for role, spec in contenders.items()
            }
        except UserInputError as exc:
            raise Failure(description=str(exc)) from exc
    report = reports["challenger"]
    aggregates = report.aggregates
    run_id = challenger.run_id
    registry.client.log_batch(run_id, metrics=_aggregate_metrics(aggregates))
    table = fold_table(report)
    metadata = {
        "report_id": report.id,
        "status": report.status,
        "strict": report.strict,
        "model_version": challenger.version,
        "dataset_hash": report.dataset_hash,
        "fold_config": MetadataValue.json(report.fold_config.model_dump(mode="json")),
        "fold_table": markdown_table(FOLD_TABLE_HEADERS, table),
        "aggregates": MetadataValue.json({k: v for k, v in aggregates.items() if not isinstance(v, dict)}),
        "psr": aggregates.get("psr"),
        "dsr": aggregates.get("dsr"),
        "missing_folds": str(aggregates.get("missing_folds", [])),
    }
    if (png := equity_curves_png(report)) is not None:
        metadata["equity_curves"] = png_markdown(png, "equity per fold vs buy-and-hold and flat")
        _log_artifact(registry, run_id, png)
    if "champion" in reports:
        metadata["champion_report_id"] = reports["champion"].id
        metadata["champion_version"] = champion.version
    for fold in report.folds:
        if fold.status != "ok":
            context.log.error(f"fold {fold.index} failed: {fold.error}")
    return MaterializeResult(metadata=metadata)


def _aggregate_metrics(aggregates: dict) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    flat = {}
    for key, value in aggregates.items():
        if isinstance(value, dict):
            flat.update({f"walkforward/{key}_{k}": v for k, v in value.items()})
        else:
            flat[f"walkforward/{key}"] = value
    return [Metric(k, float(v), now, 0) for k, v in flat.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v]


def _log_artifact(registry, run_id: str, png: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "walkforward_equity.png"
        path.write_bytes(png)
        registry.client.log_artifact(run_id, str(path), "plots")


def _challenger_report(conn, registry, market, window):
    from rl_lifecycle.evaluation.service import partition_report
    from rl_lifecycle.models.service import partition_version, registered_spec, training_data

    challenger = partition_version(registry, market, window)
    if challenger is None:
        return None, None
    data = training_data(conn, market, window)
    report = partition_report(conn, market, registered_spec(registry, challenger).spec_hash, data.dataset.dataset_hash)
    return report, data


@asset_check(asset=fold_report, blocking=True, partitions_def=market_window_partitions,
             description="Re-derive the folds from the stored ranges; verify purge, embargo and disjointness against "
             "the label horizon.")
def folds_leak_free(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    from rl_lifecycle.evaluation.service import check_leak_free

    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        report, data = _challenger_report(conn, mlflow.registry(), market, window)
        if report is None:
            return AssetCheckResult(passed=False, description=f"no evaluation stored for {market.key}|{window.key}")
        problems = check_leak_free(report, len(data.content))
    if problems:
        return AssetCheckResult(passed=False, description=f"{len(problems)} leak(s): {problems[0]}",
                                metadata={"problems": MetadataValue.json(problems)})
    return AssetCheckResult(passed=True, description=f"{len(report.folds)} folds: purge {report.fold_config.purge_bars} "
                            f">= label horizon {report.label_horizon}, embargo {report.fold_config.embargo_bars}, disjoint")


@asset_check(asset=fold_report, blocking=True, partitions_def=market_window_partitions,
             description="Strict mode (RL_STRICT_BACKTEST): every fold backtest completed.")
def folds_complete(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        report, _ = _challenger_report(conn, mlflow.registry(), market, window)
    if report is None:
        return AssetCheckResult(passed=False, description=f"no evaluation stored for {market.key}|{window.key}")
    failed = [f for f in report.folds if f.status != "ok"]
    if not failed:
        return AssetCheckResult(passed=True, description=f"all {len(report.folds)} folds completed")
    summary = f"{len(failed)} of {len(report.folds)} folds failed: " + "; ".join(
        f"fold {f.index}: {(f.error or '').strip().splitlines()[-1] if f.error else '?'}" for f in failed[:3])
    return AssetCheckResult(passed=not report.strict, description=summary + ("" if report.strict else " (non-strict: aggregated without them)"),
                            metadata={"errors": MetadataValue.json([{"fold": f.index, "error": f.error} for f in failed])})


EVALUATION_CHECKS = [folds_leak_free, folds_complete]
