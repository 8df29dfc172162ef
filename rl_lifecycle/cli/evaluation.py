"""The evaluation commands: `evaluate` a challenger walk-forward, `report show` a stored report.

`evaluate` is a top-level command registered by `rl_lifecycle.cli.main`; `report_app` is its sub-app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lifecycle.cli.common import (
    SpanWindowsOption,
    check_range,
    check_windows_exist,
    dataset_span_config,
    print_table,
    say_dataset_built_first,
    span_to_build,
)
from rl_lifecycle.config_files import validated
from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import Window

report_app = typer.Typer(no_args_is_help=True, help="Walk-forward evaluation reports.")


def evaluate(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    window: Annotated[str, typer.Option(help="window key: evaluates that partition's challenger on its dataset")],
    folds: Annotated[int, typer.Option(help="walk-forward folds (not with --scheme cpcv: C(groups, test-groups) splits)")] = 3,
    scheme: Annotated[str, typer.Option(help="expanding, rolling (with --train-size) or cpcv (with --groups and "
                                        "--test-groups): combinatorial purged CV")] = "expanding",
    groups: Annotated[int | None, typer.Option(help="cpcv: contiguous groups N")] = None,
    test_groups: Annotated[int | None, typer.Option(help="cpcv: groups each split tests, k < N")] = None,
    train_size: Annotated[int | None, typer.Option(help="rolling: rows per training window")] = None,
    purge: Annotated[int | None, typer.Option(help="bars purged before each test range (default: the label horizon)")] = None,
    embargo: Annotated[int, typer.Option(help="bars embargoed after each test range")] = 0,
    test_size: Annotated[int | None, typer.Option(help="rows per test range (default: the largest that fits)")] = None,
    workers: Annotated[int, typer.Option(help="fold steps at once (train + backtest), one process each")] = 2,
    span_windows: SpanWindowsOption = None,
) -> None:
    """Walk-forward or CPCV NautilusTrader evaluation (materializes `fold_report` with its checks). With
    --span-windows N the run builds (or reuses) the N-window `training_dataset` first and evaluates on it; a partition
    without a dataset gets one first too, over the market's span."""
    from rl_lifecycle.evaluation.folds import MAX_FOLDS
    from rl_lifecycle.orchestration.assets.evaluation import FoldReportConfig, fold_config
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME

    parsed_market, parsed_window = Market.parse(market), WINDOW_SCHEME.parse(window)
    key = partition_key(parsed_market, parsed_window)
    check_windows_exist([key])
    if scheme == "cpcv" and folds != 3:
        raise UserInputError(f"--folds {folds}: with --scheme cpcv the splits are C(--groups, --test-groups); "
                             "leave --folds out")
    check_range("--folds", folds, 1, MAX_FOLDS, "the walk-forward folds (each trains a model)")
    if workers < 1:
        raise UserInputError(f"--workers {workers} is invalid: at least 1")
    config = {"folds": folds, "scheme": scheme, "groups": groups, "test_groups": test_groups,
              "train_size": train_size, "purge": purge, "embargo": embargo, "test_size": test_size}
    # refuse bad numbers before launching anything, then what the partition's dataset cannot serve
    options = validated(FoldReportConfig, config, "evaluation options", "(command line)")
    fold_config(options, purge or 0)
    dataset_ops = dataset_span_config(span_windows)
    from rl_lifecycle.cli.runs import materialize_with_progress

    settings = load_settings()
    url = open_database(settings)
    span = span_to_build(url, parsed_market, parsed_window, span_windows)
    if span is None:
        _check_dataset_serves(url, parsed_market, parsed_window, options)
    else:
        _check_span_serves(url, parsed_market, parsed_window, span, options,
                           "--span-windows" if span_windows is not None else "the market's span")
        say_dataset_built_first(key, span, span_windows)
        # the dataset's run first (its job takes no `max_concurrent`); no report when it fails
        (built,) = materialize_with_progress(settings, url, ["training_dataset"], [key], run_config={"ops": dataset_ops})
        if not built.ok:
            raise typer.Exit(1)
    (result,) = materialize_with_progress(settings, url, ["fold_report"], [key],
                                          run_config={"ops": {"fold_report": {"config": config}},
                                                      "execution": {"config": {"max_concurrent": workers}}})
    if result.metadata.get("fold_report"):
        _print_report(_report(parsed_market, result.metadata["fold_report"]["report_id"]))
    if not result.ok:
        raise typer.Exit(1)


