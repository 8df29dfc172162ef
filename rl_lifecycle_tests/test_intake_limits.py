"""Bounded intake: every limit on a candle file refuses it with exit 2 and the limit's variable; a gzip
bomb and a file of ten million columns are refused within 1 GB of memory (measured in a subprocess, with
the default limits); messages and reports quote at most a short excerpt of a bad row; Parquet columns of
a type that cannot be candles are named, not a traceback."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest

from rl_lifecycle.candles.importer import read_candle_file
from rl_lifecycle.candles.inbox import REJECTED, process_inbox
from rl_lifecycle.candles.limits import IntakeLimits
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.windows import WindowScheme
from rl_lifecycle_tests.cli_helpers import run_cli

RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")
GiB = 1 << 30
MONTHLY = WindowScheme("monthly")
HEADER = "timestamp,open,high,low,close,volume\n"


def _rows(n: int, start: str = "2024-03-01") -> str:
    base = dt.datetime.fromisoformat(start)
    return "".join(f"{(base + dt.timedelta(hours=h)):%Y-%m-%dT%H:%M:%SZ},100,101,99,100.5,10\n" for h in range(n))


def _candles(conn) -> int:
    return conn.execute("SELECT count(*) FROM market_candles").fetchone()[0]


def _stream_gzip(path: Path, block: bytes, repeat: int, *, head: bytes = b"") -> Path:
    """A gzip file of `head` + `block` * `repeat`, written block by block (never held whole)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as out:
        out.write(head)
        for _ in range(repeat):
            out.write(block)
    return path


# The child's peak RSS must not include this (large) pytest process: the kernel carries a process's
# memory high-water mark across exec, and a child forked (or vforked) from here starts with ours. So a
# small runner is started first, and it reports the peak of the command it forks and waits for.
_RUNNER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _measured(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str, str, int]:
    """Run a command: exit code, stdout, stderr and its peak RSS in bytes (its own, through `_RUNNER`)."""
    import signal
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(peak_file), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"{args} did not finish within {timeout} s")
        return proc.returncode, out.decode(), err.decode(), int(peak_file.read_text())


