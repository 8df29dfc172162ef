"""Candle use cases: load a window from its market's source, summarise what is stored."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import polars as pl
import psycopg

from rl_lifecycle.candles.gaps import Gap
from rl_lifecycle.candles.limits import IntakeLimits
from rl_lifecycle.candles.store import CandleWriteStats, load_candles, upsert_candles
from rl_lifecycle.candles.validation import ValidationReport
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.calendars import TradingCalendar, get_calendar, normalize_calendar_name
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import MarketRecord, add_market, registered_calendar
from rl_lifecycle.windows import Window, WindowScheme, iso, utc_now_us


@dataclass(frozen=True)
class WindowSummary:
    market: Market
    window: Window
    rows: int
    expected_rows: int
    first_ts: int | None
    last_ts: int | None
    gaps: list[Gap]
    ts: np.ndarray = field(repr=False)
    close: np.ndarray = field(repr=False)

    @property
    def missing_bars(self) -> int:
        return sum(g.missing_bars for g in self.gaps)


def window_bounds_until_now(market: Market, window: Window, now: int | None = None) -> tuple[int, int]:
    """[start, end) of the window's closed bars: a bar still open has no close yet (and no features)."""
    current = utc_now_us() if now is None else now
    still_open = current - current % market.interval_us
    return window.start, min(window.end, still_open)


def summarize_window(
    conn: psycopg.Connection,
    market: Market,
    window: Window,
    now: int | None = None,
    calendar: TradingCalendar | None = None,
) -> WindowSummary:
    """Rows, expected rows and gaps of a window's closed bars, against the market's trading calendar."""
    calendar = calendar or get_calendar(registered_calendar(conn, market))
    candles = load_candles(conn, market, window.start, window.end)
    start, end = window_bounds_until_now(market, window, now)
    expected = len(calendar.expected_bar_opens(start, end, market.interval_us))
    return WindowSummary(
        market=market,
        window=window,
        rows=len(candles),
        expected_rows=int(expected),
        first_ts=int(candles.ts[0]) if len(candles) else None,
        last_ts=int(candles.ts[-1]) if len(candles) else None,
        gaps=calendar.gaps(candles.ts, market.interval_us, start, end) if len(candles) else [],
        ts=candles.ts,
        close=candles.close,
    )


def ingest_synthetic(
    conn: psycopg.Connection, market: Market, start_us: int, end_us: int, seed: int, *, calendar: str | None = None
) -> CandleWriteStats:
    from rl_lifecycle.candles.synthetic import synthetic_candles

    frame = synthetic_candles(market, start_us, end_us, seed)
    with conn.transaction():
        # No-op when registered (another calendar is refused); an unknown market is registered as imported.
        add_market(conn, market, calendar=calendar)
        return upsert_candles(conn, market, frame)


SEED_MAX = 2**31 - 1  # markets.synthetic_seed is an integer column


