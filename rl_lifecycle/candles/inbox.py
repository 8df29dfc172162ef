"""Live ingestion: candle files dropped into the inbox, and a live feed of closed synthetic bars.

Inbox layout (`Settings.inbox_dir`, i.e. `$RL_HOME/inbox`)::

    inbox/
      BTCUSDT-1h/                  one directory per registered market (its key)
        new-candles.csv            dropped here; imported once complete
        imported/20240301T120000.123456Z_new-candles.csv
        rejected/20240301T120000.123456Z_bad.csv
        rejected/20240301T120000.123456Z_bad.csv.report.json

A file is imported through exactly the path of `rl-lifecycle ingest` (`candles.service.ingest_file`,
without quarantine): the whole file is validated, and any bad row refuses it with nothing written.
Files still being written are left alone: hidden names (`.x`), `.tmp`/`.part`/`.partial`/`.crdownload`/
`.download` suffixes, and files modified less than `min_age_seconds` ago. Writers should write under a
temporary name and rename, which is atomic on one filesystem.

Plain Python: no Dagster here (the sensors in `rl_lifecycle.orchestration.automation.inbox` adapt it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg

from rl_lifecycle.candles.service import ingest_file, ingest_synthetic
from rl_lifecycle.candles.store import candle_write_seq, newest_candle_ts, written_since
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import MarketRecord, list_markets
from rl_lifecycle.windows import Window, WindowScheme, closed_bars_end, iso

IMPORTED_DIR = "imported"
REJECTED_DIR = "rejected"
REPORT_SUFFIX = ".report.json"
SUPPORTED_SUFFIXES = (".csv", ".txt", ".parquet", ".pq", ".zip", ".gz")
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".swp")
DEFAULT_MIN_AGE_SECONDS = 2.0

IMPORTED = "imported"
REJECTED = "rejected"


@dataclass(frozen=True)
class InboxOutcome:
    """What happened to one dropped file."""

    market: str  # the directory name (a market key when valid)
    file: str  # the file name as dropped
    status: str  # "imported" | "rejected"
    rows_read: int = 0
    rows_written: int = 0  # inserted + updated; 0 when the same candles were already stored
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    windows: dict[str, int] = field(default_factory=dict)  # window key -> candles written in it
    problems: list[str] = field(default_factory=list)  # why a file was rejected (every problem)
    notes: list[str] = field(default_factory=list)  # for imported files: gaps, history before RL_WINDOW_START
    moved_to: str | None = None  # where the file is now
    report: str | None = None  # the rejection report beside it

    @property
    def windows_touched(self) -> list[str]:
        return sorted(self.windows)

    def describe(self) -> str:
        if self.status == IMPORTED:
            where = ", ".join(f"{k} ({n})" for k, n in sorted(self.windows.items())) or "no window changed"
            text = (
                f"{self.market}/{self.file}: imported {self.rows_read} rows; inserted {self.inserted}, "
                f"updated {self.updated}, unchanged {self.unchanged}; windows: {where}"
            )
            return "\n".join([text, *(f"  {n}" for n in self.notes)])
        lines = [f"{self.market}/{self.file}: rejected, nothing written ({len(self.problems)} problem(s)); "
                 f"report: {self.report}"]
        lines += [f"  {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more (see the report)")
        return "\n".join(lines)


@dataclass(frozen=True)
class FeedOutcome:
    """Closed synthetic bars appended to one market by the live feed."""

    market: str
    rows_written: int
    start_us: int | None = None  # first bar appended (open time)
    end_us: int | None = None  # exclusive: the open time of the bar still forming
    windows: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- inbox


def default_scheme() -> WindowScheme:
    """The window scheme of `rl_lifecycle.orchestration.partitions.WINDOW_SCHEME`, without importing Dagster."""
    from rl_lifecycle.settings import load_settings

    return WindowScheme(load_settings().window_cadence)


def is_in_progress(path: Path, now: float, min_age_seconds: float) -> bool:
    """A file that may still be being written: hidden, a temporary suffix, or modified very recently."""
    name = path.name
    if name.startswith(".") or name.startswith("~") or name.lower().endswith(IN_PROGRESS_SUFFIXES):
        return True
    try:
        return now - path.stat().st_mtime < min_age_seconds
    except FileNotFoundError:  # renamed or removed under us
        return True


def pending_files(inbox_dir: Path, now: float | None = None, min_age_seconds: float = DEFAULT_MIN_AGE_SECONDS) -> list[Path]:
    """Complete files waiting in the inbox (in market directories and at its top), oldest first."""
    inbox_dir = Path(inbox_dir)
    if not inbox_dir.is_dir():
        return []
    now = time.time() if now is None else now
    found: list[Path] = []
    for entry in inbox_dir.iterdir():
        if entry.name.startswith(".") or (entry.is_dir() and entry.name in (IMPORTED_DIR, REJECTED_DIR)):
            continue  # <inbox>/rejected/ holds files dropped outside any market directory
        candidates = entry.iterdir() if entry.is_dir() else [entry]
        for path in candidates:
            if path.is_file() and not is_in_progress(path, now, min_age_seconds):
                found.append(path)

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    return sorted(found, key=lambda p: (mtime(p), str(p)))


def process_inbox(
    conn: psycopg.Connection,
    inbox_dir: str | Path,
    *,
    now: float | None = None,
    min_age_seconds: float = DEFAULT_MIN_AGE_SECONDS,
    max_files: int | None = None,
    scheme: WindowScheme | None = None,
    first_window: Window | None = None,
    create_market_dirs: bool = True,
) -> list[InboxOutcome]:
    """Import every complete file dropped in `<inbox>/<market key>/`; move each to imported/ or rejected/.

    `now` (epoch seconds) and `min_age_seconds` decide which files are complete; `max_files` bounds one
    call (the rest wait for the next); `scheme` maps candles to window keys (default: RL_WINDOW_CADENCE);
    `first_window` (the first `window` partition) adds a note when candles fall before it. With
    `create_market_dirs`, the inbox and a directory per registered imported market are created, so a
    user sees where to drop files. Database errors propagate and leave the file where it is (retried).
    """
    inbox_dir = Path(inbox_dir)
    scheme = scheme or default_scheme()
    records = {record.market.key: record for record in list_markets(conn)}
    if create_market_dirs:
        inbox_dir.mkdir(parents=True, exist_ok=True)
        for key, record in records.items():
            if record.source == "import":
                (inbox_dir / key).mkdir(exist_ok=True)
    files = pending_files(inbox_dir, now, min_age_seconds)
    if max_files is not None:
        files = files[: max(0, max_files)]
    return [
        _process_file(conn, inbox_dir, path, records, scheme, first_window)
        for path in files
        if path.exists()  # moved away by someone else since it was listed
    ]


def _process_file(
    conn: psycopg.Connection,
    inbox_dir: Path,
    path: Path,
    records: dict[str, MarketRecord],
    scheme: WindowScheme,
    first_window: Window | None,
) -> InboxOutcome:
    if path.parent == inbox_dir:  # dropped at the top of the inbox: no market
        return _reject(inbox_dir, "", path, [
            f"file {path.name!r} is not in a market directory; drop candle files in {inbox_dir}/<MARKET>/, "
            f"e.g. {inbox_dir}/BTCUSDT-1h/ (registered markets: {', '.join(sorted(records)) or 'none'})"
        ])
    directory = path.parent.name
    market_dir = path.parent
    record = _market_of(directory, records)
    if record is None:
        return _reject(market_dir, directory, path, [
            f"unknown market {directory!r}: no registered market has this key "
            f"(registered: {', '.join(sorted(records)) or 'none'}); register it with "
            f"`rl-lifecycle market add {directory}` and drop the file again"
        ])
    if not path.name.lower().endswith(SUPPORTED_SUFFIXES):
        return _reject(market_dir, directory, path, [
            f"unsupported file type {path.suffix or '(none)'!r}; expected a CSV (.csv, .txt, .zip, .gz) "
            "or Parquet (.parquet, .pq) candle file"
        ])

    seq_before = candle_write_seq(conn)
    try:
        result = ingest_file(conn, record.market, path, first_window=first_window)
    except (UserInputError, pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        return _reject(market_dir, directory, path, [str(exc)])
    report = result.report
    if result.refused:
        return _reject(market_dir, directory, path, _problems(report.bad), rows_read=result.rows_read,
                       summary=report.describe(max_rows=len(report.bad) or 1))

    stats = result.stats
    windows: dict[str, int] = {}
    if stats.written and report.good.height:
        ts = report.good["ts"].dt.epoch("us")
        windows = written_windows(conn, record.market, seq_before, int(ts.min()), int(ts.max()), scheme)
    notes = []
    if report.gaps:
        notes.append(f"{len(report.gaps)} gaps ({report.missing_bars} missing bars) reported, not filled")
    if report.duplicates_dropped:
        notes.append(f"{report.duplicates_dropped} exact duplicate rows dropped")
    if result.before_first_window and first_window is not None:
        notes.append(
            f"{result.before_first_window} candles (from {iso(result.first_ts)}) fall before the first window "
            f"partition {first_window.key}: stored, but those windows cannot be materialized"
        )
    moved = _move(path, market_dir / IMPORTED_DIR)
    return InboxOutcome(
        market=directory, file=path.name, status=IMPORTED, rows_read=result.rows_read,
        rows_written=stats.written, inserted=stats.inserted, updated=stats.updated, unchanged=stats.unchanged,
        windows=windows, notes=notes, moved_to=str(moved),
    )


def _market_of(directory: str, records: dict[str, MarketRecord]) -> MarketRecord | None:
    try:
        key = Market.parse(directory).key
    except UserInputError:
        return None
    return records.get(key)


def _problems(bad: pl.DataFrame) -> list[str]:
    """One line per bad row, with every reason (no truncation: the report lists every problem)."""
    lines = []
    for rec in bad.select("row", "ts_raw", "reasons").iter_rows(named=True):
        shown = "<empty>" if rec["ts_raw"] is None else repr(rec["ts_raw"])
        lines.append(f"row {rec['row']} ({shown}): " + "; ".join(rec["reasons"]))
    return lines


def _reject(
    target_dir: Path, market: str, path: Path, problems: list[str], *, rows_read: int = 0, summary: str | None = None
) -> InboxOutcome:
    """Move the file to `<target_dir>/rejected/` with a JSON report beside it listing every problem."""
    moved = _move(path, target_dir / REJECTED_DIR)
    report_path = moved.with_name(moved.name + REPORT_SUFFIX)
    outcome = InboxOutcome(
        market=market, file=path.name, status=REJECTED, rows_read=rows_read, problems=list(problems),
        moved_to=str(moved), report=str(report_path),
    )
    document = {
        "file": path.name,
        "market": market,
        "status": REJECTED,
        "rejected_at": datetime.now(UTC).isoformat(),
        "dropped_as": str(path),
        "moved_to": str(moved),
        "rows_read": rows_read,
        "problem_count": len(problems),
        "problems": list(problems),
        "summary": summary,
        "nothing_written": True,
        "next_step": "fix every problem listed and drop the file into the market directory again",
    }
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, report_path)
    return outcome


def _move(path: Path, directory: Path) -> Path:
    """Move `path` into `directory` under a UTC-timestamp prefix, never overwriting an earlier drop."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = directory / f"{stamp}_{path.name}"
    n = 1
    while target.exists():
        target = directory / f"{stamp}-{n}_{path.name}"
        n += 1
    os.replace(path, target)
    return target


