"""Candle file import (every supported layout) and validation (every rule, all problems at once)."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from rl_lifecycle.candles.frame import CANDLE_SCHEMA
from rl_lifecycle.candles.importer import RAW_SCHEMA, read_candle_file
from rl_lifecycle.candles.validation import Gap, validate_candles
from rl_lifecycle.errors import UserInputError

HOUR_US = 3_600_000_000
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_US = 1_704_067_200_000_000  # 2024-01-01 00:00 UTC


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def ts_list(raw) -> list[datetime]:
    return raw.frame.get_column("ts").to_list()


def binance_line(open_time: int, close_time: int, o: float = 100.0) -> str:
    return f"{open_time},{o},{o + 2},{o - 1},{o + 1},12.5,{close_time},1250.0,42,6.0,600.0,0"


def ohlcv_text(header: str, stamps: list[str], sep: str = ",") -> str:
    lines = [header] + [sep.join([s, "100", "102", "99", "101", "12.5"]) for s in stamps]
    return "\n".join(lines) + "\n"


def reasons_by_row(report) -> dict[int, list[str]]:
    return {r["row"]: r["reasons"] for r in report.bad.select("row", "reasons").iter_rows(named=True)}


# ----------------------------------------------------------------------------------------- formats


def test_binance_without_header_milliseconds(tmp_path: Path) -> None:
    ms = T0_US // 1000
    path = write(tmp_path, "BTCUSDT-1h-2024-01.csv", "\n".join(
        binance_line(ms + i * 3_600_000, ms + (i + 1) * 3_600_000 - 1) for i in range(3)) + "\n")
    raw = read_candle_file(path)
    assert raw.frame.schema == pl.Schema(RAW_SCHEMA)
    assert raw.frame.get_column("row").to_list() == [1, 2, 3]
    assert ts_list(raw) == [utc(2024, 1, 1, h) for h in range(3)]
    assert raw.frame.row(0, named=True)["high"] == 102.0
    assert "Binance" in raw.source and "without header" in raw.source and "epoch ms" in raw.ts_format
    assert validate_candles(raw, "1h").ok


def test_binance_with_header_microseconds(tmp_path: Path) -> None:
    # Binance spot files switched to microsecond timestamps in 2025.
    us = 1_735_689_600_000_000  # 2025-01-01
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
    lines = [header] + [binance_line(us + i * 60_000_000, us + (i + 1) * 60_000_000 - 1) for i in range(2)]
    raw = read_candle_file(write(tmp_path, "k.csv", "\n".join(lines) + "\n"))
    assert raw.frame.get_column("row").to_list() == [2, 3]  # the header is line 1
    assert ts_list(raw) == [utc(2025, 1, 1, 0, 0), utc(2025, 1, 1, 0, 1)]
    assert "with header" in raw.source and "epoch us" in raw.ts_format
    assert validate_candles(raw, "1m").ok


def test_binance_mixed_millisecond_and_microsecond_rows(tmp_path: Path) -> None:
    ms_line = binance_line(1_735_686_000_000, 1_735_689_599_999)  # 2024-12-31 23:00, ms
    us_line = binance_line(1_735_689_600_000_000, 1_735_693_199_999_999)  # 2025-01-01 00:00, us
    raw = read_candle_file(write(tmp_path, "k.csv", f"{ms_line}\n{us_line}\n"))
    assert ts_list(raw) == [utc(2024, 12, 31, 23), utc(2025, 1, 1, 0)]


def test_binance_zip_is_read_transparently(tmp_path: Path) -> None:
    ms = T0_US // 1000
    path = tmp_path / "BTCUSDT-1h-2024-01.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("BTCUSDT-1h-2024-01.csv", binance_line(ms, ms + 3_599_999) + "\n")
    assert ts_list(read_candle_file(path)) == [T0]


@pytest.mark.parametrize("first_header", ["", "Unnamed: 0"])
def test_generic_unnamed_time_column(tmp_path: Path, first_header: str) -> None:
    text = ohlcv_text(f"{first_header},Open,High,Low,Close,Volume", ["2024-01-01 00:00:00", "2024-01-01 01:00:00"])
    raw = read_candle_file(write(tmp_path, "pandas.csv", text))
    assert ts_list(raw) == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)]
    assert raw.frame.get_column("row").to_list() == [2, 3]


@pytest.mark.parametrize("name", ["Time", "Date", "Datetime", "timestamp", "open_time", "Gmt time", " TIMESTAMP "])
def test_generic_time_column_names(tmp_path: Path, name: str) -> None:
    text = ohlcv_text(f"{name},open,high,low,close,volume", ["2024-01-01T00:00:00", "2024-01-01T01:00:00"])
    raw = read_candle_file(write(tmp_path, "named.csv", text))
    assert ts_list(raw) == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)]
    assert raw.ts_column == name.strip()


def test_iso_with_z_offsets_and_fractions_convert_to_utc(tmp_path: Path) -> None:
    stamps = [
        "2024-01-01T00:00:00Z",
        "2024-01-01T03:00:00+02:00",  # 01:00 UTC
        "2024-01-01 00:00:00-0200",  # 02:00 UTC
        "2024-01-01T03:00:00.000000Z",
        "2024-01-01 04:00",
        "2024-01-01T05:00:00.250Z",
    ]
    raw = read_candle_file(write(tmp_path, "iso.csv", ohlcv_text("time,open,high,low,close,volume", stamps)))
    assert ts_list(raw) == [
        utc(2024, 1, 1, 0), utc(2024, 1, 1, 1), utc(2024, 1, 1, 2), utc(2024, 1, 1, 3), utc(2024, 1, 1, 4),
        datetime(2024, 1, 1, 5, 0, 0, 250_000, tzinfo=UTC),
    ]


def test_dukascopy_day_first_with_milliseconds(tmp_path: Path) -> None:
    text = ohlcv_text("Gmt time,Open,High,Low,Close,Volume", ["31.01.2024 22:00:00.000", "31.01.2024 23:00:00.000",
                                                               "01.02.2024 00:00:00.000"])
    raw = read_candle_file(write(tmp_path, "EURUSD_Candlestick_1_Hour_BID.csv", text))
    assert ts_list(raw) == [utc(2024, 1, 31, 22), utc(2024, 1, 31, 23), utc(2024, 2, 1, 0)]
    assert raw.ts_format == "%d.%m.%Y %H:%M:%S.%f"


def test_month_first_dates_detected_when_a_value_decides(tmp_path: Path) -> None:
    text = ohlcv_text("Date,Open,High,Low,Close,Volume", ["01/30/2024", "01/31/2024"])
    assert ts_list(read_candle_file(write(tmp_path, "us.csv", text))) == [utc(2024, 1, 30), utc(2024, 1, 31)]


def test_date_only_daily(tmp_path: Path) -> None:
    text = ohlcv_text("Date,Open,High,Low,Close,Volume", ["2024-01-02", "2024-01-03"])
    raw = read_candle_file(write(tmp_path, "daily.csv", text))
    report = validate_candles(raw, "1d")
    assert report.ok and report.good.get_column("ts").to_list() == [utc(2024, 1, 2), utc(2024, 1, 3)]


@pytest.mark.parametrize(
    ("values", "unit"),
    [
        (["1704067200", "1704070800"], "epoch s"),
        (["1704067200000", "1704070800000"], "epoch ms"),
        (["1704067200000000000", "1704070800000000000"], "epoch ns"),
        (["1704067200.0", "1704070800.0"], "epoch s"),
    ],
)
def test_epoch_units_detected_by_magnitude(tmp_path: Path, values: list[str], unit: str) -> None:
    raw = read_candle_file(write(tmp_path, "epoch.csv", ohlcv_text("timestamp,open,high,low,close,volume", values)))
    assert ts_list(raw) == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)]
    assert raw.ts_format.startswith(unit)


def test_parquet_with_native_datetime_column(tmp_path: Path) -> None:
    frame = pl.DataFrame({
        "Datetime": [datetime(2024, 1, 1, 1), datetime(2024, 1, 1, 2)],  # naive: read as UTC
        "Open": [1.0, 2.0], "High": [2.0, 3.0], "Low": [0.5, 1.5], "Close": [1.5, 2.5], "Volume": [10, 20],
    })
    path = tmp_path / "candles.parquet"
    frame.write_parquet(path)
    raw = read_candle_file(path)
    assert raw.frame.get_column("row").to_list() == [1, 2]
    assert ts_list(raw) == [utc(2024, 1, 1, 1), utc(2024, 1, 1, 2)]
    assert raw.frame.get_column("volume").to_list() == [10.0, 20.0]


def test_parquet_with_epoch_integers_and_unknown_extension_sniffed(tmp_path: Path) -> None:
    frame = pl.DataFrame({
        "open_time": [T0_US // 1000, T0_US // 1000 + 3_600_000],
        "open": [1.0, 2.0], "high": [2.0, 3.0], "low": [0.5, 1.5], "close": [1.5, 2.5], "volume": [1.0, 2.0],
    })
    path = tmp_path / "candles.bin"
    frame.write_parquet(path)
    raw = read_candle_file(path)
    assert ts_list(raw) == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)]
    assert "Parquet" in raw.source


def test_extra_columns_ignored_and_names_case_insensitive(tmp_path: Path) -> None:
    text = " DATE ,OPEN, High ,low,Close,Adj Close,VOLUME,Trades\n2024-01-02,1,2,0.5,1.5,1.4,10,7\n"
    raw = read_candle_file(write(tmp_path, "yahoo.csv", text))
    assert raw.frame.columns == list(RAW_SCHEMA)
    assert raw.frame.row(0, named=True) == {
        "row": 2, "ts_raw": "2024-01-02", "ts": utc(2024, 1, 2), "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
        "volume": 10.0,
    }


def test_semicolon_separator_and_unknown_extension(tmp_path: Path) -> None:
    text = ohlcv_text("time;open;high;low;close;volume", ["2024-01-01 00:00", "2024-01-01 01:00"], sep=";")
    assert len(read_candle_file(write(tmp_path, "candles.dat", text))) == 2


def test_split_date_and_time_columns_are_combined(tmp_path: Path) -> None:
    text = "Date,Time,Open,High,Low,Close,Volume\n2024.01.02,13:00,1,2,0.5,1.5,10\n"
    raw = read_candle_file(write(tmp_path, "mt.csv", text))
    assert ts_list(raw) == [utc(2024, 1, 2, 13)]
    assert raw.ts_column == "Date + Time"


def test_blank_lines_are_skipped_and_row_numbers_stay_file_lines(tmp_path: Path) -> None:
    text = "\ntime,open,high,low,close,volume\n2024-01-01 00:00,1,2,0.5,1.5,1\n\n2024-01-01 01:00,1,2,0.5,1.5,x\n\n\n"
    raw = read_candle_file(write(tmp_path, "blank.csv", text))
    assert raw.frame.get_column("row").to_list() == [3, 5]
    assert reasons_by_row(validate_candles(raw, "1h")) == {5: ["volume: not a number 'x'"]}


# --------------------------------------------------------------------------------------- overrides


def test_ts_column_override(tmp_path: Path) -> None:
    text = "timestamp,bar_open,open,high,low,close,volume\n1,2024-01-01 05:00,1,2,0.5,1.5,10\n"
    raw = read_candle_file(write(tmp_path, "o.csv", text), ts_column="BAR_OPEN")
    assert ts_list(raw) == [utc(2024, 1, 1, 5)]
    assert raw.ts_column == "bar_open"


def test_ts_column_override_unknown_name_lists_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "o.csv", ohlcv_text("time,open,high,low,close,volume", ["2024-01-01"]))
    with pytest.raises(UserInputError, match=r"--ts-column 'when' is not a column.*Columns found: time, open"):
        read_candle_file(path, ts_column="when")


def test_ts_format_strptime_resolves_ambiguous_dates(tmp_path: Path) -> None:
    text = ohlcv_text("Gmt time,Open,High,Low,Close,Volume", ["01.02.2024 00:00:00.000", "02.02.2024 00:00:00.000"])
    path = write(tmp_path, "duka.csv", text)
    with pytest.raises(UserInputError, match=r"ambiguous time format.*--ts-format '%d\.%m\.%Y %H:%M:%S\.%f'"):
        read_candle_file(path)
    day_first = read_candle_file(path, ts_format="%d.%m.%Y %H:%M:%S.%f")
    assert ts_list(day_first) == [utc(2024, 2, 1), utc(2024, 2, 2)]
    month_first = read_candle_file(path, ts_format="%m.%d.%Y %H:%M:%S.%f")
    assert ts_list(month_first) == [utc(2024, 1, 2), utc(2024, 2, 2)]


def test_ts_format_with_offset_is_converted_to_utc(tmp_path: Path) -> None:
    text = ohlcv_text("time,open,high,low,close,volume", ["2024/01/01 02:00 +0200"])
    raw = read_candle_file(write(tmp_path, "z.csv", text), ts_format="%Y/%m/%d %H:%M %z")
    assert ts_list(raw) == [utc(2024, 1, 1, 0)]


def test_ts_format_epoch_unit_override(tmp_path: Path) -> None:
    # 1704067200000 would be detected as ms; the override says it is microseconds (1970-01-20).
    text = ohlcv_text("time,open,high,low,close,volume", ["1704067200000"])
    raw = read_candle_file(write(tmp_path, "e.csv", text), ts_format="epoch_us")
    assert ts_list(raw) == [datetime(1970, 1, 20, 17, 21, 7, 200_000, tzinfo=UTC)]
    assert ts_list(read_candle_file(tmp_path / "e.csv", ts_format="epoch_ms")) == [T0]


def test_ts_timezone_reads_wall_clock_times_of_an_exchange(tmp_path: Path) -> None:
    # New York: UTC-5 in January, UTC-4 after the March DST change
    text = ohlcv_text("time,open,high,low,close,volume", ["2024-01-02 09:30:00", "2024-03-11 09:30:00", "2024-03-12"])
    raw = read_candle_file(write(tmp_path, "ny.csv", text), ts_timezone="America/New_York")
    assert ts_list(raw) == [utc(2024, 1, 2, 14, 30), utc(2024, 3, 11, 13, 30), utc(2024, 3, 12, 4)]
    assert "local time America/New_York" in raw.source
    naive = read_candle_file(tmp_path / "ny.csv")  # without it, naive values are UTC as before
    assert ts_list(naive)[0] == utc(2024, 1, 2, 9, 30)


def test_ts_timezone_makes_a_wall_clock_time_lost_to_dst_a_bad_row(tmp_path: Path) -> None:
    text = ohlcv_text("time,open,high,low,close,volume", ["2024-03-10 01:00", "2024-03-10 02:00", "2024-03-10 03:00"])
    report = validate_candles(read_candle_file(write(tmp_path, "dst.csv", text), ts_timezone="America/New_York"), "1h")
    assert report.bad.get_column("row").to_list() == [3]  # 02:00 did not exist that night
    assert report.bad.get_column("reasons").item(0)[0].startswith("unparseable timestamp '2024-03-10 02:00'")


@pytest.mark.parametrize(
    ("stamps", "options", "message"),
    [
        (["2024-01-02 09:30Z"], {}, "has one"),
        (["2024-01-02T09:30:00+01:00"], {}, "has one"),
        (["2024/01/02 09:30 +0100"], {"ts_format": "%Y/%m/%d %H:%M %z"}, "reads one"),
        (["1704067200000"], {}, "epoch values are UTC already"),
        (["2024-01-02 09:30"], {"ts_timezone": "Mars/Olympus_Mons"}, "not an IANA time zone"),
    ],
)
def test_ts_timezone_is_refused_where_it_cannot_apply(tmp_path: Path, stamps, options, message) -> None:
    path = write(tmp_path, "tz.csv", ohlcv_text("time,open,high,low,close,volume", stamps))
    with pytest.raises(UserInputError, match=message):
        read_candle_file(path, **{"ts_timezone": "Europe/London", **options})


# ---------------------------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        read_candle_file(tmp_path / "nope.csv")


@pytest.mark.parametrize("text", ["", "\n\n", "time,open,high,low,close,volume\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(UserInputError, match="empty|no data rows"):
        read_candle_file(write(tmp_path, "empty.csv", text))


def test_missing_columns_lists_every_missing_column_and_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "Date,Open,Close,Adj Close\n2024-01-02,1,1.5,1.4\n")
    with pytest.raises(UserInputError) as info:
        read_candle_file(path)
    message = str(info.value)
    assert "missing required column(s) high, low, volume" in message
    assert "Columns found: Date, Open, Close, Adj Close" in message


def test_no_time_column_and_missing_column_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "when,open,high,low,close\n2024-01-02,1,2,0.5,1.5\n")
    with pytest.raises(UserInputError) as info:
        read_candle_file(path)
    message = str(info.value)
    assert "missing required column(s) volume" in message
    assert "no time column found" in message and "--ts-column" in message


def test_time_column_with_no_parseable_value_is_a_file_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", ohlcv_text("time,open,high,low,close,volume", ["Jan 1st", "Jan 2nd"]))
    with pytest.raises(UserInputError, match=r"no value of the time column.*'Jan 1st'.*--ts-format"):
        read_candle_file(path)


# ------------------------------------------------------------------------------------ validation


GOOD = "100,102,99,101,12.5"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (f"not-a-date,{GOOD}", "unparseable timestamp 'not-a-date'"),
        (f",{GOOD}", "missing timestamp"),
        ("2024-01-01 02:00,abc,102,99,101,12.5", "open: not a number 'abc'"),
        ("2024-01-01 02:00,100,102,99,101,", "volume: missing"),
        ("2024-01-01 02:00,100,102,99,nan,12.5", "close: not finite (NaN)"),
        ("2024-01-01 02:00,100,102,99,101,inf", "volume: not finite (inf)"),
        ("2024-01-01 02:00,100,100.5,99,101,12.5", "high 100.5 < max(open, close) 101.0"),
        ("2024-01-01 02:00,100,102,100.5,101,12.5", "low 100.5 > min(open, close) 100.0"),
        ("2024-01-01 02:00,100,102,99,101,-1", "volume -1.0 is negative"),
        ("2024-01-01 02:00,0,102,0,101,12.5", "open 0.0 is not positive"),
        (f"2024-01-01 02:30,{GOOD}", "timestamp 2024-01-01 02:30:00 UTC is not aligned to the 1h grid"),
    ],
)
def test_each_validation_rule_reports_the_row(tmp_path: Path, line: str, reason: str) -> None:
    text = f"time,open,high,low,close,volume\n2024-01-01 00:00,{GOOD}\n2024-01-01 01:00,{GOOD}\n{line}\n"
    report = validate_candles(read_candle_file(write(tmp_path, "v.csv", text)), "1h")
    assert not report.ok
    assert report.bad.get_column("row").to_list() == [4]
    assert any(r.startswith(reason) for r in report.bad.get_column("reasons").item(0)), report.describe()
    assert report.good.height == 2


def test_daily_candles_must_open_at_midnight_utc(tmp_path: Path) -> None:
    text = ohlcv_text("time,open,high,low,close,volume", ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00+01:00"])
    report = validate_candles(read_candle_file(write(tmp_path, "d.csv", text)), "1d")
    assert reasons_by_row(report) == {
        3: ["timestamp 2024-01-01 23:00:00 UTC is not aligned to the 1d grid (daily candles must open at 00:00 UTC)"]
    }


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    lines = [
        "time,open,high,low,close,volume",
        f"2024-01-01 00:00,{GOOD}",  # row 2 fine
        f"garbage,{GOOD}",  # row 3
        "2024-01-01 02:00,100,99,98,101,12.5",  # row 4: high below body
        f"2024-01-01 03:00,{GOOD}",  # row 5 fine
        "2024-01-01 04:00,100,102,99,101,-3",  # row 6: negative volume
        "2024-01-01 05:00,100,102,99,oops,12.5",  # row 7: unparseable close
        f"2024-01-01 06:15,{GOOD}",  # row 8: off-grid
        "2024-01-01 07:00,-5,102,-6,101,-1",  # row 9: several reasons
    ]
    report = validate_candles(read_candle_file(write(tmp_path, "five.csv", "\n".join(lines) + "\n")), "1h")
    reasons = reasons_by_row(report)
    assert sorted(reasons) == [3, 4, 6, 7, 8, 9]
    assert reasons[3] == ["unparseable timestamp 'garbage'"]
    assert reasons[4] == ["high 99.0 < max(open, close) 101.0"]
    assert reasons[6] == ["volume -3.0 is negative"]
    assert reasons[7] == ["close: not a number 'oops'"]
    assert reasons[8][0].startswith("timestamp 2024-01-01 06:15:00 UTC is not aligned")
    assert reasons[9] == ["open -5.0 is not positive", "low -6.0 is not positive", "volume -1.0 is negative"]
    assert report.good.get_column("ts").to_list() == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 3)]
    text = report.describe()
    for row in (3, 4, 6, 7, 8, 9):
        assert f"row {row} " in text


def test_gaps_are_reported_not_filled(tmp_path: Path) -> None:
    stamps = ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 05:00", "2024-01-01 07:00"]
    report = validate_candles(read_candle_file(write(tmp_path, "g.csv", ohlcv_text("time,open,high,low,close,volume", stamps))), "1h")
    assert report.ok
    assert report.good.height == 4
    assert report.gaps == [Gap(T0_US + 2 * HOUR_US, T0_US + 5 * HOUR_US, 3), Gap(T0_US + 6 * HOUR_US, T0_US + 7 * HOUR_US, 1)]
    assert "2024-01-01 02:00 UTC .. 2024-01-01 04:00 UTC: 3 missing bars" in report.describe()


def test_bad_rows_leave_gaps_in_the_good_frame(tmp_path: Path) -> None:
    text = f"time,open,high,low,close,volume\n2024-01-01 00:00,{GOOD}\n2024-01-01 01:00,1,0.5,1,1,1\n2024-01-01 02:00,{GOOD}\n"
    report = validate_candles(read_candle_file(write(tmp_path, "g.csv", text)), "1h")
    assert report.gaps == [Gap(T0_US + HOUR_US, T0_US + 2 * HOUR_US, 1)]


def test_exact_duplicates_are_kept_once(tmp_path: Path) -> None:
    stamps = ["2024-01-01 01:00", "2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01T01:00:00Z"]
    report = validate_candles(read_candle_file(write(tmp_path, "d.csv", ohlcv_text("time,open,high,low,close,volume", stamps))), "1h")
    assert report.ok
    assert report.duplicates_dropped == 2
    assert report.good.get_column("ts").to_list() == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)]


def test_conflicting_duplicates_reject_every_row_of_the_group(tmp_path: Path) -> None:
    text = (
        "time,open,high,low,close,volume\n"
        f"2024-01-01 00:00,{GOOD}\n"  # row 2
        f"2024-01-01 01:00,{GOOD}\n"  # row 3
        f"2024-01-01 02:00,{GOOD}\n"  # row 4
        "2024-01-01 01:00,100,102,99,101,99\n"  # row 5: same ts as row 3, other volume
        f"2024-01-01 01:00,{GOOD}\n"  # row 6: copy of row 3, still part of the conflict
    )
    report = validate_candles(read_candle_file(write(tmp_path, "c.csv", text)), "1h")
    stamp = "duplicate timestamp 2024-01-01 01:00:00 UTC with conflicting values"
    assert reasons_by_row(report) == {
        3: [f"{stamp} (see also rows 5, 6)"],
        5: [f"{stamp} (see also rows 3, 6)"],
        6: [f"{stamp} (see also rows 3, 5)"],
    }
    assert report.good.get_column("ts").to_list() == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 2)]
    assert report.gaps == [Gap(T0_US + HOUR_US, T0_US + 2 * HOUR_US, 1)]


def test_good_frame_is_canonical_sorted_and_bad_frame_has_reasons(tmp_path: Path) -> None:
    stamps = ["2024-01-01 02:00", "2024-01-01 00:00", "x", "2024-01-01 01:00"]
    report = validate_candles(read_candle_file(write(tmp_path, "s.csv", ohlcv_text("time,open,high,low,close,volume", stamps))), "1h")
    assert report.good.schema == pl.Schema(CANDLE_SCHEMA)
    assert report.good.get_column("ts").is_sorted()
    assert report.bad.columns == ["row", "ts_raw", "ts", "open", "high", "low", "close", "volume", "reasons"]
    assert report.bad.schema["reasons"] == pl.List(pl.String)


def test_validate_accepts_a_plain_frame() -> None:
    frame = pl.DataFrame({
        "ts": [datetime(2024, 1, 1, 0), datetime(2024, 1, 1, 1)],
        "open": [1.0, 1.0], "high": [2.0, 0.5], "low": [0.5, 0.5], "close": [1.5, 1.0], "volume": [1.0, 1.0],
    })
    report = validate_candles(frame, "1h")
    assert reasons_by_row(report) == {2: ["high 0.5 < max(open, close) 1.0"]}
    assert report.good.height == 1


def test_describe_truncates_beyond_max_rows(tmp_path: Path) -> None:
    lines = ["time,open,high,low,close,volume"] + [f"bad{i},{GOOD}" for i in range(5)] + [f"2024-01-01 00:00,{GOOD}"]
    report = validate_candles(read_candle_file(write(tmp_path, "t.csv", "\n".join(lines) + "\n")), "1h")
    text = report.describe(max_rows=2)
    assert "row 2 ('bad0'): unparseable timestamp 'bad0'" in text
    assert "row 3 " in text and "row 4 " not in text
    assert "... and 3 more bad rows" in text


def test_invalid_interval_is_a_user_error(tmp_path: Path) -> None:
    raw = read_candle_file(write(tmp_path, "i.csv", ohlcv_text("time,open,high,low,close,volume", ["2024-01-01"])))
    with pytest.raises(UserInputError, match="interval '7m' is invalid"):
        validate_candles(raw, "7m")