def _check_dataset_serves(url: str, market: Market, window: Window, options) -> None:
    """Refuse, before a run is launched, folds the partition's stored dataset cannot serve: none stored,
    a purge below its label horizon, or more folds (or a larger test size) than its rows hold. The run
    checks again, with the contenders' episode lengths."""
    from rl_lifecycle.datasets.service import latest_version
    from rl_lifecycle.evaluation.folds import make_folds
    from rl_lifecycle.orchestration.assets.evaluation import fold_config

    key = partition_key(market, window)
    with connect(url) as conn:
        dataset = latest_version(conn, market, window)
    if dataset is None:
        raise UserInputError(f"no training dataset for {key}: materialize `training_dataset` for it first; nothing was run")
    horizon, what = dataset.spec.forward_return_horizon, f"{key}'s dataset {dataset.dataset_hash[:12]}"
    if options.purge is not None and options.purge < horizon:
        raise UserInputError(
            f"--purge {options.purge} is below the label horizon of {what} ({horizon} bars): training labels would "
            f"look into the test range; use --purge {horizon} or more, or leave it out; nothing was run")
    if options.test_size is not None and options.test_size >= dataset.rows:
        raise UserInputError(f"--test-size {options.test_size} is invalid: {what} has {dataset.rows} rows, which "
                             "must hold the training rows and every test range; nothing was run")
    try:
        make_folds(dataset.rows, fold_config(options, horizon), horizon)
    except UserInputError as exc:
        spec = dataset.spec
        raise UserInputError(
            f"{what} ({dataset.rows} rows over {len(spec.windows())} window(s), {spec.first_window} .. "
            f"{spec.last_window}): {exc}; a longer span holds more bars: --span-windows N (or "
            f"`rl-lifecycle market set-span-windows {market.key} N`); nothing was run") from None


def _check_span_serves(url: str, market: Market, window: Window, span_windows: int, options,
                       source: str = "--span-windows") -> None:
    """Refuse, before a run is launched, a span (`source`: the option or the market's default) whose stored bars
    cannot hold the folds (the dataset's rows are at most the span's stored bars: its warm rows), saying how
    many bars the span holds."""
    from rl_lifecycle.datasets.service import span_bars
    from rl_lifecycle.evaluation.folds import make_folds
    from rl_lifecycle.orchestration.assets.datasets import TrainingDatasetConfig
    from rl_lifecycle.orchestration.assets.evaluation import fold_config
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME

    horizon = TrainingDatasetConfig().forward_return_horizon  # the dataset the run builds: the default labels
    if options.purge is not None and options.purge < horizon:
        raise UserInputError(f"--purge {options.purge} is below the label horizon ({horizon} bars); nothing was run")
    with connect(url) as conn:
        span = span_bars(conn, market, window, WINDOW_SCHEME, span_windows)
    try:
        make_folds(span.stored, fold_config(options, horizon), horizon)
    except UserInputError as exc:
        raise UserInputError(f"{source} {span_windows}: {span.describe(market)}, too few for these folds: "
                             f"{exc}; materialize the span's candles and feature snapshots, or use a longer "
                             f"--span-windows; nothing was run") from None


@report_app.command("show")
def report_show(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    report_id: Annotated[int | None, typer.Option("--id", help="report id (default: the market's latest)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
) -> None:
    """An evaluation report: the fold table, or the whole report as JSON."""
    import json

    from rl_lifecycle.evaluation.service import report_json

    report = _report(Market.parse(market), report_id)
    if as_json:
        typer.echo(json.dumps(report_json(report), indent=2))
    else:
        _print_report(report)


def _report(market: Market, report_id: int | None):
    """Report `report_id`, or the market's latest; refused when there is none for this market."""
    from rl_lifecycle.evaluation.store import latest_report, read_report

    with connect(open_database(load_settings())) as conn:
        report = read_report(conn, report_id) if report_id is not None else latest_report(conn, market)
    if report is None or report.market != market.key:
        raise UserInputError(f"no evaluation report {'#' + str(report_id) + ' ' if report_id else ''}for {market.key}")
    return report


def _print_report(report) -> None:
    from rl_lifecycle.evaluation.service import FOLD_TABLE_HEADERS, fold_table

    agg = report.aggregates
    bars = agg.get("bars_per_year")
    typer.echo(f"report {report.id} {report.market} spec {report.spec.get('name')} ({report.model_spec_hash[:12]}) "
               f"dataset {report.dataset_hash[:12]}: {report.status}; purge {report.fold_config.purge_bars}, "
               f"embargo {report.fold_config.embargo_bars}, label horizon {report.label_horizon}"
               + (f"; annualised by {bars:g} bars a year ({agg.get('calendar')})" if bars else "")
               + (f"; filled at {agg['fill']}" if agg.get("fill") else ""))
    print_table(FOLD_TABLE_HEADERS, fold_table(report))
    shown = {k: agg.get(k) for k in ("psr", "dsr", "pbo", "positive_share", "worst_fold") if k in agg}
    typer.echo("  aggregates: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    if paths := agg.get("paths"):
        sharpe = paths.get("sharpe") or {}

        def number(value) -> str:
            return "-" if value is None else f"{value:.2f}"

        typer.echo(f"  cpcv: {paths.get('count')} paths ({paths.get('complete')} complete); path Sharpe median "
                   f"{number(sharpe.get('median'))}, worst {number(sharpe.get('worst'))}")