def _child_env(rl_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The test's settings and nothing else of RL_*: the limits are the defaults unless given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RL_")} | rl_env | extra


@pytest.fixture(scope="session")
def gzip_bomb(tmp_path_factory) -> Path:
    """The bomb of the report: 600 MiB of '0' (no newline) in a 611 KB .csv.gz."""
    path = _stream_gzip(tmp_path_factory.mktemp("bomb") / "bomb.csv.gz", b"0" * (1 << 20), 600)
    assert path.stat().st_size < 1 << 20
    return path


# -- each limit, with small configured limits -------------------------------------------------------------


def test_the_defaults_come_from_the_settings(monkeypatch):
    for name in ("RL_INGEST_MAX_FILE_BYTES", "RL_INGEST_MAX_DECOMPRESSED_BYTES", "RL_INGEST_MAX_COLUMNS",
                 "RL_INGEST_MAX_LINE_BYTES", "RL_INGEST_MAX_ROWS"):
        monkeypatch.delenv(name, raising=False)
    assert IntakeLimits.from_settings() == IntakeLimits(GiB, GiB, 64, 16_384, 10_000_000)
    monkeypatch.setenv("RL_INGEST_MAX_ROWS", "5_000")
    assert IntakeLimits.from_settings().max_rows == 5000
    monkeypatch.setenv("RL_INGEST_MAX_ROWS", "-1")
    with pytest.raises(UserInputError, match=r"RL_INGEST_MAX_ROWS='-1' is not a whole number >= 1"):
        IntakeLimits.from_settings()


def _zip(path: Path, text: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("klines.csv", text)
    return path


@pytest.mark.parametrize("case", ["file", "gzip", "zip", "columns", "line", "rows"])
def test_each_limit_refuses_naming_its_variable(case, tmp_path):
    small = IntakeLimits(max_file_bytes=20_000, max_decompressed_bytes=10_000, max_columns=8, max_line_bytes=200,
                         max_rows=100)
    lines = (b"0" * 150 + b"\n") * 80  # 12 KB of text: within the line, column and row limits
    if case == "file":
        path, variable = tmp_path / "big.csv", "RL_INGEST_MAX_FILE_BYTES"
        path.write_text(HEADER + _rows(600))  # ~25 KB
    elif case == "gzip":
        path, variable = _stream_gzip(tmp_path / "b.csv.gz", lines, 1), "RL_INGEST_MAX_DECOMPRESSED_BYTES"
    elif case == "zip":
        path, variable = _zip(tmp_path / "b.zip", lines), "RL_INGEST_MAX_DECOMPRESSED_BYTES"
    elif case == "columns":
        path, variable = tmp_path / "wide.csv", "RL_INGEST_MAX_COLUMNS"
        path.write_text(HEADER.strip() + ",a,b,c\n" + _rows(3))
    elif case == "line":
        path, variable = tmp_path / "long.csv", "RL_INGEST_MAX_LINE_BYTES"
        path.write_text(HEADER + _rows(3) + "2024-03-02T00:00:00Z,1,1,1,1," + "9" * 300 + "\n")
    else:
        path, variable = tmp_path / "many.csv", "RL_INGEST_MAX_ROWS"
        path.write_text(HEADER + _rows(101))
    assert path.stat().st_size <= 20_000 or case == "file"
    with pytest.raises(UserInputError, match=variable) as caught:
        read_candle_file(path, limits=small)
    assert len(str(caught.value)) < 500, str(caught.value)
    fits = tmp_path / "fits.csv"
    fits.write_text(HEADER + _rows(50))
    assert len(read_candle_file(fits, limits=small)) == 50


def test_a_file_just_within_the_limits_is_read(tmp_path):
    path = tmp_path / "fits.csv"
    path.write_text(HEADER + _rows(100))
    lines = path.read_text().splitlines()
    limits = IntakeLimits(max_file_bytes=path.stat().st_size, max_decompressed_bytes=path.stat().st_size,
                          max_columns=6, max_line_bytes=max(map(len, lines)), max_rows=100)
    assert len(read_candle_file(path, limits=limits)) == 100


def test_parquet_limits_are_checked_on_its_metadata(tmp_path):
    frame = pl.DataFrame({"timestamp": [f"2024-03-01T{h:02d}:00:00Z" for h in range(20)],
                          **{c: [1.0] * 20 for c in ("open", "high", "low", "close", "volume")}})
    path = tmp_path / "c.parquet"
    frame.with_columns(*(pl.lit(0).alias(f"extra{i}") for i in range(10))).write_parquet(path)
    with pytest.raises(UserInputError, match="has 16 columns.*RL_INGEST_MAX_COLUMNS"):
        read_candle_file(path, limits=IntakeLimits(max_columns=15))
    with pytest.raises(UserInputError, match="has 20 rows.*RL_INGEST_MAX_ROWS"):
        read_candle_file(path, limits=IntakeLimits(max_rows=19))
    with pytest.raises(UserInputError, match="uncompressed candle columns.*RL_INGEST_MAX_DECOMPRESSED_BYTES"):
        read_candle_file(path, limits=IntakeLimits(max_decompressed_bytes=100))
    assert len(read_candle_file(path, limits=IntakeLimits(max_columns=16, max_rows=20))) == 20


def test_a_zip_of_many_entries_is_refused_before_it_is_listed(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(500):
            archive.writestr(f"x{i}.txt", "")
    with pytest.raises(UserInputError, match="holds 500 entries"):
        read_candle_file(path)


@pytest.mark.parametrize(("variable", "value"), [
    ("RL_INGEST_MAX_FILE_BYTES", "100"), ("RL_INGEST_MAX_DECOMPRESSED_BYTES", "1000"),
    ("RL_INGEST_MAX_COLUMNS", "5"), ("RL_INGEST_MAX_LINE_BYTES", "20"), ("RL_INGEST_MAX_ROWS", "10"),
])
def test_the_cli_refuses_with_exit_2_and_names_the_limit(variable, value, capsys, monkeypatch, rl_env, conn, tmp_path):
    path = tmp_path / "eurusd.csv.gz"
    _stream_gzip(path, _rows(60).encode(), 1, head=HEADER.encode())  # ~3.5 KB of text, 1 KB compressed
    monkeypatch.setenv(variable, value)
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert code == 2, (out, err)
    assert variable in err and "Traceback" not in err
    assert _candles(conn) == 0


# -- the bombs of the report, with the default limits, in a subprocess -----------------------------------


def test_a_gzip_bomb_is_refused_by_the_cli_within_1_gb(gzip_bomb, rl_env, conn):
    code, out, err, peak = _measured(
        [str(RL_LIFECYCLE), "ingest", "--market", "EURUSD-1h", "--csv", str(gzip_bomb)], _child_env(rl_env))
    assert code == 2, (out, err)
    assert "RL_INGEST_MAX_LINE_BYTES" in err and "Traceback" not in err
    assert len(err) < 1000, err
    assert peak < GiB, f"peak RSS {peak / 2**20:.0f} MiB"
    print(f"gzip bomb via the CLI: peak RSS {peak / 2**20:.0f} MiB")
    assert _candles(conn) == 0


def test_a_gzip_bomb_of_short_lines_is_refused_within_1_gb(tmp_path, rl_env, conn):
    # 40 MiB of 1 KiB lines in 40 KB: past every line and row check, stopped by the decompressed size
    bomb = _stream_gzip(tmp_path / "lines.csv.gz", (b"0" * 1023 + b"\n") * 1024, 40, head=HEADER.encode())
    code, out, err, peak = _measured(
        [str(RL_LIFECYCLE), "ingest", "--market", "EURUSD-1h", "--csv", str(bomb)],
        _child_env(rl_env, RL_INGEST_MAX_DECOMPRESSED_BYTES=str(16 << 20)))
    assert code == 2, (out, err)
    assert "decompresses to more than" in err and "RL_INGEST_MAX_DECOMPRESSED_BYTES" in err
    assert peak < GiB, f"peak RSS {peak / 2**20:.0f} MiB"
    print(f"gzip bomb of lines via the CLI: peak RSS {peak / 2**20:.0f} MiB")


def test_ten_million_columns_are_refused_by_the_cli_within_1_gb(tmp_path, rl_env, conn):
    path = tmp_path / "wide.csv"
    line = b"0," * (10_000_000 - 1) + b"0\n"
    with open(path, "wb") as out:
        for offset in range(0, len(line), 1 << 20):
            out.write(line[offset:offset + (1 << 20)])
    assert path.stat().st_size == 20_000_000
    code, out, err, peak = _measured(
        [str(RL_LIFECYCLE), "ingest", "--market", "EURUSD-1h", "--csv", str(path)], _child_env(rl_env))
    assert code == 2, (out, err)
    assert "RL_INGEST_MAX_COLUMNS" in err and "Traceback" not in err and len(err) < 1000, err
    assert peak < GiB, f"peak RSS {peak / 2**20:.0f} MiB"
    print(f"10 million columns via the CLI: peak RSS {peak / 2**20:.0f} MiB")


_INBOX_SCRIPT = """
import json, sys
import psycopg
from rl_lifecycle.candles.inbox import outcome_dict, process_inbox
from rl_lifecycle.windows import WindowScheme
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    outcomes = process_inbox(conn, sys.argv[2], settle_seconds=0, scheme=WindowScheme("monthly"))
print(json.dumps([outcome_dict(o) for o in outcomes]))
"""


def test_a_gzip_bomb_in_the_inbox_is_rejected_within_1_gb_with_a_short_report(gzip_bomb, rl_env, conn, tmp_path):
    add_market(conn, Market("BTCUSDT", "1h"))
    inbox = tmp_path / "inbox"
    (inbox / "BTCUSDT-1h").mkdir(parents=True)
    (inbox / "BTCUSDT-1h" / "bomb.csv.gz").write_bytes(gzip_bomb.read_bytes())
    code, out, err, peak = _measured(
        [sys.executable, "-c", _INBOX_SCRIPT, rl_env["RL_DATABASE_URL"], str(inbox)], _child_env(rl_env))
    assert code == 0, err
    (outcome,) = json.loads(out)
    assert outcome["status"] == REJECTED and "RL_INGEST_MAX_LINE_BYTES" in outcome["problems"][0]
    assert peak < GiB, f"peak RSS {peak / 2**20:.0f} MiB"
    print(f"gzip bomb via the inbox: peak RSS {peak / 2**20:.0f} MiB")
    report = Path(outcome["report"])
    assert report.stat().st_size < 4000
    assert _candles(conn) == 0


# -- excerpts -----------------------------------------------------------------------------------------------


def test_a_huge_single_line_gives_a_short_message(tmp_path):
    path = tmp_path / "one-line.csv"
    path.write_bytes(b"x" * 5_000_000)
    with pytest.raises(UserInputError, match="RL_INGEST_MAX_LINE_BYTES") as caught:
        read_candle_file(path)
    assert len(str(caught.value)) < 500
    # within the line limit, a header-only line of names is named by excerpt
    path.write_text("time," + "y" * 10_000 + "\n")
    with pytest.raises(UserInputError, match="missing required column") as caught:
        read_candle_file(path)
    assert "y" * 201 not in str(caught.value) and len(str(caught.value)) < 800


def _long_bad_rows(path: Path) -> Path:
    stamp = "2024-03-01T00:00:00Z" + "x" * 5000
    path.write_text(HEADER + _rows(2) + f"{stamp},100,{'9' * 3000}z,99,100.5,10\n" + _rows(1, "2024-03-02"))
    return path


def test_a_bad_row_is_quoted_by_excerpt_in_the_cli(capsys, monkeypatch, rl_env, conn, tmp_path):
    path = _long_bad_rows(tmp_path / "long.csv")
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert code == 2 and "row 4" in err and "unparseable timestamp" in err and "high: not a number" in err
    assert "x" * 201 not in err and "9" * 201 not in err
    (line,) = [line for line in err.splitlines() if "row 4" in line]
    assert len(line) < 300, line


def test_a_bad_row_is_quoted_by_excerpt_in_the_inbox_report(conn, tmp_path):
    add_market(conn, Market("BTCUSDT", "1h"))
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    _long_bad_rows(market_dir / "long.csv")
    (outcome,) = process_inbox(conn, tmp_path / "inbox", settle_seconds=0, scheme=MONTHLY)
    assert outcome.status == REJECTED and outcome.problem_count == 1
    text = Path(outcome.report).read_text()
    assert "x" * 201 not in text and "9" * 201 not in text and len(text) < 3000
    assert "x" * 201 not in outcome.describe()


def test_a_timestamp_repeated_thousands_of_times_gives_short_reasons(conn, tmp_path):
    add_market(conn, Market("BTCUSDT", "1h"))
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    (market_dir / "dups.csv").write_text(HEADER + "".join(f"2024-03-01T00:00:00Z,100,101,99,{100 + i / 1000},10\n"
                                                          for i in range(3000)))
    (outcome,) = process_inbox(conn, tmp_path / "inbox", settle_seconds=0, scheme=MONTHLY)
    assert outcome.status == REJECTED and outcome.problem_count == 3000
    assert len(outcome.problems) == 1000  # the report lists the first 1000 and counts the rest
    assert outcome.problems[0].endswith("(see also rows 3, 4, 5, 6, 7, and 2994 more)"), outcome.problems[0]
    assert max(map(len, outcome.problems)) < 300
    report = json.loads(Path(outcome.report).read_text())
    assert report["problem_count"] == 3000 and report["problems_not_listed"] == 2000
    assert Path(outcome.report).stat().st_size < 400_000


# -- Parquet columns of a type that cannot be candles ---------------------------------------------------------


def _parquet(path: Path, **columns) -> Path:
    base = {"timestamp": ["2024-03-01T00:00:00Z", "2024-03-01T01:00:00Z"],
            **{c: [100.0, 100.0] for c in ("open", "high", "low", "close", "volume")}}
    pl.DataFrame(base | columns).write_parquet(path)
    return path


@pytest.mark.parametrize(("column", "values", "shown"), [
    ("close", [[1.0], [2.0]], "List(Float64)"),
    ("timestamp", [dt.timedelta(hours=1), dt.timedelta(hours=2)], "Duration"),
    ("volume", [{"a": 1}, {"a": 2}], "Struct"),
    ("open", [dt.timedelta(hours=1), dt.timedelta(hours=2)], "Duration"),
])
def test_a_parquet_column_of_another_type_is_named(column, values, shown, capsys, monkeypatch, rl_env, conn, tmp_path):
    path = _parquet(tmp_path / "odd.parquet", **{column: values})
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--parquet", str(path))
    assert code == 2, (out, err)
    assert f"column {column!r}" in err and shown in err and "Traceback" not in err, err
    assert _candles(conn) == 0


def test_a_parquet_file_with_an_unused_list_column_is_read(tmp_path):
    path = _parquet(tmp_path / "extra.parquet", notes=[["a"], ["b", "c"]], when=[dt.timedelta(1), dt.timedelta(2)])
    raw = read_candle_file(path)
    assert len(raw) == 2 and raw.frame["close"].to_list() == [100.0, 100.0]