# ---------------------------------------------------------------------------------- written windows


def written_windows(
    conn: psycopg.Connection, market: Market, seq_before: int, first_ts: int, last_ts: int, scheme: WindowScheme
) -> dict[str, int]:
    """Window key -> candles of `market` in [first_ts, last_ts] written after `seq_before` (a `candle_write_seq`)."""
    return windows_of(written_since(conn, market, seq_before, first_ts, last_ts), scheme)


def windows_of(ts_us: Iterable[int] | np.ndarray, scheme: WindowScheme) -> dict[str, int]:
    """Window key -> how many of these bar open times it contains."""
    ts = np.asarray(ts_us, dtype=np.int64)
    if ts.size == 0:
        return {}
    anchors, counts = np.unique(scheme.anchors(ts), return_counts=True)
    return {scheme.containing(int(a)).key: int(n) for a, n in zip(anchors, counts, strict=True)}


# -------------------------------------------------------------------------------------- live feed


def append_closed_bars(
    conn: psycopg.Connection, market_record: MarketRecord, now_us: int, *, max_bars: int | None = None,
    scheme: WindowScheme | None = None,
) -> int:
    """Append a synthetic market's bars closed since its last stored candle, up to `now_us`; returns rows written.

    The bars are the generator's (same seed -> the same bars as a full regeneration). A market with no
    candle yet starts at the window containing `now_us`. `max_bars` bounds one call (the rest follows on
    the next). An imported market is refused: its candles arrive through files.
    """
    return feed_market(conn, market_record, now_us, max_bars=max_bars, scheme=scheme).rows_written


