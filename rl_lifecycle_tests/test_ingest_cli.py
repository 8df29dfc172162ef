"""`rl-lifecycle ingest`: a bad file is refused whole; --quarantine sets bad rows aside; re-imports change nothing."""

from __future__ import annotations

from pathlib import Path

from rl_lifecycle_tests.cli_helpers import run_cli

GOOD_ROWS = [
    "2024-03-01 00:00:00,100,101,99,100.5,10",
    "2024-03-01 01:00:00,100.5,102,100,101,12",
    "2024-03-01 02:00:00,101,101.5,100.5,101.2,9",
    "2024-03-01 05:00:00,101.2,103,101,102,15",
]
BAD_ROWS = [
    "2024-03-01 03:00:00,101,100,99,100.8,11",  # high < max(open, close)
    "2024-03-01 04:00:00,100.8,101,99,100,-3",  # negative volume
    "2024-03-01 04:30:00,100,101,99,100,5",  # not aligned to 1h
    "not-a-date,1,2,0.5,1,1",  # unparseable timestamp
]


def _write(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "eurusd.csv"
    path.write_text("Time,Open,High,Low,Close,Volume,Adj Close\n" + "\n".join(r + ",0" for r in rows) + "\n")
    return path


def _candles(conn) -> int:
    return conn.execute("SELECT count(*) FROM market_candles").fetchone()[0]


def test_bad_file_is_refused_whole_with_every_problem(capsys, monkeypatch, rl_env, conn, tmp_path):
    path = _write(tmp_path, GOOD_ROWS + BAD_ROWS)
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert code == 2
    assert "nothing was written" in err
    for row, reason in [(6, "high"), (7, "is negative"), (8, "aligned"), (9, "timestamp")]:
        assert f"row {row}" in err and reason in err, (row, reason, err)
    assert _candles(conn) == 0
    assert conn.execute("SELECT count(*) FROM candles_quarantine").fetchone()[0] == 0


def test_quarantine_stores_good_rows_and_bad_rows_with_reasons(capsys, monkeypatch, rl_env, conn, tmp_path):
    path = _write(tmp_path, GOOD_ROWS + BAD_ROWS)
    code, out, _ = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path), "--quarantine")
    assert code == 0, out
    assert "inserted 4" in out and "quarantined 4" in out
    assert _candles(conn) == 4
    reasons = dict(conn.execute("SELECT row_number, reasons FROM candles_quarantine ORDER BY row_number").fetchall())
    assert sorted(reasons) == [6, 7, 8, 9]
    assert any("high" in r for r in reasons[6]) and any("volume" in r for r in reasons[7])
    # the same file again changes nothing, in either table
    code, out, _ = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path), "--quarantine")
    assert code == 0 and "inserted 0, updated 0, unchanged 4" in out
    assert conn.execute("SELECT count(*) FROM candles_quarantine").fetchone()[0] == 4


def test_clean_file_is_ingested_idempotently_and_gaps_reported(capsys, monkeypatch, rl_env, conn, tmp_path):
    path = _write(tmp_path, GOOD_ROWS)
    code, out, _ = run_cli(capsys, monkeypatch, "ingest", "--market", "eur/usd-1h", "--csv", str(path))
    assert code == 0 and "inserted 4" in out
    assert "2 missing bars" in out  # 03:00 and 04:00 are a gap, reported and not filled
    code, out, _ = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert "inserted 0, updated 0, unchanged 4" in out
    assert conn.execute("SELECT pair, interval, source FROM markets").fetchall() == [("EURUSD", "1h", "import")]


