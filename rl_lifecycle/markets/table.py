"""The `markets` table: which markets exist, where their candles come from, their trading calendar, the
default span of their training datasets and their fill convention (`trading.FILLS`, sql/0017)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.calendars import DEFAULT_CALENDAR, normalize_calendar_name
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.trading import check_fill, default_fill

SOURCES = ("import", "synthetic")
MAX_SPAN_WINDOWS = 120  # sql/0014's check; datasets.spec.DEFAULT_SPAN_WINDOWS when a market names none


@dataclass(frozen=True)
class MarketRecord:
    market: Market
    source: str  # "import": candles arrive via `rl-lifecycle ingest`; "synthetic": generated on demand
    synthetic_seed: int | None
    calendar: str = DEFAULT_CALENDAR  # `rl_lifecycle.markets.calendars` name: crypto, fx or an exchange code
    span_windows: int | None = None  # windows a training dataset spans by default (None: the project default)
    fill: str | None = None  # `close` or `next_open` (None: the calendar's default, `trading.default_fill`)

    @property
    def fill_convention(self) -> str:
        """Where a position decided at a bar's close is filled (`trading.FILLS`)."""
        return self.fill or default_fill(self.calendar)


def parse_fill(value: str, what: str = "--fill") -> str:
    """A fill convention named by a user, else UserInputError naming `what` and the value."""
    try:
        return check_fill(value.strip().lower() if isinstance(value, str) else value, what)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


def check_span_windows(value: int, what: str = "--span-windows") -> int:
    """A span of 1 .. MAX_SPAN_WINDOWS windows, else UserInputError naming `what` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SPAN_WINDOWS:
        raise UserInputError(f"{what} {value!r} is invalid: a dataset spans 1 to {MAX_SPAN_WINDOWS} windows")
    return value


def add_market(
    conn: psycopg.Connection,
    market: Market,
    *,
    source: str = "import",
    seed: int | None = None,
    calendar: str | None = None,
    span_windows: int | None = None,
    fill: str | None = None,
) -> bool:
    """Register a market; returns False when it already existed (its source is left as it was).

    `calendar` (default crypto) is validated. Naming another calendar than a registered market's is
    refused: changing it is `set_market_calendar`, an explicit step. `span_windows` (None: the project
    default) is the windows its training datasets span unless a run names another; naming another than a
    registered market's is refused the same way (`set_market_span_windows`), and so is `fill` (None: the
    calendar's default, `trading.default_fill`; `set_market_fill`).
    """
    if source not in SOURCES:
        raise UserInputError(f"market source {source!r} is invalid; expected one of {SOURCES}")
    if (source == "synthetic") != (seed is not None):
        raise UserInputError("a synthetic market needs a seed, and only a synthetic market takes one")
    wanted = normalize_calendar_name(calendar) if calendar is not None else None
    if span_windows is not None:
        check_span_windows(span_windows)
    if fill is not None:
        fill = parse_fill(fill)
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO markets (pair, interval, source, synthetic_seed, calendar, span_windows, fill)
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (pair, interval) DO NOTHING RETURNING pair""",
            (market.pair, market.interval, source, seed, wanted or DEFAULT_CALENDAR, span_windows,
             fill or default_fill(wanted or DEFAULT_CALENDAR)),
        ).fetchone()
        if row is None and fill is not None:
            registered = registered_fill(conn, market)
            if registered != fill:
                raise UserInputError(
                    f"--fill {fill}: market {market.key} is already registered with fill {registered!r}; "
                    f"to change it run `rl-lifecycle market set-fill {market.key} {fill}`"
                )
        if row is None and span_windows is not None:
            registered = get_market(conn, market).span_windows
            if registered != span_windows:
                raise UserInputError(
                    f"--span-windows {span_windows}: market {market.key} is already registered with "
                    f"{'no span (the default)' if registered is None else f'a span of {registered} windows'}; "
                    f"to change it run `rl-lifecycle market set-span-windows {market.key} {span_windows}`"
                )
        if row is None and wanted is not None:
            registered = registered_calendar(conn, market)
            if registered != wanted:
                raise UserInputError(
                    f"calendar {calendar!r}: market {market.key} is already registered with calendar {registered!r}; "
                    f"to change it run `rl-lifecycle market set-calendar {market.key} {wanted}`"
                )
    return row is not None


