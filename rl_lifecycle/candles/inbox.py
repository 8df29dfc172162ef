"""Live ingestion: candle files dropped into the inbox, and a live feed of closed synthetic bars.

Inbox layout (`Settings.inbox_dir`, i.e. `$RL_HOME/inbox`)::

    inbox/
      BTCUSDT-1h/                  one directory per registered market (its key)
        new-candles.csv.partial    being written: ignored
        new-candles.csv            renamed when complete; imported once settled
        imported/20240301T120000.123456Z_new-candles.csv
        rejected/20240301T120000.123456Z_bad.csv
        rejected/20240301T120000.123456Z_bad.csv.report.json

A file is imported through exactly the path of `rl-lifecycle ingest` (`candles.service.ingest_file`,
without quarantine, within the same `IntakeLimits`): the whole file is validated, and any bad row refuses
it with nothing written.

Only complete files are taken. The convention: write `name.csv.partial` (or `.part`/`.tmp`, or a hidden
`.name`), then rename it to `name.csv`, which is atomic on one filesystem. As a second guard a file is
taken only once it has settled: its mtime is at least `settle_seconds` (RL_INBOX_SETTLE_SECONDS) old and,
when the caller keeps `seen` between calls (the sensor does, in its cursor), its size, mtime and inode
were the same on an earlier look at least `settle_seconds` before. A file still changing waits.

The inbox never follows a link: entries are listed with lstat and files opened with O_NOFOLLOW, and a
symbolic link, FIFO, socket, device or directory dropped where a file belongs is moved to `rejected/`
with a report, without being opened or read. `imported/` and `rejected/` must be real directories
inside the inbox: they are opened with O_NOFOLLOW and written only through those handles, so a link
there is refused (the file stays, unread, with status `refused`) and nothing is written outside.

Plain Python: no Dagster here (the sensors in `rl_lifecycle.orchestration.automation.inbox` adapt it).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg

from rl_lifecycle.candles.limits import IntakeLimits, excerpt
from rl_lifecycle.candles.service import ingest_file, ingest_synthetic
from rl_lifecycle.candles.store import candle_write_seq, newest_candle_ts, written_since
from rl_lifecycle.candles.validation import bad_row_line
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import MarketRecord, list_markets
from rl_lifecycle.windows import Window, WindowScheme, closed_bars_end, iso

IMPORTED_DIR = "imported"
REJECTED_DIR = "rejected"
REPORT_SUFFIX = ".report.json"
PARTIAL_SUFFIX = ".partial"  # the convention: write `name.csv.partial`, then rename it to `name.csv`
SUPPORTED_SUFFIXES = (".csv", ".txt", ".parquet", ".pq", ".zip", ".gz")
IN_PROGRESS_SUFFIXES = (".tmp", ".part", PARTIAL_SUFFIX, ".crdownload", ".download", ".swp")
DEFAULT_SETTLE_SECONDS = 10.0  # RL_INBOX_SETTLE_SECONDS's default
MAX_REPORTED_PROBLEMS = 1000  # a report lists this many problems and counts the rest
MAX_PROBLEM_CHARS = 2000  # one problem's text, whatever raised it
MAX_TRACKED_FILES = 1000  # files whose settling is followed at once (the oldest first)

IMPORTED = "imported"
REJECTED = "rejected"
REFUSED = "refused"  # left where it is, unread: the inbox cannot move it safely (see `problems`)

_O_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(frozen=True)
class InboxOutcome:
    """What happened to one dropped file."""

    market: str  # the directory name (a market key when valid)
    file: str  # the file name as dropped
    status: str  # "imported" | "rejected" | "refused"
    rows_read: int = 0
    rows_written: int = 0  # inserted + updated; 0 when the same candles were already stored
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    windows: dict[str, int] = field(default_factory=dict)  # window key -> candles written in it
    problems: list[str] = field(default_factory=list)  # why a file was rejected (the first MAX_REPORTED_PROBLEMS)
    notes: list[str] = field(default_factory=list)  # for imported files: gaps, history before RL_WINDOW_START
    moved_to: str | None = None  # where the file is now
    report: str | None = None  # the rejection report beside it
    problem_count: int = 0  # every problem, also those beyond `problems`
    not_regular: str | None = None  # what a rejected entry was when not a regular file ("a symbolic link"), unread
    signature: str = ""  # size and mtime (ns) of the entry as dropped: tells two drops of one name apart (alerts)

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
        count = max(self.problem_count, len(self.problems))
        if self.status == REFUSED:
            lines = [f"{self.market}/{self.file}: refused, left in place unread, nothing written"]
        else:
            lines = [f"{self.market}/{self.file}: rejected, nothing written ({count} problem(s)); "
                     f"report: {self.report}"]
        lines += [f"  {p}" for p in self.problems[:20]]
        if count > 20:
            lines.append(f"  ... and {count - 20} more (see the report)")
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


def is_in_progress(name: str) -> bool:
    """A name still being written by the convention: hidden, or a temporary suffix (`.partial`, `.part`, ...)."""
    return name.startswith(".") or name.startswith("~") or name.lower().endswith(IN_PROGRESS_SUFFIXES)


@dataclass(frozen=True)
class _Entry:
    """One thing found in the inbox, as lstat saw it (never following a link)."""

    market: str  # its market directory's name; "" at the top of the inbox
    name: str
    info: os.stat_result

    @property
    def key(self) -> str:
        return f"{self.market}/{self.name}"

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.info.st_mode)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _list(inbox_fd: int) -> list[_Entry]:
    """Every entry waiting at the top of the inbox and in its market directories (none followed)."""
    found: list[_Entry] = []
    with os.scandir(inbox_fd) as top:
        tops = [(e.name, e.stat(follow_symlinks=False)) for e in top]
    for name, info in tops:
        if is_in_progress(name) or name in (IMPORTED_DIR, REJECTED_DIR):
            continue  # <inbox>/rejected/ holds what was dropped outside any market directory
        if not stat.S_ISDIR(info.st_mode):
            found.append(_Entry("", name, info))
            continue
        try:
            market_fd = os.open(name, _O_NOFOLLOW_DIR, dir_fd=inbox_fd)
        except OSError:  # replaced (by a link) since it was listed: looked at again next time
            continue
        try:
            with os.scandir(market_fd) as inner:
                found += [_Entry(name, e.name, e.stat(follow_symlinks=False)) for e in inner
                          if not is_in_progress(e.name) and e.name not in (IMPORTED_DIR, REJECTED_DIR)]
        finally:
            os.close(market_fd)
    return sorted(found, key=lambda e: (e.info.st_mtime_ns, e.key))


def _settled(entry: _Entry, now: float, settle_seconds: float, seen: MutableMapping[str, list] | None) -> bool:
    """Whether a regular file has stopped changing (see the module doc); records what was seen."""
    signature = [entry.info.st_size, entry.info.st_mtime_ns, entry.info.st_ino]
    old_enough = now - entry.info.st_mtime >= settle_seconds
    if seen is None:
        return old_enough
    previous = seen.get(entry.key)
    if previous is None or list(previous[:3]) != signature:
        seen[entry.key] = [*signature, now]
        return False
    return old_enough and now - previous[3] >= settle_seconds


def process_inbox(
    conn: psycopg.Connection,
    inbox_dir: str | Path,
    *,
    now: float | None = None,
    settle_seconds: float | None = None,
    seen: MutableMapping[str, list] | None = None,
    max_files: int | None = None,
    scheme: WindowScheme | None = None,
    first_window: Window | None = None,
    create_market_dirs: bool = True,
    limits: IntakeLimits | None = None,
) -> list[InboxOutcome]:
    """Import every complete file dropped in `<inbox>/<market key>/`; move each to imported/ or rejected/.

    `now` (epoch seconds), `settle_seconds` (default RL_INBOX_SETTLE_SECONDS) and `seen` decide which files
    are complete (module doc): `seen` maps what this call saw (size, mtime, inode, when) and is updated in
    place, so a caller that keeps it between calls (the sensor's cursor) takes a file only once it is seen
    unchanged twice. `max_files` bounds one call (the rest wait for the next); `scheme` maps candles to
    window keys (default: RL_WINDOW_CADENCE); `first_window` (the first `window` partition) adds a note when
    candles fall before it; `limits` bound each file (default: RL_INGEST_*). With `create_market_dirs`, the
    inbox and a directory per registered imported market are created, so a user sees where to drop files.
    Database errors propagate and leave the file where it is (retried).
    """
    inbox_dir = Path(inbox_dir)
    if settle_seconds is None or limits is None:
        from rl_lifecycle.settings import load_settings

        settings = load_settings()
        settle_seconds = settings.inbox_settle_seconds if settle_seconds is None else settle_seconds
        limits = limits or IntakeLimits.from_settings(settings)
    scheme = scheme or default_scheme()
    now = time.time() if now is None else now
    records = {record.market.key: record for record in list_markets(conn)}
    if create_market_dirs:
        inbox_dir.mkdir(parents=True, exist_ok=True)
    if not inbox_dir.is_dir():
        return []
    inbox_fd = os.open(inbox_dir, os.O_RDONLY | os.O_DIRECTORY)  # the inbox itself is the operator's: followed
    try:
        if create_market_dirs:
            for key, record in records.items():
                if record.source == "import":
                    _mkdir(inbox_fd, key)
        entries = _list(inbox_fd)
        if seen is not None:
            listed = {e.key for e in entries}
            for key in [k for k in seen if k not in listed]:
                del seen[key]
        work, tracked = [], 0
        for entry in entries:
            if entry.regular:  # links and other entries are refused at once, unread
                tracked += 1
                if tracked > MAX_TRACKED_FILES or not _settled(entry, now, settle_seconds, seen):
                    continue
            work.append(entry)
        if max_files is not None:
            work = work[: max(0, max_files)]
        outcomes = []
        for entry in work:
            outcome = _process_entry(conn, inbox_dir, inbox_fd, entry, records, scheme, first_window, limits)
            if outcome is not None:
                outcome = replace(outcome, signature=f"{entry.info.st_size}:{entry.info.st_mtime_ns}")
                outcomes.append(outcome)
                if seen is not None and outcome.status != REFUSED:
                    seen.pop(entry.key, None)
        return outcomes
    finally:
        os.close(inbox_fd)


def _mkdir(dir_fd: int, name: str) -> None:
    try:
        os.mkdir(name, dir_fd=dir_fd)
    except FileExistsError:
        pass


class _UnsafeDirectory(Exception):
    """`imported/` or `rejected/` is not a real directory inside the inbox."""


@contextmanager
def _directory(parent_fd: int, name: str, shown: Path) -> Iterator[int]:
    """`name` under `parent_fd` as a real directory (created when missing), opened without following links."""
    _mkdir(parent_fd, name)
    try:
        fd = os.open(name, _O_NOFOLLOW_DIR, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise _UnsafeDirectory(
            f"{shown} is not a real directory ({_kind(os.lstat(name, dir_fd=parent_fd).st_mode)}): the inbox writes "
            f"only into real directories inside it, so nothing was moved or written; replace it with a directory "
            f"(rm {shown} && mkdir {shown}) and the file is taken on a later tick"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class _Place:
    """Where an entry lives and where it goes: directory handles inside the inbox, never following a link."""

    source_fd: int  # the directory holding the entry
    imported_fd: int | None
    rejected_fd: int
    shown: Path  # the entry's directory, for messages and outcome paths


def _process_entry(
    conn: psycopg.Connection,
    inbox_dir: Path,
    inbox_fd: int,
    entry: _Entry,
    records: dict[str, MarketRecord],
    scheme: WindowScheme,
    first_window: Window | None,
    limits: IntakeLimits,
) -> InboxOutcome | None:
    """One entry: refused when a destination is unsafe, else moved to imported/ or rejected/; None when gone."""
    shown = inbox_dir / entry.market if entry.market else inbox_dir
    try:
        source_fd = os.open(entry.market, _O_NOFOLLOW_DIR, dir_fd=inbox_fd) if entry.market else os.dup(inbox_fd)
    except OSError:
        return None  # the market directory went away or became a link: listed again next time
    try:
        try:
            with _directory(source_fd, REJECTED_DIR, shown / REJECTED_DIR) as rejected_fd:
                if entry.market:
                    with _directory(source_fd, IMPORTED_DIR, shown / IMPORTED_DIR) as imported_fd:
                        return _process_in(conn, _Place(source_fd, imported_fd, rejected_fd, shown), entry, records,
                                           scheme, first_window, limits)
                return _process_in(conn, _Place(source_fd, None, rejected_fd, shown), entry, records, scheme,
                                   first_window, limits)
        except _UnsafeDirectory as exc:
            return InboxOutcome(market=entry.market, file=entry.name, status=REFUSED, problems=[str(exc)],
                                problem_count=1)
    finally:
        os.close(source_fd)


def _process_in(
    conn: psycopg.Connection,
    place: _Place,
    entry: _Entry,
    records: dict[str, MarketRecord],
    scheme: WindowScheme,
    first_window: Window | None,
    limits: IntakeLimits,
) -> InboxOutcome | None:
    name, directory = entry.name, entry.market
    try:
        now_info = os.lstat(name, dir_fd=place.source_fd)
    except FileNotFoundError:
        return None  # moved away by someone else since it was listed
    if not stat.S_ISREG(entry.info.st_mode) or not stat.S_ISREG(now_info.st_mode):
        return _refuse_unread(place, entry, now_info.st_mode)
    if not directory:  # dropped at the top of the inbox: no market
        return _reject(place, entry, [
            f"file {name!r} is not in a market directory; drop candle files in {place.shown}/<MARKET>/, "
            f"e.g. {place.shown}/BTCUSDT-1h/ (registered markets: {', '.join(sorted(records)) or 'none'})"
        ], unread=True)
    record = _market_of(directory, records)
    if record is None:
        return _reject(place, entry, [
            f"unknown market {directory!r}: no registered market has this key "
            f"(registered: {', '.join(sorted(records)) or 'none'}); register it with "
            f"`rl-lifecycle market add {directory}` and drop the file again"
        ], unread=True)
    if not name.lower().endswith(SUPPORTED_SUFFIXES):
        return _reject(place, entry, [
            f"unsupported file type {Path(name).suffix or '(none)'!r}; expected a CSV (.csv, .txt, .zip, .gz) "
            "or Parquet (.parquet, .pq) candle file"
        ], unread=True)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=place.source_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link since the lstat above
            return _refuse_unread(place, entry, stat.S_IFLNK)
        raise
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return _refuse_unread(place, entry, opened.st_mode)
        if (opened.st_dev, opened.st_ino, opened.st_size, opened.st_mtime_ns) != (
                entry.info.st_dev, entry.info.st_ino, entry.info.st_size, entry.info.st_mtime_ns):
            return None  # replaced or written to since it was seen settled: it settles again first
        seq_before = candle_write_seq(conn)
        try:
            result = ingest_file(conn, record.market, place.shown / name, first_window=first_window, limits=limits,
                                 handle=handle)
        except (UserInputError, pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
            return _reject(place, entry, [excerpt(exc, MAX_PROBLEM_CHARS)])
    report = result.report
    if result.refused:
        shown_rows = min(report.bad.height, MAX_REPORTED_PROBLEMS) or 1
        return _reject(place, entry, _problems(report.bad), rows_read=result.rows_read, count=report.bad.height,
                       summary=report.describe(max_rows=shown_rows))

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
    moved = _move(place, name, place.imported_fd, IMPORTED_DIR)
    return InboxOutcome(
        market=directory, file=name, status=IMPORTED, rows_read=result.rows_read,
        rows_written=stats.written, inserted=stats.inserted, updated=stats.updated, unchanged=stats.unchanged,
        windows=windows, notes=notes, moved_to=str(moved),
    )


def _refuse_unread(place: _Place, entry: _Entry, mode: int) -> InboxOutcome:
    """A link or another non-regular entry: moved to rejected/ (the link itself, not what it points to), unread."""
    kind = _kind(mode)
    follow = " (the inbox never follows links)" if stat.S_ISLNK(mode) else ""
    return _reject(place, entry, [
        f"{entry.name!r} is {kind}, not a regular file{follow}: it was not opened or read. Copy the candle file "
        f"itself into {place.shown}/ (write NAME{PARTIAL_SUFFIX}, then rename it to NAME)"
    ], unread=True, not_regular=kind)


def _market_of(directory: str, records: dict[str, MarketRecord]) -> MarketRecord | None:
    try:
        key = Market.parse(directory).key
    except UserInputError:
        return None
    return records.get(key)


def _problems(bad: pl.DataFrame) -> list[str]:
    """One line per bad row with every reason, each quoting at most a short excerpt; the first MAX_REPORTED_PROBLEMS."""
    return [bad_row_line(rec["row"], rec["ts_raw"], rec["reasons"])
            for rec in bad.head(MAX_REPORTED_PROBLEMS).select("row", "ts_raw", "reasons").iter_rows(named=True)]


def _reject(
    place: _Place, entry: _Entry, problems: list[str], *, rows_read: int = 0, count: int | None = None,
    summary: str | None = None, unread: bool = False, not_regular: str | None = None,
) -> InboxOutcome:
    """Move the entry to `rejected/` with a JSON report beside it listing its problems (no file content
    beyond short excerpts)."""
    moved = _move(place, entry.name, place.rejected_fd, REJECTED_DIR)
    report_name = moved.name + REPORT_SUFFIX
    report_path = moved.with_name(report_name)
    count = len(problems) if count is None else count
    shown = [excerpt(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_REPORTED_PROBLEMS]]
    outcome = InboxOutcome(
        market=entry.market, file=entry.name, status=REJECTED, rows_read=rows_read, problems=shown,
        moved_to=str(moved), report=str(report_path), problem_count=count, not_regular=not_regular,
    )
    document = {
        "file": entry.name,
        "market": entry.market,
        "status": REJECTED,
        "rejected_at": datetime.now(UTC).isoformat(),
        "dropped_as": str(place.shown / entry.name),
        "moved_to": str(moved),
        "read": not unread,
        "not_a_regular_file": not_regular,
        "rows_read": rows_read,
        "problem_count": count,
        "problems": shown,
        "problems_not_listed": count - len(shown),
        "summary": summary,
        "nothing_written": True,
        "next_step": "fix every problem listed and drop the file into the market directory again",
    }
    tmp = report_name + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=place.rejected_fd)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, report_name, src_dir_fd=place.rejected_fd, dst_dir_fd=place.rejected_fd)
    return outcome


def _move(place: _Place, name: str, target_fd: int, target_dir: str) -> Path:
    """Move `name` (the entry itself: a link is not followed) into the opened `target_dir` under a UTC-timestamp
    prefix, never overwriting an earlier drop."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = f"{stamp}_{name}"
    n = 1
    while _exists(target, target_fd):
        target = f"{stamp}-{n}_{name}"
        n += 1
    os.rename(name, target, src_dir_fd=place.source_fd, dst_dir_fd=target_fd)
    return place.shown / target_dir / target


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


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
