"""Read a candle file (CSV or Parquet; Binance klines or generic OHLCV) into raw, unvalidated rows.

The importer is deliberately forgiving at the row level and strict at the file level:

- A file is streamed through `IntakeLimits` (`rl_lifecycle.candles.limits`: size as stored, size
  decompressed, columns, line length, rows) before anything is parsed, so a decompression bomb or a
  file of millions of columns is refused in constant memory; only the candle columns are then parsed.

- A file that cannot be understood (missing, empty, required columns absent, no time column,
  ambiguous date order) raises `UserInputError` naming every such problem at once.
- A row whose timestamp or number cannot be parsed keeps a null in that cell; `validation`
  then reports it with the row number, so a user sees every bad row in one pass.

Everything on the data path is a polars expression: no per-row Python.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl

from rl_lifecycle.candles.frame import VALUE_COLUMNS
from rl_lifecycle.candles.limits import CsvScan, IntakeLimits, excerpt, quoted, refuse
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.windows import DAY_US as _DAY_US

__all__ = [
    "BINANCE_KLINE_COLUMNS",
    "EPOCH_FORMATS",
    "RAW_SCHEMA",
    "TS_COLUMN_NAMES",
    "RawCandles",
    "parse_timestamps",
    "read_candle_file",
]

# The 12 columns of https://data.binance.vision kline CSVs (their files usually have no header).
BINANCE_KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
    "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)
# Names (lower-cased, trimmed) recognised as the time column, best first. `date` comes last so that a
# file with both a full timestamp column and a date column uses the timestamp.
TS_COLUMN_NAMES = (
    "timestamp", "datetime", "date_time", "date time", "open_time", "open time", "gmt time",
    "utc time", "time (utc)", "local time", "ts", "time", "date",
)
# Headers pandas writes for an unnamed index column (CSV: blank; Parquet: __index_level_0__).
_UNNAMED_NAMES = ("", "__index_level_0__")
EPOCH_FORMATS = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1, "epoch_ns": -1_000}
RAW_SCHEMA = {
    "row": pl.Int64,
    "ts_raw": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    **{c: pl.Float64 for c in VALUE_COLUMNS},
}

_CSV_EXTENSIONS = (".csv", ".txt")
_PARQUET_EXTENSIONS = (".parquet", ".pq")
_CHUNK = 1 << 20  # bytes per read while a file is streamed through the limits
_MAX_ZIP_ENTRIES = 100  # a candle zip holds one CSV (and perhaps a readme); more is not a candle file
_MAX_PARQUET_FOOTER = 16 << 20  # Parquet metadata grows with columns x row groups; real files have kilobytes

# Time-of-day and offset parts shared by the two date layouts. Offsets: Z, UTC, GMT, +05:30, -0200,
# `GMT+0100` (Dukascopy "Local time").
_TIME_RE = r"(?:(?:T|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
_TZ_RE = r"\s*(?:Z|UTC|GMT)?\s*(?:([+-])(\d{2}):?(\d{2})?)?"
_YMD_RE = rf"^(\d{{4}})[-/.](\d{{1,2}})[-/.](\d{{1,2}}){_TIME_RE}{_TZ_RE}$"
# Day-first or month-first: decided per column, see `_day_first`.
_XXY_RE = rf"^(\d{{1,2}})([-/.])(\d{{1,2}})[-/.](\d{{4}}){_TIME_RE}{_TZ_RE}$"
_EPOCH_RE = r"^[+-]?\d+(?:\.\d*)?$"
_TIME_OF_DAY_RE = r"^\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?$"


@dataclass(frozen=True)
class RawCandles:
    """Rows as read from a file, before validation.

    `frame` has RAW_SCHEMA: `row` (1-based line number in the file, header included; for Parquet the
    1-based row index), `ts_raw` (original text), `ts` (null when unparseable) and the five values
    (null when missing or unparseable). `unparsed` lists (row, column, text) for every non-empty
    number cell that did not parse, so validation can quote it.
    """

    frame: pl.DataFrame
    path: str
    source: str
    ts_column: str
    ts_format: str
    unparsed: pl.DataFrame

    def __len__(self) -> int:
        return self.frame.height


def read_candle_file(
    path: str | Path, *, ts_column: str | None = None, ts_format: str | None = None, ts_timezone: str | None = None,
    limits: IntakeLimits | None = None, handle: BinaryIO | None = None,
) -> RawCandles:
    """Read a CSV/Parquet candle file; file-level problems raise UserInputError, row-level ones become nulls.

    `ts_column` names the time column (case-insensitive); `ts_format` is a strptime format
    (`%d.%m.%Y %H:%M:%S.%f`) or one of `epoch_s|epoch_ms|epoch_us|epoch_ns`; `ts_timezone` is the IANA
    zone of date-times written without an offset (default UTC), e.g. an exchange's local time.
    `limits` bound what the file may hold (default: the RL_INGEST_* settings). `handle`: the file already
    opened by the caller (the inbox opens it without following links); `path` then only names it.
    """
    file = Path(path)
    if ts_format is not None and not ts_format.strip():
        raise UserInputError("--ts-format is empty; pass a strptime format or epoch_s|epoch_ms|epoch_us|epoch_ns")
    if ts_timezone is not None:
        ts_timezone = check_timezone(ts_timezone)
    limits = limits or IntakeLimits.from_settings()
    if handle is not None:
        return _read_open_file(file, handle, limits, ts_column, ts_format, ts_timezone)
    with open_candle_file(file) as opened:
        return _read_open_file(file, opened, limits, ts_column, ts_format, ts_timezone)


@contextmanager
def open_candle_file(file: Path) -> Iterator[BinaryIO]:
    """Open a candle file for reading; what cannot be opened, or is not a regular file, is refused.

    O_NONBLOCK: a FIFO or a device given as a candle file is refused, never waited on.
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise UserInputError(f"candle file {str(file)!r} does not exist") from None
    except PermissionError:
        raise UserInputError(f"candle file {str(file)!r} cannot be read: permission denied") from None
    except OSError as exc:
        raise UserInputError(f"candle file {str(file)!r} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        yield handle


def _read_open_file(
    file: Path, handle: BinaryIO, limits: IntakeLimits, ts_column: str | None, ts_format: str | None,
    ts_timezone: str | None,
) -> RawCandles:
    label = str(file)
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise UserInputError(f"candle file {label!r} is not a regular file")
    if info.st_size == 0:
        raise UserInputError(f"candle file {label!r} is empty")
    if info.st_size > limits.max_file_bytes:
        raise refuse(label, f"is {info.st_size} bytes, over", limits.max_file_bytes, "RL_INGEST_MAX_FILE_BYTES")

    kind = _file_kind(file, handle)
    if kind == "parquet":
        table, names, all_names = _read_parquet_table(file, handle, info.st_size, limits, ts_column)
        rows = pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
        layout = "Parquet"
    else:
        data, skipped_lines = _csv_text(file, handle, kind, info.st_size, limits)
        table, names, rows, layout, all_names = _read_csv_table(file, data, skipped_lines, ts_column)
        del data

    roles = _resolve_columns(file, table, names, ts_column, all_names)
    if kind == "parquet":
        _check_parquet_types(file, table, names, roles)
    frame, unparsed, ts_desc = _build_frame(file, table, roles, rows, ts_format, ts_timezone,
                                            drop_blank=kind != "parquet")
    if frame.height == 0:
        raise UserInputError(f"candle file {label!r} has no data rows")
    ts_names = [names[table.columns.index(c)].strip() or "<unnamed>" for c in roles["ts"]]
    source = f"{file} ({layout}; time column {' + '.join(map(repr, ts_names))}: {ts_desc})"
    return RawCandles(
        frame=frame, path=label, source=source, ts_column=" + ".join(ts_names),
        ts_format=ts_desc, unparsed=unparsed,
    )


# --------------------------------------------------------------------------------------------- files


def _file_kind(file: Path, handle: BinaryIO) -> str:
    """csv | parquet | zip | gzip: by extension, else by magic bytes."""
    name = file.name.lower()
    if name.endswith(_PARQUET_EXTENSIONS):
        return "parquet"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(_CSV_EXTENSIONS):
        return "csv"
    handle.seek(0)
    magic = handle.read(4)
    if magic == b"PAR1":
        return "parquet"
    if magic.startswith(b"PK\x03\x04"):
        return "zip"
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    return "csv"


@contextmanager
def _unreadable(label: str, kind: str) -> Iterator[None]:
    """Errors of the decompressors and readers as the UserInputError they are (limits pass through)."""
    try:
        yield
    except UserInputError:
        raise
    except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            ValueError, pl.exceptions.PolarsError) as exc:  # polars: ComputeError/NoDataError; the message is what matters
        what = {"gzip": "gzip", "zip": "zip", "parquet": "Parquet"}.get(kind, "CSV")
        raise UserInputError(f"candle file {label!r} is not a readable {what} file: {excerpt(exc)}") from exc


