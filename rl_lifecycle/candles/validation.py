"""Validate imported candles: every problem of every row at once, with the file's row numbers.

Rules (a row can break several): unparseable or missing timestamp; missing, unparseable or
non-finite number; high < max(open, close); low > min(open, close); non-positive price; negative
volume; open time not on the interval grid (epoch us % interval != 0, so 1d means 00:00 UTC);
duplicate timestamps with conflicting values (every row of the group is rejected, since none can be
trusted). Exact duplicates are harmless and kept once. Missing bars are reported as gaps, never filled;
a bar is missing only when the market's trading calendar expects it (`rl_lifecycle.markets.calendars`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from rl_lifecycle.candles.frame import CANDLE_SCHEMA, PRICE_COLUMNS, VALUE_COLUMNS
from rl_lifecycle.candles.gaps import Gap
from rl_lifecycle.candles.importer import RAW_SCHEMA, RawCandles, parse_timestamps
from rl_lifecycle.candles.limits import EXCERPT_CHARS, quoted
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.calendars import TradingCalendar, get_calendar
from rl_lifecycle.markets.keys import INTERVALS, normalize_interval

__all__ = ["Gap", "ValidationReport", "validate_candles"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNPARSED_SCHEMA = {"row": pl.Int64, "column": pl.String, "text": pl.String}
# A bad row quotes at most its time and five values: 6 cells of this many characters stay within EXCERPT_CHARS.
CELL_CHARS = EXCERPT_CHARS // 6
_OTHER_ROWS_SHOWN = 5  # a conflicting duplicate names this many other rows of its group, then counts the rest


def bad_row_line(row: int, ts_raw: str | None, reasons: list[str]) -> str:
    """`row N ('ts'): reason; reason`, quoting at most a short excerpt of the row."""
    shown = "<empty>" if ts_raw is None else quoted(ts_raw, CELL_CHARS)
    return f"row {row} ({shown}): " + "; ".join(reasons)


def _clip(expr: pl.Expr) -> pl.Expr:
    """File text inside a reason: at most CELL_CHARS characters."""
    return pl.when(expr.str.len_chars() > CELL_CHARS).then(expr.str.slice(0, CELL_CHARS) + pl.lit("…")).otherwise(expr)


@dataclass(frozen=True)
class ValidationReport:
    """Result of `validate_candles`.

    `good`: canonical candle frame (CANDLE_SCHEMA), sorted, unique ts, no bad row.
    `bad`: one row per rejected input row: row, ts_raw, ts, open..volume (Float64, null where
    unparseable), reasons (list[str]), sorted by row.
    """

    good: pl.DataFrame
    bad: pl.DataFrame
    gaps: list[Gap]
    duplicates_dropped: int
    interval: str
    rows_read: int
    source: str
    calendar: str = "crypto"  # the trading calendar the gaps were counted against

    @property
    def ok(self) -> bool:
        """No bad rows. Gaps do not make a report fail: markets do have missing bars."""
        return self.bad.height == 0

    @property
    def missing_bars(self) -> int:
        return sum(g.missing_bars for g in self.gaps)

    def describe(self, max_rows: int = 50) -> str:
        """Human-readable summary: counts, every bad row with its reasons, every gap (truncated)."""
        lines = [
            f"{self.source}: {self.rows_read} rows checked against the {self.interval} grid "
            f"and the {self.calendar} calendar: "
            f"{self.good.height} good candles, {self.bad.height} bad rows, "
            f"{self.duplicates_dropped} exact duplicate rows dropped, "
            f"{len(self.gaps)} gaps ({self.missing_bars} missing bars)"
        ]
        if self.bad.height:
            lines.append("Bad rows (fix them in the file and import again):")
            for rec in self.bad.head(max_rows).select("row", "ts_raw", "reasons").iter_rows(named=True):
                lines.append("  " + bad_row_line(rec["row"], rec["ts_raw"], rec["reasons"]))
            if self.bad.height > max_rows:
                lines.append(f"  ... and {self.bad.height - max_rows} more bad rows")
        if self.gaps:
            lines.append("Gaps (reported, not filled):")
            for gap in self.gaps[:max_rows]:
                span = _fmt_us(gap.start_us)
                if gap.missing_bars > 1:
                    span += f" .. {_fmt_us(gap.last_missing_us)}"
                lines.append(f"  {span}: {gap.missing_bars} missing bar{'s' if gap.missing_bars > 1 else ''}")
            if len(self.gaps) > max_rows:
                lines.append(f"  ... and {len(self.gaps) - max_rows} more gaps")
        if self.ok and not self.gaps:
            lines.append("No problems found.")
        return "\n".join(lines)


def validate_candles(
    raw: RawCandles | pl.DataFrame, interval: str, calendar: TradingCalendar | None = None
) -> ValidationReport:
    """Check every row against every rule; return the good candles, the bad rows and the gaps.

    Gaps are runs of bars `calendar` (default crypto, 24/7) expects between the first and last good bar.

    A plain DataFrame needs `ts` and open..volume; `row` defaults to the 1-based position.
    """
    interval = normalize_interval(interval)
    step = INTERVALS[interval]
    calendar = calendar or get_calendar()
    frame, unparsed, source = _coerce(raw)

    df = frame.with_columns(pl.col("ts").dt.epoch("us").alias("_us"))
    df = _attach_unparsed_text(df, unparsed)
    df = _attach_conflicts(df)
    ts_text = pl.col("ts").dt.strftime("%Y-%m-%d %H:%M:%S%.f") + pl.lit(" UTC")

    reasons = [
        pl.when(pl.col("ts").is_null()).then(
            pl.when(pl.col("ts_raw").is_null() | (pl.col("ts_raw").str.strip_chars() == ""))
            .then(pl.lit("missing timestamp"))
            .otherwise(pl.concat_str(pl.lit("unparseable timestamp '"), _clip(pl.col("ts_raw")), pl.lit("'")))
        )
    ]
    for c in VALUE_COLUMNS:
        value = pl.col(c)
        reasons.append(
            pl.when(value.is_null()).then(
                pl.when(pl.col(f"_txt_{c}").is_not_null())
                .then(pl.concat_str(pl.lit(f"{c}: not a number '"), _clip(pl.col(f"_txt_{c}")), pl.lit("'")))
                .otherwise(pl.lit(f"{c}: missing"))
            )
        )
        reasons.append(pl.when(value.is_nan() | value.is_infinite()).then(pl.format(f"{c}: not finite ({{}})", value)))

    # Comparisons with NaN are not meaningful (polars orders NaN above everything): only compare finite rows.
    finite_prices = pl.all_horizontal(pl.col(c).is_finite().fill_null(False) for c in PRICE_COLUMNS)
    body_top = pl.max_horizontal("open", "close")
    body_bottom = pl.min_horizontal("open", "close")
    reasons += [
        pl.when(finite_prices & (pl.col("high") < body_top))
        .then(pl.format("high {} < max(open, close) {}", pl.col("high"), body_top)),
        pl.when(finite_prices & (pl.col("low") > body_bottom))
        .then(pl.format("low {} > min(open, close) {}", pl.col("low"), body_bottom)),
    ]
    for c in PRICE_COLUMNS:
        reasons.append(
            pl.when(pl.col(c).is_finite().fill_null(False) & (pl.col(c) <= 0))
            .then(pl.format(f"{c} {{}} is not positive", pl.col(c)))
        )
    reasons += [
        pl.when(pl.col("volume").is_finite().fill_null(False) & (pl.col("volume") < 0))
        .then(pl.format("volume {} is negative", pl.col("volume"))),
        pl.when(pl.col("_us").is_not_null() & (pl.col("_us") % step != 0))
        .then(pl.format(f"timestamp {{}} is not aligned to the {interval} grid{_grid_hint(interval)}", ts_text)),
        pl.when(pl.col("_others").is_not_null())
        .then(pl.format("duplicate timestamp {} with conflicting values (see also rows {})", ts_text, pl.col("_others"))),
    ]
    df = df.with_columns(pl.concat_list(reasons).list.drop_nulls().alias("reasons"))
    is_bad = pl.col("reasons").list.len() > 0

    good_rows = df.filter(~is_bad).sort("_us", "row")
    # Exact duplicates (same ts, same values) are harmless: keep the first occurrence in the file.
    deduped = good_rows.unique(subset="_us", keep="first", maintain_order=True)
    good = deduped.select(list(CANDLE_SCHEMA)).cast(CANDLE_SCHEMA)  # type: ignore[arg-type]
    bad = df.filter(is_bad).sort("row").select("row", "ts_raw", "ts", *VALUE_COLUMNS, "reasons")
    return ValidationReport(
        good=good,
        bad=bad,
        gaps=calendar.gaps(deduped.get_column("_us").to_numpy(), step),
        duplicates_dropped=good_rows.height - deduped.height,
        interval=interval,
        rows_read=frame.height,
        source=source,
        calendar=calendar.name,
    )


def _coerce(raw: RawCandles | pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """(frame in RAW_SCHEMA, unparsed cells, source description)."""
    if isinstance(raw, RawCandles):
        return raw.frame, raw.unparsed, raw.source
    if not isinstance(raw, pl.DataFrame):
        raise TypeError(f"validate_candles expects RawCandles or a polars DataFrame, got {type(raw).__name__}")
    missing = [c for c in ("ts", *VALUE_COLUMNS) if c not in raw.columns]
    if missing:
        raise UserInputError(
            f"candle frame is missing column(s) {', '.join(missing)}; columns found: {', '.join(raw.columns) or 'none'}"
        )
    frame = raw
    if "row" not in frame.columns:
        frame = frame.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("row"))
    if "ts_raw" not in frame.columns:
        frame = frame.with_columns(pl.col("ts").cast(pl.String).alias("ts_raw"))
    if frame.schema["ts"] != pl.Datetime("us", "UTC"):
        ts, _ = parse_timestamps(frame.get_column("ts"))
        frame = frame.with_columns(ts.alias("ts"))
    values = [
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) if frame.schema[c] == pl.String
        else pl.col(c).cast(pl.Float64)
        for c in VALUE_COLUMNS
    ]
    frame = frame.with_columns(values).select(list(RAW_SCHEMA)).cast(RAW_SCHEMA)  # type: ignore[arg-type]
    return frame, pl.DataFrame(schema=_UNPARSED_SCHEMA), "candle frame"


def _attach_unparsed_text(df: pl.DataFrame, unparsed: pl.DataFrame) -> pl.DataFrame:
    """Add `_txt_<column>`: the original text of cells that did not parse, so reasons can quote it."""
    for c in VALUE_COLUMNS:
        texts = unparsed.filter(pl.col("column") == c).select("row", pl.col("text").alias(f"_txt_{c}"))
        df = df.join(texts, on="row", how="left", maintain_order="left")
    return df


def _attach_conflicts(df: pl.DataFrame) -> pl.DataFrame:
    """Add `_others`: for rows sharing a timestamp with different values, a few other rows of the group.

    Linear in the group's size: each row names at most _OTHER_ROWS_SHOWN others and counts the rest, so
    a file of one timestamp repeated a million times gives short reasons, not a million-squared list.
    """
    groups = (
        df.filter(pl.col("_us").is_not_null())
        .group_by("_us")
        .agg(pl.col("row").sort().head(_OTHER_ROWS_SHOWN + 1).alias("_first"), pl.len().alias("_n"),
             pl.struct(*VALUE_COLUMNS).n_unique().alias("_variants"))
        .filter((pl.col("_n") > 1) & (pl.col("_variants") > 1))
        .select("_us", "_first", "_n")
    )
    shown = pl.col("_first").list.set_difference(pl.concat_list("row")).list.sort().list.head(_OTHER_ROWS_SHOWN)
    others = shown.list.eval(pl.element().cast(pl.String)).list.join(", ")
    more = pl.col("_n") - 1 - shown.list.len()
    others = pl.when(more > 0).then(pl.format("{}, and {} more", others, more)).otherwise(others)
    return (
        df.join(groups, on="_us", how="left", maintain_order="left")
        .with_columns(pl.when(pl.col("_n").is_not_null()).then(others).alias("_others"))
        .drop("_first", "_n")
    )


def _grid_hint(interval: str) -> str:
    if interval == "1d":
        return " (daily candles must open at 00:00 UTC)"
    return f" (open times must be multiples of {interval} since 1970-01-01 00:00 UTC)"


def _fmt_us(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M UTC")
