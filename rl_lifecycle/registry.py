"""The `markets` table: which markets exist and where their candles come from."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets import Market

SOURCES = ("import", "synthetic")


@dataclass(frozen=True)
class MarketRecord:
    market: Market
    source: str  # "import": candles arrive via `rl-lifecycle ingest`; "synthetic": generated on demand
    synthetic_seed: int | None


def add_market(conn: psycopg.Connection, market: Market, *, source: str = "import", seed: int | None = None) -> bool:
    """Register a market; returns False when it already existed (its source is left as it was)."""
    if source not in SOURCES:
        raise UserInputError(f"market source {source!r} is invalid; expected one of {SOURCES}")
    if (source == "synthetic") != (seed is not None):
        raise UserInputError("a synthetic market needs a seed, and only a synthetic market takes one")
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO markets (pair, interval, source, synthetic_seed) VALUES (%s, %s, %s, %s)
               ON CONFLICT (pair, interval) DO NOTHING RETURNING pair""",
            (market.pair, market.interval, source, seed),
        ).fetchone()
    return row is not None


def list_markets(conn: psycopg.Connection) -> list[MarketRecord]:
    rows = conn.execute("SELECT pair, interval, source, synthetic_seed FROM markets ORDER BY pair, interval").fetchall()
    return [MarketRecord(Market(p, i), s, seed) for p, i, s, seed in rows]


def get_market(conn: psycopg.Connection, market: Market) -> MarketRecord:
    row = conn.execute(
        "SELECT source, synthetic_seed FROM markets WHERE pair = %s AND interval = %s", (market.pair, market.interval)
    ).fetchone()
    if row is None:
        raise UserInputError(f"market {market.key} is not registered; add it with `rl-lifecycle market add`")
    return MarketRecord(market, row[0], row[1])