@contextmanager
def _csv_stream(file: Path, handle: BinaryIO, kind: str, limits: IntakeLimits) -> Iterator[BinaryIO]:
    """The CSV text as a stream; Binance publishes single-member zips, so those are opened transparently."""
    handle.seek(0)
    if kind == "gzip":
        with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
            yield stream
    elif kind == "zip":
        _check_zip_directory(file, handle)
        with zipfile.ZipFile(handle) as archive:
            member = _zip_member(file, archive, limits)
            with archive.open(member) as stream:
                yield stream
    else:
        yield handle


def _check_zip_directory(file: Path, handle: BinaryIO) -> None:
    """Refuse a zip of many entries before `ZipFile` builds an object for each of them."""
    end = zipfile._EndRecData(handle)  # the end-of-central-directory record: entry count, directory size
    if end is None:
        raise zipfile.BadZipFile("File is not a zip file")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]
    if entries > _MAX_ZIP_ENTRIES:
        raise UserInputError(
            f"zip file {str(file)!r} holds {entries} entries; a candle zip holds exactly one CSV file"
        )
    handle.seek(0)


def _zip_member(file: Path, archive: zipfile.ZipFile, limits: IntakeLimits) -> zipfile.ZipInfo:
    members = [m for m in archive.infolist() if not m.is_dir()]
    csvs = [m for m in members if m.filename.lower().endswith(_CSV_EXTENSIONS)] or members
    if len(csvs) != 1:
        names = [m.filename for m in members]
        raise UserInputError(
            f"zip file {str(file)!r} must hold exactly one CSV; it holds {excerpt(names) if names else 'nothing'}"
        )
    member = csvs[0]
    if member.file_size > limits.max_decompressed_bytes:  # as declared; the stream is counted all the same
        raise refuse(str(file), f"declares {member.file_size} bytes of CSV text, over", limits.max_decompressed_bytes,
                     "RL_INGEST_MAX_DECOMPRESSED_BYTES")
    return member


