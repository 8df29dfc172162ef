"""The `market_candles` table: idempotent bulk upsert, range reads into numpy, window summaries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from rl_lifecycle.candles.frame import VALUE_COLUMNS, CandleArrays
from rl_lifecycle.db import binary_copy as bc
from rl_lifecycle.db.binary_copy import pg_timestamp
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import newest_closed_bar

_FIELDS = [bc.timestamptz("ts"), *(bc.float8(c) for c in VALUE_COLUMNS)]


@dataclass(frozen=True)
class CandleWriteStats:
    inserted: int
    updated: int
    unchanged: int

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def lock_market(conn: psycopg.Connection, market: Market, purpose: str, shared: bool = False) -> None:
    """Serialise writers of one market for the current transaction (e.g. two ingests of one window);
    `shared` readers wait for writers in flight, not for each other."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(f"SELECT {function}(hashtextextended(%s, 0))", (f"{purpose}:{market.key}",))


def upsert_candles(conn: psycopg.Connection, market: Market, frame: pl.DataFrame) -> CandleWriteStats:
    """Write validated candles in one transaction: new rows inserted, changed rows updated, equal rows untouched."""
    arrays = CandleArrays.from_frame(frame)
    if len(arrays) == 0:
        return CandleWriteStats(0, 0, 0)
    with conn.transaction():
        lock_market(conn, market, "candles")
        conn.execute(
            """CREATE TEMP TABLE IF NOT EXISTS candles_stage
               (ts timestamptz, open float8, high float8, low float8, close float8, volume float8)
               ON COMMIT DELETE ROWS"""
        )
        conn.execute("TRUNCATE candles_stage")  # empty even when the caller's transaction spans several writes
        columns = {"ts": bc.us_to_pg(arrays.ts), **{c: getattr(arrays, c) for c in VALUE_COLUMNS}}
        bc.copy_in(conn, "candles_stage", _FIELDS, columns)
        rows = conn.execute(
            """INSERT INTO market_candles AS m (pair, interval, ts, open, high, low, close, volume)
               SELECT %s, %s, ts, open, high, low, close, volume FROM candles_stage ORDER BY ts
               ON CONFLICT (pair, interval, ts) DO UPDATE
                 SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
                     close = EXCLUDED.close, volume = EXCLUDED.volume
                 WHERE (m.open, m.high, m.low, m.close, m.volume)
                       IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)
               RETURNING (xmax = 0) AS inserted""",
            (market.pair, market.interval),
        ).fetchall()
    inserted = sum(1 for (flag,) in rows if flag)
    return CandleWriteStats(inserted, len(rows) - inserted, len(arrays) - len(rows))


def _to_arrays(rows) -> CandleArrays:
    return CandleArrays(
        ts=bc.pg_to_us(rows["ts"].astype(np.int64)),
        **{c: rows[c].astype(np.float64) for c in VALUE_COLUMNS},
    )


def load_candles(conn: psycopg.Connection, market: Market, start_us: int, end_us: int) -> CandleArrays:
    """Candles with start <= ts < end, sorted by ts."""
    return load_candles_with_warmup(conn, market, start_us, end_us, warmup_rows=0)


def _input_rows(market: Market, start_us: int, end_us: int, warmup_rows: int, columns: str) -> sql.Composable:
    """The canonical input of [start, end): the last `warmup_rows` candles before start, then those in range."""
    window = sql.SQL(
        "SELECT " + columns + " FROM market_candles WHERE pair = {p} AND interval = {i} AND ts >= {s} AND ts < {e}"
    ).format(p=market.pair, i=market.interval, s=pg_timestamp(start_us), e=pg_timestamp(end_us))
    if warmup_rows <= 0:
        return window
    before = sql.SQL(
        "SELECT " + columns + " FROM market_candles WHERE pair = {p} AND interval = {i} AND ts < {s} "
        "ORDER BY ts DESC LIMIT {n}"
    ).format(p=market.pair, i=market.interval, s=pg_timestamp(start_us), n=int(warmup_rows))
    return sql.SQL("({}) UNION ALL ({})").format(before, window)


_CANDLE_COLUMNS = "ts, open, high, low, close, volume"


def load_candles_with_warmup(
    conn: psycopg.Connection, market: Market, start_us: int, end_us: int, warmup_rows: int
) -> CandleArrays:
    """Candles in [start, end) preceded by the last `warmup_rows` candles before start (fewer near history's start)."""
    query = sql.SQL("SELECT * FROM ({}) c ORDER BY ts").format(
        _input_rows(market, start_us, end_us, warmup_rows, _CANDLE_COLUMNS))
    return _to_arrays(bc.read_columns(conn, query, _FIELDS, order_by="ts"))


@dataclass(frozen=True)
class CandleInputChanges:
    """The stamp of a canonical input and its candles written after a given write sequence number."""

    stamp: CandleStamp
    changed: CandleArrays


def candle_input_changes(
    conn: psycopg.Connection, market: Market, start_us: int, end_us: int, warmup_rows: int, since_seq: int | None
) -> CandleInputChanges:
    """One pass over the input of [start, end) (as `load_candles_with_warmup` reads it): its stamp, and its
    candles whose write_seq exceeds `since_seq` (all of them when None).

    Taken under the shared side of the market's write lock: no candle write is in flight, and a later
    write takes a higher sequence number than any seen here, so nothing written is ever skipped.
    """
    newer = sql.SQL("{since}::bigint IS NULL OR write_seq > {since}").format(since=sql.Literal(since_seq))
    query = sql.SQL(
        "SELECT (extract(epoch FROM min(ts)) * 1000000)::bigint, count(*), max(write_seq), {arrays} FROM ({rows}) c"
    ).format(arrays=bc.array_columns(_FIELDS, newer),
             rows=_input_rows(market, start_us, end_us, warmup_rows, _CANDLE_COLUMNS + ", write_seq"))
    with conn.transaction():
        lock_market(conn, market, "candles", shared=True)
        first, rows, seq, *payloads = conn.execute(query, binary=True).fetchone()
    stamp = CandleStamp(None if first is None else int(first), int(rows), None if seq is None else int(seq))
    return CandleInputChanges(stamp, _to_arrays(bc.decode_columns(payloads, _FIELDS, order_by="ts")))


