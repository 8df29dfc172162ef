"""`rl-lifecycle candles export`: stored candles as a CSV that `ingest` reads back into identical rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.store import upsert_candles
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.windows import to_us
from rl_lifecycle_tests.cli_helpers import run_cli


def _rows(conn, market_key: str) -> list[tuple]:
    pair, interval = Market.parse(market_key).pair, Market.parse(market_key).interval
    return conn.execute(
        "SELECT ts, open, high, low, close, volume FROM market_candles WHERE pair = %s AND interval = %s ORDER BY ts",
        (pair, interval),
    ).fetchall()


def test_export_then_ingest_into_another_market_gives_identical_rows(capsys, monkeypatch, rl_env, conn, tmp_path):
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "BTCUSDT-1h", "--synthetic",
                             "--start", "2024-06-01", "--end", "2024-07-01", "--seed", "7")
    assert code == 0, err
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    csv = out_dir / "btc.csv"
    code, out, err = run_cli(capsys, monkeypatch, "candles", "export", "--market", "BTCUSDT-1h",
                             "--from", "2024-06-01", "--to", "2024-07-01", "--csv", str(csv))
    assert code == 0, err
    assert "wrote 720 candles" in out
    assert csv.read_text().splitlines()[0] == "timestamp,open,high,low,close,volume"
    assert csv.read_text().splitlines()[1].startswith("2024-06-01T00:00:00Z,")
    assert [p.name for p in out_dir.iterdir()] == ["btc.csv"]  # no temporary file left beside it

    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "BTCDEMO-1h", "--csv", str(csv))
    assert code == 0, err
    assert "inserted 720" in out
    source = _rows(conn, "BTCUSDT-1h")
    assert len(source) == 720 and _rows(conn, "BTCDEMO-1h") == source

    # a sub-range, exported again over the same file (replaced), re-ingests as unchanged
    code, out, err = run_cli(capsys, monkeypatch, "candles", "export", "--market", "BTCDEMO-1h",
                             "--from", "2024-06-10T05:00:00", "--to", "2024-06-11", "--csv", str(csv))
    assert code == 0 and "wrote 19 candles" in out, err
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "BTCDEMO-1h", "--csv", str(csv))
    assert code == 0 and "inserted 0, updated 0, unchanged 19" in out, err


def test_export_round_trips_every_double_exactly(capsys, monkeypatch, rl_env, conn, tmp_path):
    market = Market("ODD", "1h")
    add_market(conn, market)
    rng = np.random.default_rng(3)
    n = 500
    close = np.concatenate([[0.1 + 0.2, 1e-9 / 3, 123456789.123456789, 7.0], rng.random(n - 4) * 10.0 ** rng.integers(-8, 9, n - 4)])
    opens = close * (1 + rng.random(n) / 100)
    frame = pl.DataFrame({
        "ts": pl.datetime_range(pl.datetime(2024, 3, 1, time_zone="UTC"), pl.datetime(2024, 3, 1, time_zone="UTC")
                                + pl.duration(hours=n - 1), "1h", eager=True, time_zone="UTC"),
        "open": opens, "high": np.maximum(opens, close) * 1.01, "low": np.minimum(opens, close) / 1.01,
        "close": close, "volume": rng.random(n) * 1e6,
    })
    upsert_candles(conn, market, frame)
    csv = tmp_path / "odd.csv"
    code, _, err = run_cli(capsys, monkeypatch, "candles", "export", "--market", "ODD-1h",
                           "--from", "2024-01-01", "--to", "2025-01-01", "--csv", str(csv))
    assert code == 0, err
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "ODDCOPY-1h", "--csv", str(csv))
    assert code == 0 and f"inserted {n}" in out, err
    assert _rows(conn, "ODDCOPY-1h") == _rows(conn, "ODD-1h")


@pytest.mark.parametrize(("args", "named"), [
    (["--from", "2024-07-01", "--to", "2024-06-01"], "--to 2024-06-01 must be after --from 2024-07-01"),
    (["--from", "2024-06-01", "--to", "2024-06-01"], "--to 2024-06-01 must be after --from 2024-06-01"),
    (["--from", "June", "--to", "2024-07-01"], "--from 'June'"),
    (["--from", "2024-06-01", "--to", "2024-13-01"], "--to '2024-13-01'"),
    (["--market", "NOPE-1h"], "market NOPE-1h is not registered"),
    (["--market", "BTCUSDT-7x"], "7x"),
    (["--csv", "{tmp}/missing-dir/out.csv"], "--csv"),
    (["--csv", "{tmp}"], "--csv"),
    (["--from", "2020-01-01", "--to", "2020-02-01"], "no candles of BTCUSDT-1h are stored"),
])
def test_bad_arguments_exit_2_naming_them(capsys, monkeypatch, rl_env, conn, tmp_path, args, named):
    add_market(conn, Market("BTCUSDT", "1h"))
    one = np.ones(1)
    upsert_candles(conn, Market("BTCUSDT", "1h"),
                   CandleArrays(np.array([to_us("2024-06-01")]), one, one, one, one, one).to_frame())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    options = {"--market": "BTCUSDT-1h", "--from": "2024-06-01", "--to": "2024-07-01",
               "--csv": str(out_dir / "out.csv")}
    for name, value in zip(args[::2], args[1::2], strict=True):
        options[name] = value.replace("{tmp}", str(out_dir))
    code, out, err = run_cli(capsys, monkeypatch, "candles", "export", *[x for kv in options.items() for x in kv])
    assert code == 2, (out, err)
    assert named in err, err
    assert not list(out_dir.iterdir())  # nothing written, no temporary file