def _csv_text(file: Path, handle: BinaryIO, kind: str, size: int, limits: IntakeLimits) -> tuple[bytes, int]:
    """The CSV text from its header line on (BOM and leading blank lines dropped), and how many blank lines.

    First pass: the whole text is streamed through `CsvScan` and nothing is kept, so whatever breaks a
    limit is refused in constant memory. Second pass: the text is read (now known to be within the
    limits) and scanned again, since the file may have changed in between.
    """
    label = str(file)
    compressed = kind != "csv"
    first = CsvScan(label, limits, compressed=compressed)
    with _unreadable(label, kind), _csv_stream(file, handle, kind, limits) as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            first.feed(chunk)
    first.finish()
    if first.header_offset is None:
        raise UserInputError(f"candle file {label!r} is empty")

    again = CsvScan(label, limits, compressed=compressed)
    with _unreadable(label, kind), _csv_stream(file, handle, kind, limits) as stream:
        skip = first.header_offset
        while skip > 0 and (chunk := stream.read(min(_CHUNK, skip))):
            again.feed(chunk)
            skip -= len(chunk)
        wanted = limits.max_decompressed_bytes - first.header_offset + 1
        data = stream.read(min(wanted, size + 1) if kind == "csv" else wanted)
    view = memoryview(data)
    for offset in range(0, len(data), _CHUNK):
        again.feed(view[offset:offset + _CHUNK])
    again.finish()
    view.release()
    if (again.header_offset, again.total) != (first.header_offset, first.total):
        raise UserInputError(f"candle file {label!r} changed while it was being read; import it once it is complete")
    return data, first.skipped_lines


def _candidate_columns(names: list[str], ts_column: str | None) -> list[int]:
    """Indices of the columns that can play a role (time, OHLCV, an unnamed index): the only ones parsed."""
    wanted = {*VALUE_COLUMNS, *TS_COLUMN_NAMES, *_UNNAMED_NAMES}
    if ts_column is not None:
        wanted.add(ts_column.strip().lower())
    norm = [n.strip().lower() for n in names]
    return sorted({0, *(i for i, n in enumerate(norm) if n in wanted or n.startswith("unnamed:"))})


def _read_csv_table(
    file: Path, data: bytes, skipped_lines: int, ts_column: str | None
) -> tuple[pl.DataFrame, list[str], pl.Expr, str, list[str]]:
    """String table of the candidate columns, their display names, the row-number expression, a layout
    label, and the names of every column (for messages)."""
    newline = data.find(b"\n")
    first_line = (data if newline < 0 else data[:newline]).decode("utf-8", errors="replace")
    separator = _sniff_separator(first_line)
    # has_header=False: we decide about the header ourselves, and polars keeps blank lines as
    # null rows, so the polars row index is the file's line index (quoted newlines aside).
    options = dict(has_header=False, infer_schema=False, separator=separator, truncate_ragged_lines=True,
                   encoding="utf8-lossy")
    with _unreadable(str(file), "csv"):
        head = pl.read_csv(data, n_rows=1, **options)
    if head.height == 0:
        raise UserInputError(f"candle file {str(file)!r} is empty")

    first = [("" if v is None else str(v)).strip().strip('"').strip() for v in head.row(0)]
    has_header = _looks_like_header(first)
    ncols = len(first)
    if has_header:
        names = first
        layout = (
            "CSV, Binance kline layout with header"
            if [n.lower() for n in names] == list(BINANCE_KLINE_COLUMNS) else "CSV, generic OHLCV with header"
        )
    elif ncols == len(BINANCE_KLINE_COLUMNS):
        names, layout = list(BINANCE_KLINE_COLUMNS), "CSV, Binance kline layout without header"
    elif ncols == 6:
        names, layout = ["time", *VALUE_COLUMNS], "CSV without header, read as time,open,high,low,close,volume"
    else:
        raise UserInputError(
            f"candle file {str(file)!r} has no header row and {ncols} columns; expected a header naming the "
            f"columns, 12 columns (Binance kline) or 6 columns (time, open, high, low, close, volume)"
        )
    wanted = _candidate_columns(names, ts_column)
    with _unreadable(str(file), "csv"):
        table = pl.read_csv(data, columns=wanted, **options)
    if has_header:
        table = table.slice(1)
    # Line number: polars index + 1, +1 more when the header line was consumed, + leading blank lines.
    rows = pl.int_range(0, pl.len(), dtype=pl.Int64) + (1 + int(has_header) + skipped_lines)
    return table, [names[i] for i in wanted], rows, layout, names


