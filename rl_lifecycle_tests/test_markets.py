"""Market keys: normalisation, refusals, and the `market` CLI against the real database."""

from __future__ import annotations

import pytest

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import INTERVALS, Market, normalize_pair
from rl_lifecycle_tests.cli_helpers import run_cli


@pytest.mark.parametrize("raw", ["BTC/USDT", "btc-usdt", "BTC_USDT", " btcusdt ", "btc:usdt"])
def test_pairs_are_normalised(raw):
    assert normalize_pair(raw) == "BTCUSDT"


def test_market_key_round_trip():
    market = Market.parse("BTC/USDT-1h")
    assert (market.pair, market.interval, market.key) == ("BTCUSDT", "1h", "BTCUSDT-1h")
    assert Market.parse(market.key) == market
    assert market.interval_us == 3_600_000_000
    assert set(INTERVALS) == {"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"}


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("BTC'; DROP TABLE markets;---1h", "pair"),
        ("BTCUSDT-1x", "interval '1x'"),
        ("BTCUSDT", "expected PAIR-INTERVAL"),
        ("", "expected PAIR-INTERVAL"),
        ("B-1h", "pair 'B'"),
        ("A" * 21 + "-1h", "2-20 characters"),
        ("BTC€USDT-1h", "pair"),
    ],
)
def test_bad_market_keys_are_refused_with_a_message(key, fragment):
    with pytest.raises(UserInputError, match=None) as info:
        Market.parse(key)
    assert fragment in str(info.value)


def _market_rows(conn):
    return conn.execute("SELECT pair, interval, source FROM markets ORDER BY 1, 2").fetchall()


@pytest.mark.parametrize(
    ("pair", "interval"),
    [("BTC'; DROP TABLE markets;--", "1h"), ("BTC/USDT", "1x"), ("", "1h"), ("BTC/USDT", "")],
)
def test_cli_refuses_bad_markets_with_exit_2_and_writes_nothing(capsys, monkeypatch, rl_env, conn, pair, interval):
    code, _, err = run_cli(capsys, monkeypatch, "market", "add", pair, interval)
    assert code == 2
    assert err.startswith("error: ")
    assert _market_rows(conn) == []


def test_cli_adds_and_lists_markets_and_keeps_partitions_in_step(capsys, monkeypatch, rl_env, conn, dagster_database_url):
    from rl_lifecycle.orchestration.instance import get_instance
    from rl_lifecycle.settings import load_settings

    code, out, _ = run_cli(capsys, monkeypatch, "market", "add", "btc/usdt", "1h")
    assert code == 0 and "added: BTCUSDT-1h" in out
    code, out, _ = run_cli(capsys, monkeypatch, "market", "add", "BTCUSDT", "1h")
    assert code == 0 and "already registered" in out
    code, out, _ = run_cli(capsys, monkeypatch, "market", "list")
    assert code == 0 and "BTCUSDT-1h" in out
    assert _market_rows(conn) == [("BTCUSDT", "1h", "import")]
    instance = get_instance(load_settings(), rl_env["RL_DATABASE_URL"])
    assert "BTCUSDT-1h" in instance.get_dynamic_partitions("market")


def test_cli_usage_errors_exit_2(capsys, monkeypatch, rl_env):
    code, _, err = run_cli(capsys, monkeypatch, "materialize", "candles", "--partition", "BTCUSDT-1h")
    assert code == 2 and "MARKET|WINDOW" in err
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "BTCUSDT-1h")
    assert code == 2 and "exactly one source" in err
    code, _, _ = run_cli(capsys, monkeypatch, "no-such-command")
    assert code == 2