def test_missing_columns_are_named(capsys, monkeypatch, rl_env, conn, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("Time,Open,Close\n2024-03-01 00:00:00,1,1\n")
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert code == 2 and "high" in err and "low" in err and "volume" in err
    assert _candles(conn) == 0


def test_synthetic_ingest_is_idempotent(capsys, monkeypatch, rl_env, conn):
    args = ["ingest", "--market", "BTCUSDT-1h", "--synthetic", "--start", "2024-01-01", "--end", "2024-01-08", "--seed", "7"]
    code, out, _ = run_cli(capsys, monkeypatch, *args)
    assert code == 0 and "inserted 168" in out
    code, out, _ = run_cli(capsys, monkeypatch, *args)
    assert code == 0 and "inserted 0, updated 0, unchanged 168" in out


def test_non_finite_values_are_quarantined_with_their_reason(capsys, monkeypatch, rl_env, conn, tmp_path):
    hostile = [
        "2024-03-01 03:00:00,nan,101,99,100,5",
        "2024-03-01 04:00:00,100,inf,99,100,5",
        "2024-03-01 06:00:00,100,101,99,1e400,5",
        "2024-03-01 07:00:00,100,101,99,100,-inf",
    ]
    path = _write(tmp_path, GOOD_ROWS + hostile)
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert code == 2 and _candles(conn) == 0  # refused whole without --quarantine
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path), "--quarantine")
    assert code == 0, out + err
    assert "inserted 4" in out and "quarantined 4" in out
    rows = conn.execute("SELECT row_number, raw, reasons FROM candles_quarantine ORDER BY row_number").fetchall()
    assert [r[0] for r in rows] == [6, 7, 8, 9]
    assert rows[0][1]["open"] == "nan" and rows[1][1]["high"] == "inf" and rows[2][1]["close"] == "inf"
    assert all(r[2] for r in rows)  # every row carries its reason


def test_local_exchange_times_are_stored_in_utc(capsys, monkeypatch, rl_env, conn, tmp_path):
    path = _write(tmp_path, GOOD_ROWS)
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path),
                           "--ts-timezone", "Mars/Olympus")
    assert code == 2 and "not an IANA time zone" in err and _candles(conn) == 0
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path),
                             "--ts-timezone", "Europe/Berlin")
    assert code == 0, err
    first = conn.execute("SELECT min(ts) AT TIME ZONE 'UTC' FROM market_candles").fetchone()[0]
    assert first.isoformat() == "2024-02-29T23:00:00"  # 00:00 in Berlin (UTC+1 in winter)


def _candle_digest(conn) -> str:
    return conn.execute(
        "SELECT md5(coalesce(string_agg(concat_ws(',', pair, ts, open, high, low, close, volume), ';' ORDER BY pair, ts), ''))"
        " FROM market_candles"
    ).fetchone()[0]


def test_synthetic_ingest_into_an_imported_market_is_refused(capsys, monkeypatch, rl_env, conn, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(_write(tmp_path, GOOD_ROWS)))
    assert code == 0, err
    before = _candle_digest(conn)

    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--synthetic",
                             "--start", "2024-03-01", "--end", "2024-03-02")

    assert code == 2, (out, err)
    assert "market EURUSD-1h is an imported market: it holds 4 imported candles" in err
    assert "SIMEURUSD-1h" in err and "Traceback" not in err  # what to do instead
    assert _candle_digest(conn) == before and _candles(conn) == 4


def test_synthetic_ingest_makes_a_synthetic_market_of_one_seed(capsys, monkeypatch, rl_env, conn, tmp_path):
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.markets.table import get_market

    args = ["ingest", "--market", "SIMUSDT-1h", "--synthetic", "--start", "2024-03-01", "--end", "2024-03-02"]
    code, out, err = run_cli(capsys, monkeypatch, *args, "--seed", "7")
    assert code == 0 and "inserted 24" in out, err
    record = get_market(conn, Market.parse("SIMUSDT-1h"))
    assert (record.source, record.synthetic_seed) == ("synthetic", 7)
    before = _candle_digest(conn)

    code, _, err = run_cli(capsys, monkeypatch, *args, "--seed", "8")  # other bars over the same ones
    assert code == 2 and "synthetic with seed 7" in err and "--seed 7" in err
    code, _, err = run_cli(capsys, monkeypatch, *args, "--seed", "-1")
    assert code == 2 and "out of range" in err
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "SIMUSDT-1h", "--csv", str(_write(tmp_path, GOOD_ROWS)))
    assert code == 2 and "is synthetic" in err  # the reverse, as before
    assert _candle_digest(conn) == before