def _read_parquet_table(
    file: Path, handle: BinaryIO, size: int, limits: IntakeLimits, ts_column: str | None
) -> tuple[pl.DataFrame, list[str], list[str]]:
    """The candidate columns of a Parquet file, their names, and every column's name.

    Columns, rows and the uncompressed size of the columns read are checked on the file's metadata first.
    """
    import pyarrow.parquet as pq

    label = str(file)
    with _unreadable(label, "parquet"):
        handle.seek(max(0, size - 8))
        tail = handle.read(8)
        if size < 12 or tail[4:] != b"PAR1":
            raise ValueError("no Parquet footer (the file does not end with PAR1)")
        footer = int.from_bytes(tail[:4], "little")
        if footer > _MAX_PARQUET_FOOTER:
            raise UserInputError(
                f"candle file {label!r} has {footer} bytes of Parquet metadata (at most {_MAX_PARQUET_FOOTER} are "
                "read): far more columns or row groups than a candle file has"
            )
        handle.seek(0)
        parquet = pq.ParquetFile(handle)
        names = list(parquet.schema_arrow.names)
        if len(names) > limits.max_columns:
            raise refuse(label, f"has {len(names)} columns, over", limits.max_columns, "RL_INGEST_MAX_COLUMNS",
                         bytes_=False)
        metadata = parquet.metadata
        if metadata.num_rows > limits.max_rows:
            raise refuse(label, f"has {metadata.num_rows} rows, over", limits.max_rows, "RL_INGEST_MAX_ROWS",
                         bytes_=False)
        wanted = _candidate_columns(names, ts_column)
        wanted_names = {names[i] for i in wanted}
        unpacked = sum(
            chunk.total_uncompressed_size
            for group in (metadata.row_group(g) for g in range(metadata.num_row_groups))
            for chunk in (group.column(c) for c in range(group.num_columns))
            if chunk.path_in_schema.split(".")[0] in wanted_names
        )
        if unpacked > limits.max_decompressed_bytes:
            raise refuse(label, f"holds {unpacked} bytes of uncompressed candle columns, over",
                         limits.max_decompressed_bytes, "RL_INGEST_MAX_DECOMPRESSED_BYTES")
        arrow = parquet.read(columns=[names[i] for i in wanted], use_pandas_metadata=False)
        table = pl.from_arrow(arrow)
        del arrow
    table.columns = [f"column_{i}" for i in wanted]  # names may repeat or be blank; roles map by position
    return table, [names[i] for i in wanted], names


def _check_parquet_types(file: Path, table: pl.DataFrame, names: list[str], roles: dict[str, list[str]]) -> None:
    """A Parquet column used as time or value must hold what can be read as one (not a list, a duration...)."""
    for role, columns in roles.items():
        for column in columns:
            dtype = table.schema[column]
            simple = (dtype in (pl.String, pl.Null, pl.Boolean) or dtype.is_numeric()
                      or isinstance(dtype, (pl.Categorical, pl.Enum)))
            if simple or (role == "ts" and (isinstance(dtype, pl.Datetime) or dtype == pl.Date)):
                continue
            name = names[table.columns.index(column)]
            if role == "ts":
                what, expected = "the time column", "timestamps, dates, epoch numbers or text; pass --ts-column to use another column"
            else:
                what, expected = f"the {role} column", "numbers (or text holding numbers)"
            raise UserInputError(
                f"candle file {str(file)!r}: column {name!r} ({what}) has type {dtype}, which cannot be read as "
                f"candles; it must hold {expected}"
            )


