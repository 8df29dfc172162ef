"""`rl-lifecycle`: the small CLI around the platform.

Exit codes: 0 success, 1 a run or a blocking check failed, 2 bad input (nothing was written).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets import Market
from rl_lifecycle.operations import connect, open_database, register_market, run_partitions
from rl_lifecycle.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
db_app = typer.Typer(no_args_is_help=True, help="The database: embedded PostgreSQL or RL_DATABASE_URL.")
market_app = typer.Typer(no_args_is_help=True, help="Markets (pair + interval), the `market` partitions.")
app.add_typer(db_app, name="db")
app.add_typer(market_app, name="market")


# -- db ---------------------------------------------------------------------------------------
@db_app.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL in the background (it keeps running) and migrate it."""
    settings = load_settings()
    if settings.database_url:
        typer.echo("RL_DATABASE_URL is set: using the external database, nothing to start.")
        return
    url = open_database(settings)
    typer.echo(f"embedded PostgreSQL running under {settings.pgdata}\nurl: {url}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    from rl_lifecycle.db import embedded

    settings = load_settings()
    stopped = embedded.stop(settings.pgdata)
    typer.echo("stopped" if stopped else f"not running ({settings.pgdata})")


@db_app.command("status")
def db_status() -> None:
    """Which database is in use and whether it is up."""
    from rl_lifecycle.db import embedded
    from rl_lifecycle.db.migrate import pending_migrations

    settings = load_settings()
    if settings.database_url:
        from rl_lifecycle.db.connection import plain_postgres_url

        url = plain_postgres_url(settings.database_url)
        typer.echo("database: external (RL_DATABASE_URL)")
    else:
        state = embedded.status(settings.pgdata)
        typer.echo(f"database: embedded PostgreSQL 16 under {settings.pgdata}")
        typer.echo(f"running: {'yes, pid ' + str(state.pid) if state.running else 'no'}")
        if not state.running:
            return
        url = embedded.url_if_running(settings.pgdata)
    with connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        timescale = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    typer.echo(f"server: PostgreSQL {version}; timescaledb: {timescale[0] if timescale else 'not installed'}")
    pending = pending_migrations(url)
    typer.echo(f"migrations pending: {', '.join(pending) if pending else 'none'}")


@db_app.command("url")
def db_url() -> None:
    """Print a URL for psql and other clients (starts the embedded server if needed)."""
    typer.echo(open_database(load_settings()))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations from sql/ (idempotent)."""
    from rl_lifecycle.db import resolve_database_url
    from rl_lifecycle.db.migrate import apply_migrations

    applied = apply_migrations(resolve_database_url(load_settings()))
    typer.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


# -- markets ------------------------------------------------------------------------------------
_CALENDAR_HELP = "trading calendar: crypto (24/7), fx (24/5, New York 17:00) or an exchange code such as XNYS"


@market_app.command("add")
def market_add(
    pair: Annotated[str, typer.Argument(help="e.g. BTC/USDT, btc-usdt, BTCUSDT")],
    interval: Annotated[str, typer.Argument(help="1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d")],
    synthetic_seed: Annotated[int | None, typer.Option(help="generate this market's candles with this seed")] = None,
    calendar: Annotated[str | None, typer.Option(help=_CALENDAR_HELP + " [default: crypto]")] = None,
) -> None:
    """Register a market and its `market` partition."""
    from rl_lifecycle.calendars import normalize_calendar_name

    market = Market.of(pair, interval)  # validate before touching anything
    if calendar is not None:
        calendar = normalize_calendar_name(calendar)
    settings = load_settings()
    source = "synthetic" if synthetic_seed is not None else "import"
    added = register_market(open_database(settings), settings, market, source, synthetic_seed, calendar=calendar)
    typer.echo(f"{'added' if added else 'already registered'}: {market.key}")


@market_app.command("set-calendar")
def market_set_calendar(
    market: Annotated[str, typer.Argument(help="market key, e.g. GOOGL-1d")],
    calendar: Annotated[str, typer.Argument(help=_CALENDAR_HELP)],
) -> None:
    """Change a market's trading calendar (stored candles are kept; gaps are counted against the new one)."""
    from rl_lifecycle.registry import get_market, set_market_calendar

    parsed = Market.parse(market)
    with connect(open_database(load_settings())) as conn:
        previous = set_market_calendar(conn, parsed, calendar)
        current = get_market(conn, parsed).calendar
    typer.echo(f"{parsed.key}: calendar {previous} -> {current}")


@market_app.command("list")
def market_list() -> None:
    """Registered markets with their candle coverage."""
    from rl_lifecycle.registry import list_markets

    with connect(open_database(load_settings())) as conn:
        records = list_markets(conn)
        coverage = {
            (p, i): (n, first, last)
            for p, i, n, first, last in conn.execute(
                "SELECT pair, interval, count(*), min(ts), max(ts) FROM market_candles GROUP BY pair, interval"
            ).fetchall()
        }
    if not records:
        typer.echo("no markets; add one with: rl-lifecycle market add BTC/USDT 1h")
        return
    typer.echo(f"{'market':<18} {'source':<10} {'calendar':<8} {'candles':>9}  first .. last")
    for r in records:
        n, first, last = coverage.get((r.market.pair, r.market.interval), (0, None, None))
        span = f"{first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}" if n else "-"
        source = r.source + (f"({r.synthetic_seed})" if r.synthetic_seed is not None else "")
        typer.echo(f"{r.market.key:<18} {source:<10} {r.calendar:<8} {n:>9}  {span}")


# -- ingest -------------------------------------------------------------------------------------
@app.command()
def ingest(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    synthetic: Annotated[bool, typer.Option("--synthetic", help="generate deterministic synthetic candles")] = False,
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
    calendar: Annotated[str | None, typer.Option(help="for a market not registered yet: " + _CALENDAR_HELP + " [default: crypto]")] = None,
) -> None:
    """Load candles into `market_candles` (idempotent; a file with bad rows is refused whole)."""
    parsed = Market.parse(market)
    sources = [s for s in (synthetic, csv is not None, parquet is not None) if s]
    if len(sources) != 1:
        raise UserInputError("give exactly one source: --synthetic, --csv FILE or --parquet FILE")
    settings = load_settings()
    if synthetic:
        from rl_lifecycle.candles.service import ingest_synthetic
        from rl_lifecycle.windows import to_us

        if not start or not end:
            raise UserInputError("--synthetic needs --start and --end (ISO dates)")
        start_us, end_us = to_us(start), to_us(end)
        if end_us <= start_us:
            raise UserInputError(f"--end {end} must be after --start {start}")
        from rl_lifecycle.candles.service import stored_before

        first_window = _first_window()
        url = open_database(settings)
        with connect(url) as conn:
            stats = ingest_synthetic(conn, parsed, start_us, end_us, seed, calendar=calendar)
            candles_before, first_ts = stored_before(conn, parsed, first_window) if start_us < first_window.start else (0, None)
        register_market(url, settings, parsed, calendar=calendar)
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
            first_window=_first_window(),
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


def _first_window():
    """The first `window` partition (from RL_WINDOW_START), as a Window."""
    from rl_lifecycle.partitions import WINDOW_SCHEME, window_partitions

    return WINDOW_SCHEME.parse(window_partitions.get_first_partition_key())


def _echo_early_history(market: Market, first_ts: int | None, candles_before: int, settings) -> None:
    from rl_lifecycle.candles.service import history_before_first_window
    from rl_lifecycle.partitions import WINDOW_SCHEME

    if candles_before and first_ts is not None:
        typer.echo(history_before_first_window(
            market, first_ts, candles_before, _first_window(), WINDOW_SCHEME, settings.window_start), err=True)


def _check_windows_exist(keys: list[str]) -> None:
    """Refuse windows outside the `window` partitions (before RL_WINDOW_START, or after the current
    window) before anything runs: Dagster would only fail the run with DagsterUnknownPartitionError."""
    from rl_lifecycle.partitions import WINDOW_SCHEME, window_partitions

    windows = sorted({key.rpartition("|")[2] for key in keys})
    first, last = window_partitions.get_first_partition_key(), window_partitions.get_last_partition_key()
    early = [w for w in windows if first is None or w < first]
    late = [w for w in windows if last is None or w > last]
    if early:
        shown = early[0] if len(early) == 1 else f"{early[0]}..{early[-1]} ({len(early)} windows)"
        raise UserInputError(
            f"window {shown} is before the first window partition {first} "
            f"(RL_WINDOW_START={load_settings().window_start}); nothing was run. To use this history, set "
            f"RL_WINDOW_START={WINDOW_SCHEME.parse(early[0]).key} (the first window of your data) wherever "
            "rl-lifecycle and `make dev` run, and restart `make dev`."
        )
    if late:
        shown = late[0] if len(late) == 1 else f"{late[0]}..{late[-1]} ({len(late)} windows)"
        raise UserInputError(
            f"window {shown} is after the current window {last}: windows exist from {first} "
            f"(RL_WINDOW_START) up to the current one; nothing was run."
        )


# -- materialize -------------------------------------------------------------------------------
# The partitions a command acts on: --partition (repeatable), or --market with --windows FIRST..LAST.
PartitionOption = Annotated[list[str] | None, typer.Option(
    help="'MARKET|WINDOW', e.g. 'BTCUSDT-1h|2024-03-01' (repeatable)")]
RangeMarketOption = Annotated[str | None, typer.Option(help="market key for a range of windows")]
WindowsOption = Annotated[str | None, typer.Option(help="FIRST..LAST window keys, e.g. 2024-01-01..2024-06-01")]


def _partition_keys(partition: list[str] | None, market: str | None, windows: str | None) -> list[str]:
    from rl_lifecycle.partitions import WINDOW_SCHEME, parse_partition_key

    keys: list[str] = []
    for key in partition or []:
        m, w = parse_partition_key(key)
        keys.append(f"{m.key}|{w.key}")
    if market or windows:
        if not (market and windows):
            raise UserInputError("--market and --windows go together, e.g. --market BTCUSDT-1h --windows 2024-01-01..2024-06-01")
        first, sep, last = windows.partition("..")
        if not sep:
            raise UserInputError(f"--windows {windows!r} is invalid; expected FIRST..LAST such as 2024-01-01..2024-06-01")
        m = Market.parse(market)
        keys += [f"{m.key}|{w.key}" for w in WINDOW_SCHEME.range(first, last)]
    if not keys:
        raise UserInputError("give --partition 'MARKET|WINDOW' or --market M --windows A..B")
    _check_windows_exist(keys)
    return keys


@app.command()
def materialize(
    assets: Annotated[list[str], typer.Argument(help="asset keys, e.g. candles feature_snapshots")],
    partition: PartitionOption = None,
    market: RangeMarketOption = None,
    windows: WindowsOption = None,
) -> None:
    """Materialize assets (with their blocking checks) on the PostgreSQL-backed Dagster instance."""
    keys = _partition_keys(partition, market, windows)
    settings = load_settings()
    _exit_on_failure(run_partitions(settings, open_database(settings), assets, keys), "succeeded")


def _exit_on_failure(runs, verb: str) -> None:
    failed = [r for r in runs if not r.ok]
    typer.echo(f"{len(runs) - len(failed)}/{len(runs)} partitions {verb}")
    if failed:
        raise typer.Exit(1)


@app.command()
def check(
    checks: Annotated[list[str], typer.Argument(help="check names, e.g. features_deterministic dataset_reproducible")],
    partition: PartitionOption = None,
    market: RangeMarketOption = None,
    windows: WindowsOption = None,
) -> None:
    """Evaluate asset checks on their own against what is stored (like the UI's "Execute check"); exit 1 if one fails."""
    from rl_lifecycle.operations import check_partitions

    keys = _partition_keys(partition, market, windows)
    settings = load_settings()
    _exit_on_failure(check_partitions(settings, open_database(settings), checks, keys), "passed")


# -- models -------------------------------------------------------------------------------------
models_app = typer.Typer(no_args_is_help=True, help="Registered policies (MLflow model `rl-<market>`).")
mlflow_app = typer.Typer(no_args_is_help=True, help="MLflow tracking and registry on the project's PostgreSQL.")
app.add_typer(models_app, name="models")
app.add_typer(mlflow_app, name="mlflow")


@app.command()
def train(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    window: Annotated[str, typer.Option(help="window key, e.g. 2024-06-01: trains on that partition's training dataset")],
    spec: Annotated[str, typer.Option(help="model spec: a name under rl_lifecycle/models/specs/ or a YAML file")] = "ppo_small",
) -> None:
    """Train a challenger (materializes `challenger_model` with its checks; the run shows in the UI)."""
    from rl_lifecycle.models.spec import load_model_spec
    from rl_lifecycle.partitions import WINDOW_SCHEME

    parsed_market, parsed_window = Market.parse(market), WINDOW_SCHEME.parse(window)
    _check_windows_exist([parsed_window.key])
    model_spec = load_model_spec(spec)  # a bad spec is refused before anything runs
    settings = load_settings()
    run_config = {"ops": {"challenger_model": {"config": {"spec": str(Path(spec).resolve()) if Path(spec).is_file() else spec}}}}
    runs = run_partitions(settings, open_database(settings), ["challenger_model"],
                          [f"{parsed_market.key}|{parsed_window.key}"], run_config=run_config)
    (result,) = runs
    trained = result.metadata.get("challenger_model", {})
    if trained:
        typer.echo(f"{parsed_market.key}: {model_spec.name} registered as version {trained['model_version']} "
                   f"(weights {str(trained['weights_hash'])[:12]}, dataset {str(trained['dataset_hash'])[:12]})")
    if not result.ok:
        raise typer.Exit(1)


@models_app.command("list")
def models_list(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, newest first")] = False,
) -> None:
    """Model versions of a market: version, aliases, weights, dataset, feature set, created."""
    import json

    from rl_lifecycle.models.tracking import open_registry

    parsed = Market.parse(market)
    versions = [v.summary() for v in open_registry(open_database(load_settings())).versions(parsed)]
    if as_json:
        typer.echo(json.dumps(versions, indent=2))
        return
    if not versions:
        typer.echo(f"{parsed.key} has no model versions; train one with `rl-lifecycle train --market {parsed.key} --window W`")
        return
    typer.echo(f"{'version':>7}  {'aliases':<20} {'weights':<12} {'dataset':<12} {'feature set':<12} {'fingerprint':<12} created")
    for v in versions:
        typer.echo(f"{v['version']:>7}  {','.join(v['aliases']) or '-':<20} {str(v['weights_hash'])[:12]:<12} "
                   f"{str(v['dataset_hash'])[:12]:<12} {str(v['feature_set']):<12} {str(v['fingerprint'])[:12]:<12} {v['created']}")


@mlflow_app.command("ui")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI on the project's tracking database and artifact root."""
    from rl_lifecycle.models.tracking import open_registry

    registry = open_registry(open_database(load_settings()))
    typer.echo(f"MLflow UI on http://{host}:{port} (backend: its own database on the project's PostgreSQL)")
    mlflow = Path(sys.executable).with_name("mlflow")
    os.execv(str(mlflow), [str(mlflow), "server", "--backend-store-uri", registry.tracking_uri,
                           "--default-artifact-root", registry.artifacts_uri, "--host", host, "--port", str(port)])


# -- evaluation ---------------------------------------------------------------------------------
report_app = typer.Typer(no_args_is_help=True, help="Walk-forward evaluation reports.")
app.add_typer(report_app, name="report")


@app.command()
def evaluate(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    window: Annotated[str, typer.Option(help="window key: evaluates that partition's challenger on its dataset")],
    folds: Annotated[int, typer.Option(help="walk-forward folds")] = 3,
    purge: Annotated[int | None, typer.Option(help="bars purged before each test range (default: the label horizon)")] = None,
    embargo: Annotated[int, typer.Option(help="bars embargoed after each test range")] = 0,
    test_size: Annotated[int | None, typer.Option(help="rows per test range (default: the largest that fits)")] = None,
    workers: Annotated[int, typer.Option(help="fold steps at once (train + backtest), one process each")] = 2,
) -> None:
    """Walk-forward NautilusTrader evaluation (materializes `fold_report` with its checks)."""
    from rl_lifecycle.evaluation.folds import FoldConfig
    from rl_lifecycle.partitions import WINDOW_SCHEME

    parsed_market, parsed_window = Market.parse(market), WINDOW_SCHEME.parse(window)
    _check_windows_exist([parsed_window.key])
    # refuse bad numbers before launching anything (the label horizon is checked against purge in the run)
    FoldConfig.create(n_folds=folds, purge_bars=purge or 0, embargo_bars=embargo, test_size=test_size)
    if workers < 1:
        raise UserInputError(f"--workers {workers} is invalid: at least 1")
    settings = load_settings()
    config = {"folds": folds, "purge": purge, "embargo": embargo, "test_size": test_size}
    (result,) = run_partitions(settings, open_database(settings), ["fold_report"],
                               [f"{parsed_market.key}|{parsed_window.key}"],
                               run_config={"ops": {"fold_report": {"config": config}},
                                           "execution": {"config": {"max_concurrent": workers}}})
    if result.metadata.get("fold_report"):
        _print_report(_report(parsed_market, result.metadata["fold_report"]["report_id"]))
    if not result.ok:
        raise typer.Exit(1)


def _report(market: Market, report_id: int | None):
    from rl_lifecycle.evaluation.store import latest_report, read_report

    with connect(open_database(load_settings())) as conn:
        report = read_report(conn, report_id) if report_id is not None else latest_report(conn, market)
    if report is None or report.market != market.key:
        raise UserInputError(f"no evaluation report {'#' + str(report_id) + ' ' if report_id else ''}for {market.key}")
    return report


def _print_report(report) -> None:
    from rl_lifecycle.evaluation.service import FOLD_TABLE_HEADERS, fold_table

    agg = report.aggregates
    typer.echo(f"report {report.id} {report.market} spec {report.spec.get('name')} ({report.model_spec_hash[:12]}) "
               f"dataset {report.dataset_hash[:12]}: {report.status}; purge {report.fold_config.purge_bars}, "
               f"embargo {report.fold_config.embargo_bars}, label horizon {report.label_horizon}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in fold_table(report))) for i, h in enumerate(FOLD_TABLE_HEADERS)]
    typer.echo("  " + "  ".join(str(h).ljust(w) for h, w in zip(FOLD_TABLE_HEADERS, widths, strict=True)))
    for row in fold_table(report):
        typer.echo("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    shown = {k: agg.get(k) for k in ("psr", "dsr", "positive_share", "worst_fold") if k in agg}
    typer.echo("  aggregates: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


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


# -- promotion --------------------------------------------------------------------------------
def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _print_promotion(result) -> None:
    record = result.record
    typer.echo(f"{record.market}: {record.action} (audit #{record.id}); champion "
               f"{_v(record.champion_version)} -> {_v(record.resulting_champion_version)}; aliases "
               + ", ".join(f"{alias}={_v(version)}" for alias, version in result.aliases.items()))


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


@app.command()
def promote(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    version: Annotated[int, typer.Option(help="model version to make champion")],
    reason: Annotated[str, typer.Option(help="why, for the audit")],
    override: Annotated[bool, typer.Option(help="promote even though its gates failed or never ran (audited)")] = False,
) -> None:
    """Promote a model version to champion by hand (a pending_manual decision, or an override)."""
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.promotion.service import manual_promote

    url = open_database(load_settings())
    with connect(url) as conn:
        result = manual_promote(conn, open_registry(url), Market.parse(market), version, reason, _actor(), override=override)
    _print_promotion(result)


@app.command()
def rollback(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    reason: Annotated[str, typer.Option(help="why, for the audit")],
    to_version: Annotated[int | None, typer.Option(help="version to restore (default: the previous champion)")] = None,
) -> None:
    """Restore the previous champion (or --to-version), whatever feature set it was trained on."""
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.promotion.service import rollback as rollback_champion

    url = open_database(load_settings())
    with connect(url) as conn:
        result = rollback_champion(conn, open_registry(url), Market.parse(market), reason, _actor(), to_version=to_version)
    _print_promotion(result)


@app.command()
def audit(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    limit: Annotated[int, typer.Option(help="newest records shown")] = 20,
    gates: Annotated[bool, typer.Option("--gates", help="also print each decision's gate table")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, newest first")] = False,
) -> None:
    """The promotion audit of a market, newest first: who did what to the champion, and why."""
    import dataclasses
    import json

    from rl_lifecycle.promotion.audit import history
    from rl_lifecycle.promotion.gates import GATE_TABLE_HEADERS, gate_rows

    parsed = Market.parse(market)
    with connect(open_database(load_settings())) as conn:
        records = history(conn, parsed.key, limit=limit)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo(f"{parsed.key} has no promotion decisions yet")
        return
    for r in records:
        typer.echo(f"#{r.id} {r.created_at:%Y-%m-%d %H:%M:%S} {r.action:<15} challenger {_v(r.challenger_version):>4} "
                   f"champion {_v(r.champion_version)} -> {_v(r.resulting_champion_version)}  {r.actor}"
                   f"{'  OVERRIDE' if r.override else ''}  {', '.join(r.reason_codes) or '-'}"
                   f"{'  ' + r.note if r.note else ''}")
        if gates and r.gates:
            for row in [GATE_TABLE_HEADERS, *gate_rows(r.gates)]:
                typer.echo("    " + "  ".join(f"{c:<28}" if i == 0 else f"{c:<14}" for i, c in enumerate(row)))


# -- paper decisions ---------------------------------------------------------------------------
@app.command()
def decide(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    at: Annotated[str | None, typer.Option(help="decide as of this instant (ISO, UTC when naive); default now")] = None,
    record: Annotated[bool, typer.Option(help="append the decision to rl_decisions (--no-record: only print it)")] = True,
) -> None:
    """One paper decision: the champion acts on the newest closed bar, or holds with every reason; prints one JSON
    object and appends it to rl_decisions."""
    import json

    from rl_lifecycle.decisions.service import decide as decide_now
    from rl_lifecycle.decisions.service import parse_at
    from rl_lifecycle.models.tracking import open_registry

    parsed, at_us = Market.parse(market), parse_at(at)  # bad input is refused before the database starts
    url = open_database(load_settings())
    with connect(url) as conn:
        decision = decide_now(conn, parsed, registry=lambda: open_registry(url), at_us=at_us, record=record)
    typer.echo(json.dumps(decision.to_json()))


paper_app = typer.Typer(no_args_is_help=True, help="The long-lived paper decider (paper only: no order is routed).")
app.add_typer(paper_app, name="paper")


@paper_app.command("run")
def paper_run(
    market: Annotated[list[str] | None, typer.Option(help="only these markets (repeatable); default every live market")] = None,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="how often to look for newly closed bars")] = 1.0,
    grace_seconds: Annotated[float, typer.Option(
        min=0.0, help="how long to wait for a closed bar's candle (at most half the market's interval)")] = 20.0,
) -> None:
    """Decide each live market once per closed bar, keeping champions and open-window candles loaded between
    decisions; prints one JSON object per decision. Ctrl-C or SIGTERM stops it."""
    import functools
    import json
    import logging
    import signal
    import threading

    from rl_lifecycle.decisions.config import ENABLED_ENV
    from rl_lifecycle.decisions.live import run_decider
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.registry import get_market

    selected = [Market.parse(m).key for m in market or []] or None  # bad keys are refused before anything starts
    if not load_settings().paper_decisions_enabled:
        raise UserInputError(f"paper decisions are off: set {ENABLED_ENV}=true to run the decider (docs/runbook.md)")
    url = open_database(load_settings())
    if selected:
        with connect(url) as conn:
            for key in selected:
                get_market(conn, Market.parse(key))  # an unregistered market is refused by name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # finish the decision in hand, then stop
        signal.signal(signum, lambda *_: stop.set())
    typer.echo(f"paper decider on {', '.join(selected) if selected else 'every live market'}; Ctrl-C stops it",
               err=True)
    state = run_decider(url, functools.cache(lambda: open_registry(url)), markets=selected,
                        poll_seconds=poll_seconds, grace_seconds=grace_seconds, stop=stop,
                        on_decision=lambda d: typer.echo(json.dumps(d.to_json())))
    typer.echo(f"stopped after {state.decisions} decision(s), {state.failures} failed attempt(s)", err=True)


# -- metrics and status (observability) ---------------------------------------------------------
metrics_app = typer.Typer(no_args_is_help=True, help="Prometheus metrics (every metric named rl_...).")
app.add_typer(metrics_app, name="metrics")


@metrics_app.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option(help="port of the /metrics endpoint")] = 9464,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    log_interval: Annotated[float, typer.Option(help="also log the figures as JSON lines every N seconds (0: never)")] = 0.0,
) -> None:
    """Serve the figures for Prometheus; the database is queried at each scrape. Ctrl-C stops it."""
    import logging

    from rl_lifecycle.observability import serve_metrics, wait_forever

    url = open_database(load_settings())
    if log_interval:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    server, _ = serve_metrics(url, port, host)
    typer.echo(f"metrics on http://{host}:{server.server_port}/metrics; Ctrl-C stops it", err=True)
    try:
        wait_forever(log_interval or None, url)
    except KeyboardInterrupt:
        server.shutdown()


@metrics_app.command("log")
def metrics_log() -> None:
    """Print the same figures once, as JSON lines (one per metric)."""
    import logging

    from rl_lifecycle.observability import log_metrics

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    with connect(open_database(load_settings())) as conn:
        log_metrics(conn)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    challengers: Annotated[bool, typer.Option(help="look up challengers in the MLflow registry")] = True,
) -> None:
    """Per market: champion, challenger, last decision and its reasons, feature freshness, open alerts;
    and the rollout switches (env vars) in rollout order."""
    import dataclasses
    import json

    from rl_lifecycle.observability import market_status, rollout_switches, status_lines

    url = open_database(load_settings())
    registry = None
    if challengers:
        from rl_lifecycle.models.tracking import open_registry

        registry = open_registry(url)
    with connect(url) as conn:
        statuses = market_status(conn, registry)
    switches = rollout_switches()
    if as_json:
        typer.echo(json.dumps({"switches": [dataclasses.asdict(s) for s in switches], "markets": statuses},
                              indent=2, default=str))
        return
    for line in status_lines(statuses, switches):
        typer.echo(line)


