"""The data commands: `ingest` candles, `materialize` assets, `check` them, `backfill` a range for the daemon;
`candles export` writes stored candles back out as an ingestable CSV.

Top-level commands (and the `candles` sub-app), registered on the root app by `rl_lifecycle.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_lifecycle.cli.common import (
    CALENDAR_HELP,
    PartitionOption,
    RangeMarketOption,
    SpanWindowsOption,
    WindowsOption,
    dataset_span_config,
    exit_on_failure,
    partition_keys,
)
from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings


def ingest(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    synthetic: Annotated[bool, typer.Option("--synthetic", help="generate deterministic synthetic candles (into a "
                                                             "synthetic market: registered with --seed on first use)")] = False,
    start: Annotated[str | None, typer.Option(help="with --synthetic: first bar (ISO date)")] = None,
    end: Annotated[str | None, typer.Option(help="with --synthetic: end, exclusive (ISO date)")] = None,
    seed: Annotated[int, typer.Option(help="with --synthetic: generator seed")] = 7,
    csv: Annotated[Path | None, typer.Option(help="CSV file (Binance klines or generic OHLCV)")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Parquet file with OHLCV columns")] = None,
    ts_column: Annotated[str | None, typer.Option(help="name of the time column, when detection is ambiguous")] = None,
    ts_format: Annotated[str | None, typer.Option(help="strptime format, or epoch_s/epoch_ms/epoch_us/epoch_ns")] = None,
    ts_timezone: Annotated[str | None, typer.Option(
        help="IANA zone of date-times written without an offset, e.g. America/New_York [default: UTC]")] = None,
    quarantine: Annotated[bool, typer.Option("--quarantine", help="store good rows; bad rows go to candles_quarantine")] = False,
    calendar: Annotated[str | None, typer.Option(help="for a market not registered yet: " + CALENDAR_HELP + " [default: crypto]")] = None,
) -> None:
    """Load candles into `market_candles` (idempotent; a file with bad rows is refused whole)."""
    from rl_lifecycle.orchestration.instance import register_market
    from rl_lifecycle.orchestration.partitions import first_window

    parsed = Market.parse(market)
    sources = [s for s in (synthetic, csv is not None, parquet is not None) if s]
    if len(sources) != 1:
        raise UserInputError("give exactly one source: --synthetic, --csv FILE or --parquet FILE")
    settings = load_settings()
    if synthetic:
        from rl_lifecycle.candles.service import ingest_synthetic_market
        from rl_lifecycle.candles.store import stored_before
        from rl_lifecycle.windows import to_us

        if not start or not end:
            raise UserInputError("--synthetic needs --start and --end (ISO dates)")
        start_us, end_us = to_us(start), to_us(end)
        if end_us <= start_us:
            raise UserInputError(f"--end {end} must be after --start {start}")
        first = first_window()
        url = open_database(settings)
        with connect(url) as conn:
            stats = ingest_synthetic_market(conn, parsed, start_us, end_us, seed, calendar=calendar)
            candles_before, first_ts = stored_before(conn, parsed, first.start) if start_us < first.start else (0, None)
        register_market(url, settings, parsed, "synthetic", seed, calendar=calendar)
        typer.echo(f"{parsed.key}: inserted {stats.inserted}, updated {stats.updated}, unchanged {stats.unchanged}")
        _echo_early_history(parsed, first_ts, candles_before, settings)
        return
    from rl_lifecycle.candles.service import ingest_file

    path = csv or parquet
    if not path.exists():
        raise UserInputError(f"file {path} does not exist")
    if ts_timezone is not None:
        from rl_lifecycle.candles.importer import check_timezone

        ts_timezone = check_timezone(ts_timezone)
    url = open_database(settings)
    with connect(url) as conn:
        result = ingest_file(
            conn, parsed, path, ts_column=ts_column, ts_format=ts_format, ts_timezone=ts_timezone,
            quarantine=quarantine, calendar=calendar,
            first_window=first_window(),
        )
    report = result.report
    if result.refused:
        typer.echo(f"refused {path}: nothing was written.\n{report.describe()}", err=True)
        typer.echo("fix the rows above, or rerun with --quarantine to store the good rows and set the bad ones aside.", err=True)
        raise typer.Exit(2)
    register_market(url, settings, parsed)
    stats = result.stats
    typer.echo(
        f"{parsed.key}: read {result.rows_read} rows; inserted {stats.inserted}, updated {stats.updated}, "
        f"unchanged {stats.unchanged}; quarantined {result.quarantined}"
    )
    if not report.ok or report.gaps:
        typer.echo(report.describe())
    if result.before_first_window:
        _echo_early_history(parsed, result.first_ts, result.before_first_window, settings)


def _echo_early_history(market: Market, first_ts: int | None, candles_before: int, settings) -> None:
    """On stderr: candles stored before the first window partition, and the RL_WINDOW_START that would use them."""
    from rl_lifecycle.candles.service import history_before_first_window
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME, first_window

    if candles_before and first_ts is not None:
        typer.echo(history_before_first_window(
            market, first_ts, candles_before, first_window(), WINDOW_SCHEME, settings.window_start), err=True)


def materialize(
    assets: Annotated[list[str], typer.Argument(help="asset keys, e.g. candles feature_snapshots")],
    partition: PartitionOption = None,
    market: RangeMarketOption = None,
    windows: WindowsOption = None,
    span_windows: SpanWindowsOption = None,
) -> None:
    """Materialize assets (with their blocking checks) on the PostgreSQL-backed Dagster instance."""
    keys = partition_keys(partition, market, windows)  # bad input is refused before the code location loads
    if span_windows is not None and "training_dataset" not in assets:
        raise UserInputError(f"--span-windows {span_windows} sets the span of `training_dataset`, which is not among "
                             f"the assets ({' '.join(assets)}); add it, or leave --span-windows out")
    ops = dataset_span_config(span_windows)
    from rl_lifecycle.cli.runs import materialize_with_progress

    settings = load_settings()
    exit_on_failure(materialize_with_progress(settings, open_database(settings), assets, keys,
                                              run_config={"ops": ops} if ops else None), "succeeded")


def check(
    checks: Annotated[list[str], typer.Argument(help="check names, e.g. features_deterministic dataset_reproducible")],
    partition: PartitionOption = None,
    market: RangeMarketOption = None,
    windows: WindowsOption = None,
) -> None:
    """Evaluate asset checks on their own against what is stored (like the UI's "Execute check"); exit 1 if one fails."""
    keys = partition_keys(partition, market, windows)  # bad input is refused before the code location loads
    from rl_lifecycle.cli.runs import check_with_progress

    settings = load_settings()
    exit_on_failure(check_with_progress(settings, open_database(settings), checks, keys), "passed")


def backfill(
    assets: Annotated[list[str], typer.Argument(help="asset keys, e.g. feature_snapshots training_dataset")],
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    windows: Annotated[str, typer.Option(help="FIRST..LAST window keys, e.g. 2024-01-01..2024-06-01")],
) -> None:
    """Submit a Dagster backfill of ASSETS over a market's windows; the daemon (`make dev`) runs it."""
    from rl_lifecycle.markets.table import list_markets
    from rl_lifecycle.orchestration.backfills import submit_backfill
    from rl_lifecycle.orchestration.definitions import defs
    from rl_lifecycle.orchestration.instance import get_instance
    from rl_lifecycle.orchestration.launcher import asset_selection
    from rl_lifecycle.orchestration.partitions import sync_market_partitions

    selection = asset_selection(defs, assets)  # refuse unknown assets before touching anything
    keys = partition_keys(None, market, windows)
    settings = load_settings()
    url = open_database(settings)
    with connect(url) as conn:
        registered = sorted(r.market.key for r in list_markets(conn))
    if Market.parse(market).key not in registered:
        raise UserInputError(f"market {Market.parse(market).key} is not registered; add it with `rl-lifecycle market add`")
    instance = get_instance(settings, url)
    sync_market_partitions(instance, registered)
    submitted = submit_backfill(instance, defs, selection, keys)
    typer.echo(f"backfill {submitted.backfill_id}: {', '.join(submitted.asset_names)} over "
               f"{len(submitted.partition_keys)} window(s) of {Market.parse(market).key} ({windows})")
    typer.echo(f"UI: {submitted.url}")
    typer.echo("the Dagster daemon runs it: start it with `make dev` if it is not running")


candles_app = typer.Typer(no_args_is_help=True, help="A market's stored candles.")


@candles_app.command("export")
def candles_export(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    from_: Annotated[str, typer.Option("--from", help="first bar (ISO date or date-time, UTC)")],
    to: Annotated[str, typer.Option("--to", help="end, exclusive (ISO date or date-time, UTC)")],
    csv: Annotated[Path, typer.Option(help="CSV file to write (replaced atomically)")],
) -> None:
    """Write a market's stored candles in [--from, --to) as a CSV that `rl-lifecycle ingest` (and the inbox) reads
    back exactly: `timestamp,open,high,low,close,volume`, ISO UTC times, round-trip decimals."""
    from rl_lifecycle.candles.export import export_candles
    from rl_lifecycle.markets.table import get_market
    from rl_lifecycle.windows import iso, to_us

    parsed = Market.parse(market)
    try:
        start_us = to_us(from_)
    except UserInputError:
        raise UserInputError(f"--from {from_!r} is not an ISO date or date-time") from None
    try:
        end_us = to_us(to)
    except UserInputError:
        raise UserInputError(f"--to {to!r} is not an ISO date or date-time") from None
    if end_us <= start_us:
        raise UserInputError(f"--to {to} must be after --from {from_}")
    if csv.is_dir() or not csv.parent.is_dir():
        raise UserInputError(f"--csv {str(csv)!r} is invalid: give a file in an existing directory")
    settings = load_settings()
    with connect(open_database(settings)) as conn:
        get_market(conn, parsed)  # refuses an unregistered market
        written = export_candles(conn, parsed, start_us, end_us, csv)
    if not written:
        raise UserInputError(f"no candles of {parsed.key} are stored in [{iso(start_us)}, {iso(end_us)}); "
                             f"nothing was written to {csv}")
    typer.echo(f"{parsed.key}: wrote {written} candles in [{iso(start_us)}, {iso(end_us)}) to {csv}")