def _sniff_separator(line: str) -> str:
    counts = {sep: line.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _looks_like_header(fields: list[str]) -> bool:
    """A data row has numbers after its first field; a header has at least one name there."""
    rest = [f for f in fields[1:] if f]
    if not rest:
        return True
    return any(_as_float(f) is None for f in rest)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None



# ------------------------------------------------------------------------------------------- columns


def _resolve_columns(
    file: Path, table: pl.DataFrame, names: list[str], ts_column: str | None, all_names: list[str] | None = None
) -> dict[str, list[str]]:
    """Map roles (ts, open, ...) to table columns; raise once with every file-level problem.

    `names` are the display names of `table`'s columns; `all_names` every column's of the file (for the message).
    """
    norm = [n.strip().lower() for n in names]
    shown = [n if n.strip() else "<unnamed>" for n in (names if all_names is None else all_names)]
    problems: list[str] = []
    roles: dict[str, list[str]] = {}

    def columns_named(name: str) -> list[str]:
        return [table.columns[i] for i, n in enumerate(norm) if n == name]

    missing = []
    for role in VALUE_COLUMNS:
        hits = columns_named(role)
        if not hits:
            missing.append(role)
        elif len(hits) > 1:
            problems.append(f"column {role!r} appears {len(hits)} times")
        else:
            roles[role] = hits
    if missing:
        problems.append(f"missing required column(s) {', '.join(missing)}")

    if ts_column is not None:
        hits = columns_named(ts_column.strip().lower())
        if len(hits) == 1:
            roles["ts"] = hits
        elif not hits:
            problems.append(f"--ts-column {ts_column!r} is not a column of the file")
        else:
            problems.append(f"--ts-column {ts_column!r} matches {len(hits)} columns")
    else:
        found = _detect_ts_columns(table, norm)
        if found:
            roles["ts"] = found
        else:
            problems.append(
                "no time column found: expected one named " + "/".join(TS_COLUMN_NAMES)
                + " or an unnamed first column; pass --ts-column NAME"
            )
    if problems:
        raise UserInputError(
            f"candle file {str(file)!r} cannot be imported: " + "; ".join(problems)
            + f". Columns found: {excerpt(', '.join(shown))}"
        )
    return roles


def _detect_ts_columns(table: pl.DataFrame, norm: list[str]) -> list[str]:
    index = {n: table.columns[i] for i, n in reversed(list(enumerate(norm)))}
    # Some exports (MetaTrader) split the timestamp into a Date and a time-of-day Time column.
    if "date" in index and "time" in index and not any(n in index for n in TS_COLUMN_NAMES[:-2]):
        sample = table.get_column(index["time"]).drop_nulls().head(100)
        if sample.dtype == pl.String and sample.len() and sample.str.strip_chars().str.contains(_TIME_OF_DAY_RE).all():
            return [index["date"], index["time"]]
    for name in TS_COLUMN_NAMES:
        if name in index:
            return [index[name]]
    first = norm[0] if norm else None
    if first is not None and (first in _UNNAMED_NAMES or first.startswith("unnamed:")):
        return [table.columns[0]]
    if "__index_level_0__" in index:
        return [index["__index_level_0__"]]
    return []


# --------------------------------------------------------------------------------------------- frame


def _build_frame(
    file: Path, table: pl.DataFrame, roles: dict[str, list[str]], rows: pl.Expr, ts_format: str | None,
    ts_timezone: str | None, *, drop_blank: bool,
) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    ts_cols = roles["ts"]
    ts_source = (
        pl.concat_str([pl.col(c).cast(pl.String).str.strip_chars() for c in ts_cols], separator=" ", ignore_nulls=True)
        if len(ts_cols) > 1 else pl.col(ts_cols[0])
    )
    base = table.select(
        rows.alias("row"),
        ts_source.alias("_ts_src"),
        *[pl.col(roles[c][0]).alias(f"_{c}_src") for c in VALUE_COLUMNS],
    )
    if drop_blank:
        # Blank lines (often trailing) carry no candle: drop them rather than report them.
        blank = pl.all_horizontal(
            pl.col(c).is_null() | (pl.col(c).cast(pl.String).str.strip_chars() == "")
            for c in ["_ts_src", *(f"_{v}_src" for v in VALUE_COLUMNS)]
        )
        base = base.filter(~blank)

    ts, ts_desc = parse_timestamps(base.get_column("_ts_src"), ts_format, ts_timezone=ts_timezone, _file=file)
    wide = base.with_columns(
        ts.alias("ts"),
        *[_number(pl.col(f"_{c}_src"), base.schema[f"_{c}_src"]).alias(c) for c in VALUE_COLUMNS],
    )
    frame = wide.select(
        "row", _raw_text(pl.col("_ts_src"), base.schema["_ts_src"]).alias("ts_raw"), "ts", *VALUE_COLUMNS
    )
    # Keep the text of cells that failed to parse, so validation can quote it next to the row number.
    unparsed = pl.concat(
        [
            wide.filter(pl.col(c).is_null() & pl.col(f"_{c}_src").is_not_null())
            .select("row", pl.lit(c).alias("column"), _raw_text(pl.col(f"_{c}_src"), base.schema[f"_{c}_src"]).alias("text"))
            .filter(pl.col("text").str.strip_chars() != "")
            for c in VALUE_COLUMNS
        ]
    ).sort("row", "column")

    if frame.height and frame.get_column("ts").null_count() == frame.height:
        examples = excerpt(", ".join(quoted(v, 60) for v in frame.get_column("ts_raw").drop_nulls().head(3).to_list()))
        hint = "check --ts-format" if ts_format else "pass --ts-format (strptime format or epoch_s|epoch_ms|epoch_us|epoch_ns)"
        raise UserInputError(
            f"candle file {str(file)!r}: no value of the time column could be read as a timestamp "
            f"(e.g. {examples or 'all empty'}); {hint} or --ts-column"
        )
    return frame.cast(RAW_SCHEMA), unparsed, ts_desc  # type: ignore[arg-type]


def _raw_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    return expr if dtype == pl.String else expr.cast(pl.String)


def _number(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        # strict=False: an unparseable cell becomes null and is reported by validation with its row.
        return expr.str.strip_chars().cast(pl.Float64, strict=False)
    if dtype.is_numeric():
        return expr.cast(pl.Float64)
    return expr.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


# ---------------------------------------------------------------------------------------- timestamps


def check_timezone(name: str) -> str:
    """An IANA time zone name (`America/New_York`, `Europe/London`, `UTC`), or UserInputError."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise UserInputError(f"--ts-timezone {name!r} is not an IANA time zone (e.g. America/New_York, "
                             "Europe/London, UTC)") from None
    return name.strip()


# An explicit offset after a time of day: `...09:30Z`, `09:30:00+01:00`, `09:30 UTC`, `09:30:00.5-0500`.
_OFFSET_AFTER_TIME = r"(?i)\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)\s*$"


def parse_timestamps(
    values: pl.Series, ts_format: str | None = None, *, ts_timezone: str | None = None, _file: Path | None = None
) -> tuple[pl.Series, str]:
    """Parse a time column to Datetime(us, UTC) (null where unparseable) and describe the format used.

    Strings: ISO-like (`T` or space, optional fraction, `Z`/offset converted to UTC), day- or
    month-first dates with 4-digit years, date-only, or epoch numbers (unit by magnitude).
    Numbers: epoch, unit by magnitude. Datetimes: naive means UTC. `ts_format` overrides detection.
    With `ts_timezone`, date-times without an offset are that zone's wall-clock times; a wall-clock time
    that does not exist or occurs twice there (a DST change) is unparseable, so validation names its row.
    """
    ts, description = _parse_timestamps_as_utc(values, ts_format, _file)
    if ts_timezone is None or ts_timezone == "UTC":
        return ts, description
    where = f"candle file {str(_file)!r}: " if _file else ""
    if description.startswith("epoch") or ts_format in EPOCH_FORMATS:
        raise UserInputError(f"{where}--ts-timezone is for local date-times; epoch values are UTC already")
    if isinstance(values.dtype, pl.Datetime) and values.dtype.time_zone:
        raise UserInputError(f"{where}--ts-timezone: the time column carries its own zone ({values.dtype.time_zone})")
    if ts_format and ("%z" in ts_format or "%Z" in ts_format):
        raise UserInputError(f"{where}--ts-timezone is for date-times without an offset; --ts-format {ts_format!r} "
                             "reads one")
    if values.dtype == pl.String:
        with_offset = values.filter(values.str.contains(_OFFSET_AFTER_TIME))
        if len(with_offset):
            raise UserInputError(f"{where}--ts-timezone is for date-times without an offset, but "
                                 f"{quoted(with_offset[0], 60)} has one")
    local = (ts.dt.replace_time_zone(None)
             .dt.replace_time_zone(ts_timezone, ambiguous="null", non_existent="null")
             .dt.convert_time_zone("UTC"))
    return local.alias("ts"), f"{description}, local time {ts_timezone}"


def _parse_timestamps_as_utc(
    values: pl.Series, ts_format: str | None, _file: Path | None
) -> tuple[pl.Series, str]:
    where = f"candle file {str(_file)!r}: " if _file else ""
    dtype = values.dtype
    frame = values.rename("v").to_frame()
    if ts_format in EPOCH_FORMATS:
        if dtype == pl.String:
            text = pl.col("v").str.strip_chars()
            expr = _epoch_us(text.cast(pl.Int64, strict=False), text.cast(pl.Float64, strict=False), ts_format)
        elif dtype.is_numeric():
            expr = _epoch_us(pl.col("v").cast(pl.Int64) if dtype.is_integer() else None, pl.col("v").cast(pl.Float64), ts_format)
        else:
            raise UserInputError(f"{where}--ts-format {ts_format} needs a numeric or text time column, not {dtype}")
        return _finish(frame, expr), ts_format
    if isinstance(dtype, pl.Datetime):
        expr = (
            pl.col("v").dt.convert_time_zone("UTC") if dtype.time_zone else pl.col("v").dt.replace_time_zone("UTC")
        )
        return frame.select(expr.dt.cast_time_unit("us")).to_series().alias("ts"), "native datetime"
    if dtype == pl.Date:
        return frame.select(pl.col("v").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")).to_series().alias("ts"), "native date"
    if dtype.is_numeric():
        ints = pl.col("v").cast(pl.Int64) if dtype.is_integer() else None
        expr = _epoch_us(ints, pl.col("v").cast(pl.Float64), None)
        return _finish(frame, expr), _epoch_description(frame, pl.col("v").cast(pl.Float64))
    if dtype != pl.String:
        frame = frame.select(pl.col("v").cast(pl.String))
    if ts_format is not None:
        return _strptime(frame, ts_format), ts_format
    return _parse_auto(frame, where)


def _finish(frame: pl.DataFrame, epoch_us: pl.Expr) -> pl.Series:
    return frame.select(pl.from_epoch(epoch_us, time_unit="us").dt.replace_time_zone("UTC")).to_series().alias("ts")


def _magnitude_factor(mag: pl.Expr) -> pl.Expr:
    """Microseconds per unit, guessed from magnitude: s < 1e11 <= ms < 1e14 <= us < 1e17 <= ns.

    1e11 s is year 5138 and 1e11 ms is 1973, so the bands cannot be confused for real market data.
    """
    return (
        pl.when(mag < 1e11).then(pl.lit(1_000_000))
        .when(mag < 1e14).then(pl.lit(1_000))
        .when(mag < 1e17).then(pl.lit(1))
        .otherwise(pl.lit(-1_000))  # negative = divide: nanoseconds
    )


def _epoch_us(ints: pl.Expr | None, floats: pl.Expr, unit: str | None) -> pl.Expr:
    """Epoch value -> Int64 microseconds; integers stay exact (ns values exceed float precision)."""
    factor = pl.lit(EPOCH_FORMATS[unit]) if unit else _magnitude_factor(floats.abs())
    from_float = (
        pl.when(factor > 0).then(floats * factor.cast(pl.Float64)).otherwise(floats / (-factor).cast(pl.Float64))
    )
    from_float = pl.when(from_float.is_finite() & (from_float.abs() < 9.2e18)).then(from_float.round(0)).cast(
        pl.Int64, strict=False
    )
    if ints is None:
        return from_float
    # Integer multiplication wraps on overflow; such values are nonsense, so make them null instead.
    fits = (factor < 0) | (floats.abs() * factor.cast(pl.Float64) < 9.2e18)
    from_int = pl.when(fits & (factor > 0)).then(ints * factor).when(factor < 0).then(ints.floordiv(-factor))
    return pl.coalesce(from_int, from_float)


def _epoch_description(frame: pl.DataFrame, floats: pl.Expr) -> str:
    names = {1_000_000: "s", 1_000: "ms", 1: "us", -1_000: "ns"}
    seen = frame.select(_magnitude_factor(floats.abs()).filter(floats.is_finite()).unique().sort()).to_series()
    present = {int(f) for f in seen.to_list()}
    units = [name for factor, name in names.items() if factor in present]
    if not units:
        return "epoch (unit by magnitude)"
    return f"epoch {'/'.join(units)} (unit by magnitude{', mixed' if len(units) > 1 else ''})"


def _strptime(frame: pl.DataFrame, ts_format: str) -> pl.Series:
    # Users write Python's `%S.%f` (1-6 digits); chrono spells that `%S%.f` and misreads `.%f`.
    chrono = ts_format.replace(".%f", "%.f").replace(",%f", "%.f")
    text = pl.col("v").str.strip_chars()
    expr = text.str.strptime(pl.Datetime("us"), chrono, strict=False)
    out = frame.select(expr).to_series()
    if out.dtype == pl.Datetime("us"):
        out = out.dt.replace_time_zone("UTC")  # no %z in the format: the values are UTC
    else:
        out = out.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    return out.alias("ts")


def _components_us(
    year: pl.Expr, month: pl.Expr, day: pl.Expr, hour: pl.Expr, minute: pl.Expr, second: pl.Expr,
    frac: pl.Expr, sign: pl.Expr, off_h: pl.Expr, off_m: pl.Expr,
) -> pl.Expr:
    """Regex captures (strings) -> epoch microseconds UTC, null for impossible dates or times."""
    date = pl.concat_str([year, pl.lit("-"), month.str.zfill(2), pl.lit("-"), day.str.zfill(2)]).str.strptime(
        pl.Date, "%Y-%m-%d", strict=False
    )
    h = hour.cast(pl.Int64).fill_null(0)
    m = minute.cast(pl.Int64).fill_null(0)
    s = second.cast(pl.Int64).fill_null(0)
    us = frac.str.slice(0, 6).str.pad_end(6, "0").cast(pl.Int64).fill_null(0)
    oh = off_h.cast(pl.Int64).fill_null(0)
    om = off_m.cast(pl.Int64).fill_null(0)
    offset_us = (oh * 60 + om) * 60_000_000 * pl.when(sign == "-").then(-1).otherwise(1)
    valid = (h < 24) & (m < 60) & (s < 60) & (oh < 24) & (om < 60)
    total = date.cast(pl.Int64) * _DAY_US + h * 3_600_000_000 + m * 60_000_000 + s * 1_000_000 + us - offset_us
    return pl.when(valid).then(total)


def _parse_auto(frame: pl.DataFrame, where: str) -> tuple[pl.Series, str]:
    # Each pattern only sees the rows the previous ones did not claim (others are masked to null),
    # so a uniform column costs one cheap regex test plus one parse.
    parts = frame.select(pl.col("v").str.strip_chars().alias("t")).with_columns(
        pl.col("t").str.contains(_EPOCH_RE).fill_null(False).alias("is_epoch")
    )
    n_rows = parts.height - parts.get_column("t").null_count()
    n_epoch = int(parts.get_column("is_epoch").sum())
    kinds: list[str] = []
    branches: list[tuple[pl.Expr, pl.Expr]] = []
    if n_epoch:
        epoch_rows = parts.filter(pl.col("is_epoch"))
        kinds.append(_epoch_description(epoch_rows, pl.col("t").cast(pl.Float64, strict=False)))
        text = pl.col("t")
        branches.append(
            (pl.col("is_epoch"), _epoch_us(text.cast(pl.Int64, strict=False), text.cast(pl.Float64, strict=False), None))
        )
    if n_epoch < n_rows:
        parts = parts.with_columns(
            pl.when(~pl.col("is_epoch")).then(pl.col("t")).str.extract_groups(_YMD_RE).alias("ymd")
        )
        ymd = [pl.col("ymd").struct.field(str(i)) for i in range(1, 11)]
        parts = parts.with_columns(ymd[0].is_not_null().alias("is_ymd"))
        n_ymd = int(parts.get_column("is_ymd").sum())
        if n_ymd:
            kinds.append("ISO-8601 date/time")
            branches.append((pl.col("is_ymd"), _components_us(*ymd)))
        if n_epoch + n_ymd < n_rows:
            parts, branch, desc = _day_month_branch(parts, where)
            if branch is not None:
                kinds.append(desc)
                branches.append(branch)
    expr: pl.Expr = pl.repeat(None, pl.len(), dtype=pl.Int64)
    if branches:
        chain = pl.when(branches[0][0]).then(branches[0][1])
        for cond, value in branches[1:]:
            chain = chain.when(cond).then(value)
        expr = chain
    return _finish(parts, expr), " + ".join(kinds) if kinds else "unrecognised"


def _day_month_branch(
    parts: pl.DataFrame, where: str
) -> tuple[pl.DataFrame, tuple[pl.Expr, pl.Expr] | None, str]:
    """Rows like 13.01.2024 or 01/13/2024: decide day-first or month-first once for the whole column."""
    parts = parts.with_columns(
        pl.when(~pl.col("is_epoch") & ~pl.col("is_ymd")).then(pl.col("t")).str.extract_groups(_XXY_RE).alias("xxy")
    )
    xxy = [pl.col("xxy").struct.field(str(i)) for i in range(1, 12)]
    parts = parts.with_columns(xxy[0].is_not_null().alias("is_xxy"))
    matched = parts.filter(pl.col("is_xxy"))
    if matched.height == 0:
        return parts, None, ""
    first_gt12 = bool(matched.select((xxy[0].cast(pl.Int64) > 12).any()).item())
    second_gt12 = bool(matched.select((xxy[2].cast(pl.Int64) > 12).any()).item())
    example = matched.get_column("t").item(0)
    sep = matched.select(xxy[1]).item(0, 0)
    if first_gt12 and second_gt12:
        raise UserInputError(
            f"{where}the time column mixes day-first and month-first dates (e.g. {quoted(example, 60)}); "
            f"pass --ts-format with the right one"
        )
    if not first_gt12 and not second_gt12:
        raise UserInputError(
            f"{where}ambiguous time format: {quoted(example, 60)} reads as day-first and as month-first and no value "
            f"decides; pass --ts-format {_suggest_format(example, sep, True)!r} (day first) or "
            f"{_suggest_format(example, sep, False)!r} (month first)"
        )
    day, month = (xxy[0], xxy[2]) if first_gt12 else (xxy[2], xxy[0])
    return parts, (pl.col("is_xxy"), _components_us(xxy[3], month, day, *xxy[4:])), _suggest_format(
        example, sep, first_gt12
    )


def _suggest_format(example: str, sep: str, day_first: bool) -> str:
    date = f"%d{sep}%m{sep}%Y" if day_first else f"%m{sep}%d{sep}%Y"
    match = re.match(r"^\S+(?:T|\s+)(\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?)", example)
    if not match:
        return date
    clock = "%H:%M" + (":%S" if match.group(2) else "") + (".%f" if match.group(3) else "")
    joiner = "T" if "T" in example else " "
    return f"{date}{joiner}{clock}"
