"""`rl-lifecycle market ...`: register markets, change their calendar, list them with their candles."""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lifecycle.cli.common import CALENDAR_HELP
from rl_lifecycle.db.connection import connect
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.settings import load_settings

market_app = typer.Typer(no_args_is_help=True, help="Markets (pair + interval), the `market` partitions.")


@market_app.command("add")
def market_add(
    pair: Annotated[str, typer.Argument(help="e.g. BTC/USDT, btc-usdt, BTCUSDT")],
    interval: Annotated[str, typer.Argument(help="1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d")],
    synthetic_seed: Annotated[int | None, typer.Option(help="generate this market's candles with this seed")] = None,
    calendar: Annotated[str | None, typer.Option(help=CALENDAR_HELP + " [default: crypto]")] = None,
) -> None:
    """Register a market and its `market` partition."""
    from rl_lifecycle.markets.calendars import normalize_calendar_name
    from rl_lifecycle.orchestration.instance import register_market

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
    typer.echo(f"{'market':<18} {'source':<10} {'calendar':<8} {'candles':>9}  first .. last")
    for r in records:
        candles = coverage.get(r.market)
        n = candles.rows if candles else 0
        span = f"{from_us(candles.first_ts):%Y-%m-%d %H:%M} .. {from_us(candles.last_ts):%Y-%m-%d %H:%M}" if n else "-"
        source = r.source + (f"({r.synthetic_seed})" if r.synthetic_seed is not None else "")
        typer.echo(f"{r.market.key:<18} {source:<10} {r.calendar:<8} {n:>9}  {span}")
