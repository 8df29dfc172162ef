"""`rl-lifecycle market ...`: register markets, change their calendar, dataset span or fill convention, list them
with their candles."""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lifecycle.cli.common import CALENDAR_HELP
from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings

SPAN_HELP = ("windows a training dataset of this market spans by default, ending at its partition's "
             "(1..120; a run's --span-windows wins) [default: 3]")

FILL_HELP = ("where a position decided at a bar's close is filled: close (that bar's close) or next_open (the next "
             "bar's open) [default: close for crypto, next_open for fx and exchange calendars]")

market_app = typer.Typer(no_args_is_help=True, help="Markets (pair + interval), the `market` partitions.")


@market_app.command("add")
def market_add(
    pair: Annotated[str, typer.Argument(help="e.g. BTC/USDT, btc-usdt, BTCUSDT")],
    interval: Annotated[str, typer.Argument(help="1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d")],
    synthetic_seed: Annotated[int | None, typer.Option(help="generate this market's candles with this seed")] = None,
    calendar: Annotated[str | None, typer.Option(help=CALENDAR_HELP + " [default: crypto]")] = None,
    span_windows: Annotated[int | None, typer.Option(help=SPAN_HELP)] = None,
    fill: Annotated[str | None, typer.Option(help=FILL_HELP)] = None,
) -> None:
    """Register a market and its `market` partition."""
    from rl_lifecycle.markets.calendars import normalize_calendar_name
    from rl_lifecycle.markets.table import check_span_windows, parse_fill
    from rl_lifecycle.orchestration.instance import register_market

    market = Market.of(pair, interval)  # validate before touching anything
    if calendar is not None:
        calendar = normalize_calendar_name(calendar)
    if span_windows is not None:
        check_span_windows(span_windows)
    if fill is not None:
        fill = parse_fill(fill)
    settings = load_settings()
    source = "synthetic" if synthetic_seed is not None else "import"
    added = register_market(open_database(settings), settings, market, source, synthetic_seed, calendar=calendar,
                            span_windows=span_windows, fill=fill)
    typer.echo(f"{'added' if added else 'already registered'}: {market.key}")


@market_app.command("set-span-windows")
def market_set_span_windows(
    market: Annotated[str, typer.Argument(help="market key, e.g. GOOGL-1d")],
    span_windows: Annotated[str, typer.Argument(help="windows a training dataset spans by default, or `default` (3)")],
) -> None:
    """Change a market's default dataset span (stored datasets are kept: the span is part of their hash)."""
    from rl_lifecycle.errors import UserInputError
    from rl_lifecycle.markets.table import set_market_span_windows

    parsed = Market.parse(market)
    if span_windows.strip().lower() == "default":
        wanted = None
    else:
        try:
            wanted = int(span_windows)
        except ValueError:
            raise UserInputError(f"span {span_windows!r} is invalid: a number of windows (1 to 120) or `default`") from None
    with connect(open_database(load_settings())) as conn:
        previous = set_market_span_windows(conn, parsed, wanted)
    typer.echo(f"{parsed.key}: span windows {_span_text(previous)} -> {_span_text(wanted)}")


def _span_text(span: int | None) -> str:
    from rl_lifecycle.datasets.spec import DEFAULT_SPAN_WINDOWS

    return f"default ({DEFAULT_SPAN_WINDOWS})" if span is None else str(span)


@market_app.command("set-fill")
def market_set_fill(
    market: Annotated[str, typer.Argument(help="market key, e.g. GOOGL-1d")],
    fill: Annotated[str, typer.Argument(help="close, next_open, or `default` (the calendar's)")],
) -> None:
    """Change a market's fill convention. Its stored datasets keep the fill they were built under: training and
    evaluation refuse them until `training_dataset` is materialized again under the new fill."""
    from rl_lifecycle.markets.table import get_market, parse_fill, set_market_fill

    parsed = Market.parse(market)
    wanted = None if fill.strip().lower() == "default" else parse_fill(fill, "fill")
    with connect(open_database(load_settings())) as conn:
        previous = set_market_fill(conn, parsed, wanted)
        current = get_market(conn, parsed).fill_convention
    typer.echo(f"{parsed.key}: fill {previous} -> {current}")


@market_app.command("set-calendar")
def market_set_calendar(
    market: Annotated[str, typer.Argument(help="market key, e.g. GOOGL-1d")],
    calendar: Annotated[str, typer.Argument(help=CALENDAR_HELP)],
) -> None:
    """Change a market's trading calendar (stored candles are kept; gaps are counted against the new one)."""
    from rl_lifecycle.markets.table import get_market, set_market_calendar

    parsed = Market.parse(market)
    with connect(open_database(load_settings())) as conn:
        previous = set_market_calendar(conn, parsed, calendar)
        current = get_market(conn, parsed).calendar
    typer.echo(f"{parsed.key}: calendar {previous} -> {current}")


@market_app.command("list")
def market_list() -> None:
    """Registered markets with their candle coverage."""
    from rl_lifecycle.candles.store import candle_coverage
    from rl_lifecycle.markets.table import list_markets
    from rl_lifecycle.windows import from_us

    with connect(open_database(load_settings())) as conn:
        records = list_markets(conn)
        coverage = candle_coverage(conn)
    if not records:
        typer.echo("no markets; add one with: rl-lifecycle market add BTC/USDT 1h")
        return
    typer.echo(f"{'market':<18} {'source':<10} {'calendar':<8} {'span':<11} {'fill':<9} {'candles':>9}  first .. last")
    for r in records:
        candles = coverage.get(r.market)
        n = candles.rows if candles else 0
        span = f"{from_us(candles.first_ts):%Y-%m-%d %H:%M} .. {from_us(candles.last_ts):%Y-%m-%d %H:%M}" if n else "-"
        source = r.source + (f"({r.synthetic_seed})" if r.synthetic_seed is not None else "")
        typer.echo(f"{r.market.key:<18} {source:<10} {r.calendar:<8} {_span_text(r.span_windows):<11} "
                   f"{r.fill_convention:<9} {n:>9}  {span}")