@dataclass(frozen=True)
class CandleStamp:
    """What a window's pipeline input looks like without reading it: first ts, rows, latest write."""

    input_start_us: int | None
    rows: int
    write_seq: int | None  # highest write sequence number among the input candles (None when empty)


def window_input_stamps(
    conn: psycopg.Connection, market: Market, windows: list[tuple[int, int]], warmup_rows: int
) -> list[CandleStamp]:
    """Stamps of each window's canonical input (`warmup_rows` before it, then its rows), in one query.

    Taken under the shared side of the market's write lock, so no candle write is in flight.
    """
    if not windows:
        return []
    bounds = sql.SQL(", ").join(
        sql.SQL("({}, {}, {})").format(sql.Literal(i), pg_timestamp(start), pg_timestamp(end))
        for i, (start, end) in enumerate(windows)
    )
    query = sql.SQL(
        """SELECT w.i, (extract(epoch FROM s.first_ts) * 1000000)::bigint, s.n, s.write_seq
           FROM (VALUES {bounds}) AS w(i, s, e)
           CROSS JOIN LATERAL (
             SELECT min(ts) AS first_ts, count(*) AS n, max(write_seq) AS write_seq FROM (
               (SELECT ts, write_seq FROM market_candles
                 WHERE pair = {p} AND interval = {iv} AND ts < w.s ORDER BY ts DESC LIMIT {n})
               UNION ALL
               (SELECT ts, write_seq FROM market_candles
                 WHERE pair = {p} AND interval = {iv} AND ts >= w.s AND ts < w.e)) input) s
           ORDER BY w.i"""
    ).format(bounds=bounds, p=market.pair, iv=market.interval, n=int(warmup_rows))
    with conn.transaction():
        lock_market(conn, market, "candles", shared=True)
        rows = conn.execute(query).fetchall()
    return [CandleStamp(None if first is None else int(first), int(n), seq) for _, first, n, seq in rows]


# -- the newest candles (freshness, staleness, completed windows) ---------------------------------
def newest_candle_ts(conn: psycopg.Connection, market: Market, closed_by_us: int | None = None) -> int | None:
    """Open time (epoch us) of the market's newest stored candle, or of the newest closed by `closed_by_us`
    (one backward index probe); None when there is none."""
    bound = "" if closed_by_us is None else " AND ts <= to_timestamp(%s / 1000000.0)"
    params = (market.pair, market.interval) + (() if closed_by_us is None else
                                               (newest_closed_bar(closed_by_us, market.interval_us),))
    row = conn.execute(
        "SELECT (extract(epoch FROM ts) * 1000000)::bigint FROM market_candles WHERE pair = %s AND interval = %s"
        + bound + " ORDER BY ts DESC LIMIT 1", params,
    ).fetchone()
    return None if row is None else int(row[0])


@dataclass(frozen=True)
class CandleCoverage:
    rows: int
    first_ts: int  # epoch us, open time
    last_ts: int


def candle_coverage(conn: psycopg.Connection) -> dict[Market, CandleCoverage]:
    """Per market with candles: how many, the first and the newest open time (epoch us)."""
    rows = conn.execute(
        """SELECT pair, interval, count(*), (extract(epoch FROM min(ts)) * 1000000)::bigint,
                  (extract(epoch FROM max(ts)) * 1000000)::bigint FROM market_candles GROUP BY pair, interval"""
    ).fetchall()
    return {Market(p, i): CandleCoverage(int(n), int(first), int(last)) for p, i, n, first, last in rows}


# -- what was written (the inbox and the live feed record the windows their writes touched) ----------
def candle_write_seq(conn: psycopg.Connection) -> int:
    """The candle write sequence now: every candle written later stamps a higher `write_seq`."""
    last, called = conn.execute("SELECT last_value, is_called FROM market_candles_write_seq").fetchone()
    return int(last) if called else 0


def written_since(conn: psycopg.Connection, market: Market, seq_before: int, first_ts: int, last_ts: int) -> np.ndarray:
    """Open times (epoch us) of the market's candles in [first_ts, last_ts] written after `seq_before`."""
    rows = conn.execute(
        """SELECT (extract(epoch FROM ts) * 1000000)::bigint FROM market_candles
           WHERE pair = %s AND interval = %s AND ts >= to_timestamp(%s / 1000000.0)
             AND ts <= to_timestamp(%s / 1000000.0) AND write_seq > %s""",
        (market.pair, market.interval, first_ts, last_ts, seq_before),
    ).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def stored_before(conn: psycopg.Connection, market: Market, before_us: int) -> tuple[int, int | None]:
    """Stored candles of `market` opened before `before_us`: (count, earliest open time in epoch us)."""
    count, first = conn.execute(
        """SELECT count(*), (extract(epoch FROM min(ts)) * 1000000)::bigint FROM market_candles
           WHERE pair = %s AND interval = %s AND ts < to_timestamp(%s / 1000000.0)""",
        (market.pair, market.interval, before_us),
    ).fetchone()
    return int(count), (int(first) if first is not None else None)