def ingest_synthetic_market(
    conn: psycopg.Connection, market: Market, start_us: int, end_us: int, seed: int, *, calendar: str | None = None
) -> CandleWriteStats:
    """`rl-lifecycle ingest --synthetic`: generated candles go only into a synthetic market.

    A market not registered yet is registered as synthetic with `seed`, so the `candles` asset generates
    the same bars and a file import into it is refused. A registered synthetic market must have this seed.
    A market fed by files (source `import`) is refused, as a file import into a synthetic market is: the
    generated bars would overwrite its candles or mix with them.
    """
    if not 0 <= seed <= SEED_MAX:
        raise UserInputError(f"--seed {seed} is out of range; a seed is a whole number in 0..{SEED_MAX}")
    with conn.transaction():
        row = conn.execute(
            "SELECT source, synthetic_seed FROM markets WHERE pair = %s AND interval = %s FOR UPDATE",
            (market.pair, market.interval),
        ).fetchone()
        if row is None:
            add_market(conn, market, source="synthetic", seed=seed, calendar=calendar)
        elif row[0] != "synthetic":
            count, first, last = conn.execute(
                "SELECT count(*), min(ts), max(ts) FROM market_candles WHERE pair = %s AND interval = %s",
                (market.pair, market.interval),
            ).fetchone()
            held = (f"it holds {count} imported candles ({first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC)"
                    if count else "its candles come from files (`ingest --csv/--parquet`, the inbox)")
            other = f"SIM{market.pair}-{market.interval}"
            raise UserInputError(
                f"market {market.key} is an imported market: {held}, and synthetic candles would overwrite them or "
                f"mix with them. Nothing was written. Generate synthetic candles into a market of their own, e.g. "
                f"`rl-lifecycle ingest --market {other} --synthetic ...` (registered as synthetic on first use) or "
                f"`rl-lifecycle market add SIM{market.pair} {market.interval} --synthetic-seed {seed}`"
            )
        elif int(row[1]) != seed:
            raise UserInputError(
                f"market {market.key} is synthetic with seed {row[1]}: --seed {seed} would overwrite its candles with "
                f"other ones. Nothing was written. Pass --seed {row[1]}, or use another market key for seed {seed}"
            )
        return ingest_synthetic(conn, market, start_us, end_us, seed, calendar=calendar)


def load_window(
    conn: psycopg.Connection, record: MarketRecord, window: Window, now: int | None = None
) -> tuple[CandleWriteStats | None, WindowSummary]:
    """Bring a window's candles into the table from the market's source; idempotent.

    Synthetic markets are generated up to now; imported markets are fed by `rl-lifecycle ingest`,
    so their window is only checked to hold candles.
    """
    market = record.market
    stats = None
    if record.source == "synthetic":
        start, end = window_bounds_until_now(market, window, now)
        if end > start:
            stats = ingest_synthetic(conn, market, start, end, int(record.synthetic_seed))
    summary = summarize_window(conn, market, window, now, get_calendar(record.calendar))
    if summary.rows == 0:
        raise UserInputError(
            f"no candles stored for {market.key} in window {window.key}; "
            f"ingest them first: rl-lifecycle ingest --market {market.key} --csv FILE"
        )
    return stats, summary


@dataclass(frozen=True)
class FileIngestResult:
    path: str
    rows_read: int
    stats: CandleWriteStats | None  # None when the file was refused
    quarantined: int
    report: ValidationReport
    first_ts: int | None = None  # earliest candle written (epoch us); None when nothing was
    before_first_window: int = 0  # candles written before `first_window`, when it was given

    @property
    def refused(self) -> bool:
        return self.stats is None


def count_before(ts_us: np.ndarray, window: Window | None) -> int:
    """How many of these bar open times fall before `window` (the first window partition)."""
    if window is None or len(ts_us) == 0:
        return 0
    return int(np.count_nonzero(np.asarray(ts_us, dtype=np.int64) < window.start))


def history_before_first_window(
    market: Market, first_ts: int, candles_before: int, first_window: Window, scheme: WindowScheme, window_start: str
) -> str:
    """What to tell a user whose candles start before the first `window` partition, and what to set."""
    wanted = scheme.containing(first_ts).key
    return (
        f"note: {candles_before} candles of {market.key} (from {iso(first_ts)}) fall before the first window "
        f"partition {first_window.key} (RL_WINDOW_START={window_start}); they are stored, but windows before "
        f"{first_window.key} cannot be materialized. To use them, set RL_WINDOW_START={wanted} (the first window "
        "of this data) wherever rl-lifecycle and `make dev` run, and restart `make dev`."
    )


def _refuse_synthetic_market(conn: psycopg.Connection, market: Market) -> None:
    """The `candles` asset regenerates synthetic markets, which would overwrite imported candles."""
    row = conn.execute(
        "SELECT synthetic_seed FROM markets WHERE pair = %s AND interval = %s AND source = 'synthetic'",
        (market.pair, market.interval),
    ).fetchone()
    if row is not None:
        raise UserInputError(
            f"market {market.key} is synthetic (seed {row[0]}): its candles are generated, and a file import "
            "would be overwritten by the next `candles` run; import into another market key"
        )