def set_market_calendar(conn: psycopg.Connection, market: Market, calendar: str) -> str:
    """Change a registered market's calendar; returns the previous one. Stored candles are untouched:
    only which missing bars count as gaps changes."""
    wanted = normalize_calendar_name(calendar)
    with conn.transaction():
        previous = registered_calendar(conn, market, for_update=True)
        if previous is None:
            raise UserInputError(f"market {market.key} is not registered; add it with `rl-lifecycle market add`")
        conn.execute(
            "UPDATE markets SET calendar = %s WHERE pair = %s AND interval = %s", (wanted, market.pair, market.interval)
        )
    return previous


def set_market_span_windows(conn: psycopg.Connection, market: Market, span_windows: int | None) -> int | None:
    """Change a registered market's default dataset span (None: back to the project default); returns the
    previous one. Stored datasets are untouched: the span is part of their spec and hash."""
    if span_windows is not None:
        check_span_windows(span_windows)
    with conn.transaction():
        previous = conn.execute(
            "SELECT span_windows FROM markets WHERE pair = %s AND interval = %s FOR UPDATE", (market.pair, market.interval)
        ).fetchone()
        if previous is None:
            raise UserInputError(f"market {market.key} is not registered; add it with `rl-lifecycle market add`")
        conn.execute("UPDATE markets SET span_windows = %s WHERE pair = %s AND interval = %s",
                     (span_windows, market.pair, market.interval))
    return previous[0]


def set_market_fill(conn: psycopg.Connection, market: Market, fill: str | None) -> str:
    """Change a registered market's fill convention (None: its calendar's default); returns the previous one.
    Stored datasets are untouched: each keeps the fill it was built under (its spec's `fill`); models and
    evaluations of the market refuse a dataset of another fill until `training_dataset` is built again."""
    wanted = None if fill is None else parse_fill(fill)
    with conn.transaction():
        row = conn.execute("SELECT fill, calendar FROM markets WHERE pair = %s AND interval = %s FOR UPDATE",
                           (market.pair, market.interval)).fetchone()
        if row is None:
            raise UserInputError(f"market {market.key} is not registered; add it with `rl-lifecycle market add`")
        conn.execute("UPDATE markets SET fill = %s WHERE pair = %s AND interval = %s",
                     (wanted or default_fill(row[1]), market.pair, market.interval))
    return row[0]


def registered_fill(conn: psycopg.Connection, market: Market) -> str | None:
    """The market's fill convention, or None when the market is not registered."""
    row = conn.execute("SELECT fill FROM markets WHERE pair = %s AND interval = %s",
                       (market.pair, market.interval)).fetchone()
    return None if row is None else row[0]


def market_fill(conn: psycopg.Connection, market: Market) -> str:
    """The fill convention of `market`: its registered one, else the default calendar's (an unregistered market
    is traded as `crypto`, as `registered_calendar`'s None is)."""
    return registered_fill(conn, market) or default_fill(DEFAULT_CALENDAR)


def registered_calendar(conn: psycopg.Connection, market: Market, *, for_update: bool = False) -> str | None:
    """The market's calendar name, or None when the market is not registered."""
    row = conn.execute(
        "SELECT calendar FROM markets WHERE pair = %s AND interval = %s" + (" FOR UPDATE" if for_update else ""),
        (market.pair, market.interval),
    ).fetchone()
    return None if row is None else row[0]


def registered_span_windows(conn: psycopg.Connection, market: Market) -> int | None:
    """The market's default dataset span, or None when it names none (or the market is not registered)."""
    row = conn.execute(
        "SELECT span_windows FROM markets WHERE pair = %s AND interval = %s", (market.pair, market.interval)
    ).fetchone()
    return None if row is None else row[0]


def list_markets(conn: psycopg.Connection) -> list[MarketRecord]:
    rows = conn.execute(
        "SELECT pair, interval, source, synthetic_seed, calendar, span_windows, fill FROM markets ORDER BY pair, interval"
    ).fetchall()
    return [MarketRecord(Market(p, i), s, seed, cal, span, fill) for p, i, s, seed, cal, span, fill in rows]


def get_market(conn: psycopg.Connection, market: Market) -> MarketRecord:
    row = conn.execute(
        "SELECT source, synthetic_seed, calendar, span_windows, fill FROM markets WHERE pair = %s AND interval = %s",
        (market.pair, market.interval),
    ).fetchone()
    if row is None:
        raise UserInputError(f"market {market.key} is not registered; add it with `rl-lifecycle market add`")
    return MarketRecord(market, row[0], row[1], row[2], row[3], row[4])