# -- main job, UI, benchmarks ---------------------------------------------------------------------
# -- backfill (a Dagster backfill the daemon runs) -------------------------------------------------
@app.command()
def backfill(
    assets: Annotated[list[str], typer.Argument(help="asset keys, e.g. feature_snapshots training_dataset")],
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    windows: Annotated[str, typer.Option(help="FIRST..LAST window keys, e.g. 2024-01-01..2024-06-01")],
) -> None:
    """Submit a Dagster backfill of ASSETS over a market's windows; the daemon (`make dev`) runs it."""
    from rl_lifecycle.backfills import check_assets, submit_backfill
    from rl_lifecycle.instance import get_instance, sync_market_partitions
    from rl_lifecycle.registry import list_markets

    selection = check_assets(assets)  # refuse unknown assets before touching anything
    keys = _partition_keys(None, market, windows)
    settings = load_settings()
    url = open_database(settings)
    with connect(url) as conn:
        registered = sorted(r.market.key for r in list_markets(conn))
    if Market.parse(market).key not in registered:
        raise UserInputError(f"market {Market.parse(market).key} is not registered; add it with `rl-lifecycle market add`")
    instance = get_instance(settings, url)
    sync_market_partitions(instance, registered)
    submitted = submit_backfill(instance, selection, keys)
    typer.echo(f"backfill {submitted.backfill_id}: {', '.join(submitted.asset_names)} over "
               f"{len(submitted.partition_keys)} window(s) of {Market.parse(market).key} ({windows})")
    typer.echo(f"UI: {submitted.url}")
    typer.echo("the Dagster daemon runs it: start it with `make dev` if it is not running")


@app.command()
def run() -> None:
    """The main job on the demo markets: register, materialize, print what was stored."""
    from rl_lifecycle.demo import run_demo

    ok = run_demo(load_settings())
    if not ok:
        raise typer.Exit(1)


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="webserver port")] = 3000,
    host: Annotated[str, typer.Option(help="interface the webserver listens on")] = "127.0.0.1",
) -> None:
    """Start the Dagster UI and daemon against the same PostgreSQL; Ctrl-C or SIGTERM stops both."""
    from rl_lifecycle.instance import serve_dev

    settings = load_settings()
    url = open_database(settings)
    typer.echo(f"Dagster UI on http://{host}:{port} (instance storage: PostgreSQL, "
               f"DAGSTER_HOME={settings.dagster_home}); Ctrl-C stops it")
    code = serve_dev(settings, url, port, host, echo=lambda message: typer.echo(message, err=True))
    raise typer.Exit(code)


def main() -> None:
    # Dagster flags the partitioned checks and MultiPartitionMapping we rely on as beta/preview at
    # import time; users of the CLI cannot act on that, so keep it out of their output.
    import warnings

    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    try:
        app()
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