def _ingest_calendar(conn: psycopg.Connection, market: Market, requested: str | None) -> str:
    """The calendar an import is checked against: the registered one, else `requested` (default crypto)."""
    registered = registered_calendar(conn, market)
    wanted = normalize_calendar_name(requested) if requested is not None else None
    if registered is not None and wanted is not None and wanted != registered:
        raise UserInputError(
            f"--calendar {requested!r}: market {market.key} is registered with calendar {registered!r}; "
            f"change it first with `rl-lifecycle market set-calendar {market.key} {wanted}`"
        )
    return registered or wanted or get_calendar().name


def _file_sha256(path, handle=None) -> str:
    import hashlib

    digest = hashlib.sha256()
    if handle is not None:
        handle.seek(0)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        return digest.hexdigest()
    with open(path, "rb") as opened:
        for block in iter(lambda: opened.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest_file(
    conn: psycopg.Connection,
    market: Market,
    path,
    *,
    ts_column: str | None = None,
    ts_format: str | None = None,
    ts_timezone: str | None = None,
    quarantine: bool = False,
    calendar: str | None = None,
    first_window: Window | None = None,
    limits: IntakeLimits | None = None,
    handle: BinaryIO | None = None,
) -> FileIngestResult:
    """Validate a candle file whole; write it in one transaction, or nothing.

    With any bad row the file is refused unless `quarantine`: then the bad rows go to
    `candles_quarantine` with their reasons and the good rows are written, atomically.
    Gaps are counted against the market's calendar; an unregistered market is registered with
    `calendar` (default crypto), and a registered one must not be given another. With `first_window`
    (the first `window` partition) the result counts the candles written before it. The file is read
    within `limits` (default: the RL_INGEST_* settings); `handle`: the file opened by the caller.
    """
    from rl_lifecycle.candles.importer import read_candle_file
    from rl_lifecycle.candles.validation import validate_candles

    _refuse_synthetic_market(conn, market)
    calendar_name = _ingest_calendar(conn, market, calendar)
    raw = read_candle_file(path, ts_column=ts_column, ts_format=ts_format, ts_timezone=ts_timezone, limits=limits,
                           handle=handle)
    report = validate_candles(raw, market.interval, get_calendar(calendar_name))
    rows_read = raw.frame.height
    if not report.ok and not quarantine:
        return FileIngestResult(str(path), rows_read, None, 0, report)
    quarantined = 0
    with conn.transaction():
        add_market(conn, market, calendar=calendar_name)
        stats = upsert_candles(conn, market, report.good)
        if not report.ok:
            sha = _file_sha256(path, handle)
            records = [
                (market.pair, market.interval, str(path), sha, int(row["row"]), row.get("ts_raw"),
                 _raw_json({k: v for k, v in row.items() if k not in ("row", "reasons")}),
                 list(row["reasons"]))
                for row in report.bad.iter_rows(named=True)
            ]
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO candles_quarantine
                         (pair, interval, source, source_sha256, row_number, ts_raw, raw, reasons)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (pair, interval, source_sha256, row_number) DO NOTHING""",
                    records,
                )
            quarantined = len(records)
    ts = report.good["ts"].cast(pl.Int64).to_numpy() if report.good.height else np.empty(0, dtype=np.int64)
    first_ts = int(ts.min()) if len(ts) else None
    return FileIngestResult(str(path), rows_read, stats, quarantined, report, first_ts, count_before(ts, first_window))


def _raw_json(values: dict) -> str:
    """A bad row as JSON, every value kept: non-finite numbers (nan, inf, an overflowing 1e400) as text,
    since JSON has no NaN or infinity and they are often the very reason the row is bad."""

    def keep(value):
        if isinstance(value, float) and not math.isfinite(value):
            return repr(value)
        return value

    return json.dumps({k: keep(v) for k, v in values.items()}, default=str, allow_nan=False)