def feed_market(
    conn: psycopg.Connection, market_record: MarketRecord, now_us: int, *, max_bars: int | None = None,
    scheme: WindowScheme | None = None,
) -> FeedOutcome:
    """`append_closed_bars` with the range and the windows written."""
    market = market_record.market
    if market_record.source != "synthetic":
        raise UserInputError(
            f"market {market.key} is {market_record.source!r}, not synthetic: its candles arrive through "
            "`rl-lifecycle ingest` or the inbox, not the live feed"
        )
    scheme = scheme or default_scheme()
    last = newest_candle_ts(conn, market)
    start = scheme.containing(now_us).start if last is None else last + market.interval_us
    end = closed_bars_end(now_us, market.interval_us)
    if max_bars is not None:
        end = min(end, start + max(0, max_bars) * market.interval_us)
    if end <= start:
        return FeedOutcome(market.key, 0)
    seq_before = candle_write_seq(conn)
    stats = ingest_synthetic(conn, market, start, end, int(market_record.synthetic_seed))
    windows = written_windows(conn, market, seq_before, start, end - 1, scheme) if stats.written else {}
    return FeedOutcome(market.key, stats.written, start, end, windows)


def feed_synthetic_markets(
    conn: psycopg.Connection, now_us: int, *, max_bars: int | None = None, scheme: WindowScheme | None = None
) -> list[FeedOutcome]:
    """`feed_market` for every registered synthetic market; only the markets that got bars are returned."""
    outcomes = []
    for record in list_markets(conn):
        if record.source == "synthetic":
            outcome = feed_market(conn, record, now_us, max_bars=max_bars, scheme=scheme)
            if outcome.rows_written:
                outcomes.append(outcome)
    return outcomes


def outcome_dict(outcome: InboxOutcome | FeedOutcome) -> dict:
    """A JSON-friendly view (for logs and metadata)."""
    return asdict(outcome)
