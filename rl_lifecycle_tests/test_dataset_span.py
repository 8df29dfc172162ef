"""Datasets long enough for the market's bars (issue 17, point 6): a per-market default span
(`market add ... --span-windows N`, `market list`, `market set-span-windows`), `--span-windows` on
materialize, train and evaluate, the span in the dataset's identity, and refusals that say how many bars
a span holds when it is too short for the requested folds."""

from __future__ import annotations

import exchange_calendars as xcals
import pytest

from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import latest_version, market_span_windows, span_bars, spec_ending_at
from rl_lifecycle.datasets.spec import DEFAULT_SPAN_WINDOWS
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market, get_market, set_market_span_windows
from rl_lifecycle.windows import WindowScheme
from rl_lifecycle_tests.cli_helpers import run_cli
from rl_lifecycle_tests.test_calendar_trading import store_on_calendar

GOOGL = Market("GOOGL", "1d")
SCHEME = WindowScheme("monthly")
DECEMBER = SCHEME.parse("2023-12-01")


def _sessions(first: str, last: str) -> int:
    return len(xcals.get_calendar("XNYS", start="2021-01-01", end="2025-12-31").sessions_in_range(first, last))


def test_a_markets_span_is_stored_listed_and_changed_only_explicitly(capsys, monkeypatch, rl_env, conn,
                                                                    dagster_database_url):
    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    code, out, err = cli("market", "add", "GOOGL", "1d", "--calendar", "XNYS", "--span-windows", "12")
    assert code == 0 and "added: GOOGL-1d" in out, err
    assert cli("market", "add", "BTC/USDT", "1h")[0] == 0
    code, out, _ = cli("market", "list")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "span" in out.splitlines()[0]
    assert lines["GOOGL-1d"].split()[2:4] == ["XNYS", "12"]
    assert "default (3)" in lines["BTCUSDT-1h"]
    assert market_span_windows(conn, GOOGL) == 12 and market_span_windows(conn, GOOGL, 5) == 5
    assert market_span_windows(conn, Market("BTCUSDT", "1h")) == DEFAULT_SPAN_WINDOWS == 3
    # the same span again is fine; another is refused and points to the explicit command
    assert cli("market", "add", "GOOGL", "1d", "--span-windows", "12")[0] == 0
    code, _, err = cli("market", "add", "GOOGL", "1d", "--span-windows", "6")
    assert code == 2 and "a span of 12 windows" in err and "market set-span-windows GOOGL-1d 6" in err
    assert get_market(conn, GOOGL).span_windows == 12
    for bad in ("0", "121"):
        code, _, err = cli("market", "add", "AAPL", "1d", "--span-windows", bad)
        assert code == 2 and f"--span-windows {bad} is invalid" in err
    assert [r[0] for r in conn.execute("SELECT pair FROM markets ORDER BY pair")] == ["BTCUSDT", "GOOGL"]
    code, out, _ = cli("market", "set-span-windows", "GOOGL-1d", "24")
    assert code == 0 and "GOOGL-1d: span windows 12 -> 24" in out
    code, out, _ = cli("market", "set-span-windows", "GOOGL-1d", "default")
    assert code == 0 and "24 -> default (3)" in out and get_market(conn, GOOGL).span_windows is None
    code, _, err = cli("market", "set-span-windows", "NOPE-1d", "4")
    assert code == 2 and "not registered" in err
    with pytest.raises(UserInputError, match="1 to 120 windows"):
        set_market_span_windows(conn, GOOGL, 0)


@pytest.fixture
def googl(conn):
    """GOOGL-1d on XNYS with the sessions of 2022 and 2023 stored."""
    store_on_calendar(conn, GOOGL, "XNYS", "2022-01-01", "2024-01-01", 11)
    return conn


def test_the_span_is_part_of_the_datasets_identity_and_says_how_many_bars_it_holds(googl, tmp_path):
    conn, features = googl, load_feature_set("ta_v2")
    quarter = span_bars(conn, GOOGL, DECEMBER, SCHEME, 3)
    assert quarter.stored == quarter.expected == _sessions("2023-10-01", "2023-12-31") == 63
    assert quarter.first_window.key == "2023-10-01"
    assert "a span of 3 window(s) (2023-10-01 .. 2023-12-01) holds 63 stored bar(s) of GOOGL-1d" in quarter.describe(GOOGL)
    short = build_dataset(conn, spec_ending_at(GOOGL, DECEMBER, SCHEME, "ta_v2", 3), tmp_path, features)
    year = build_dataset(conn, spec_ending_at(GOOGL, DECEMBER, SCHEME, "ta_v2", 12), tmp_path, features)
    assert short.dataset_hash != year.dataset_hash  # the span (first_window .. last_window) is in the hash
    assert (short.rows, year.rows) == (63, _sessions("2023-01-01", "2023-12-31")) == (63, 250)
    assert year.spec.first_window == "2023-01-01" and short.spec.first_window == "2023-10-01"
    assert latest_version(conn, GOOGL, DECEMBER).dataset_hash == year.dataset_hash  # the latest build of the window


def test_evaluate_refuses_a_span_too_short_for_its_folds_saying_how_many_bars_it_holds(googl, capsys, monkeypatch,
                                                                                       rl_env, tmp_path):
    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    code, _, err = cli("evaluate", "--market", "GOOGL-1d", "--window", "2023-12-01", "--span-windows", "3",
                       "--folds", "3", "--test-size", "40")
    assert code == 2 and "--span-windows 3: a span of 3 window(s) (2023-10-01 .. 2023-12-01) holds 63 stored bar(s)" in err
    assert "fold(s) fit" in err and "nothing was run" in err
    # the stored dataset of the default span: its rows, windows and the option that lengthens it
    build_dataset(googl, spec_ending_at(GOOGL, DECEMBER, SCHEME, "ta_v2", 3), tmp_path, load_feature_set("ta_v2"))
    code, _, err = cli("evaluate", "--market", "GOOGL-1d", "--window", "2023-12-01", "--folds", "3", "--test-size", "40")
    assert code == 2 and "(63 rows over 3 window(s), 2023-10-01 .. 2023-12-01)" in err and "--span-windows N" in err
    code, _, err = cli("materialize", "candles", "--partition", "GOOGL-1d|2023-12-01", "--span-windows", "12")
    assert code == 2 and "not among the assets" in err
    code, _, err = cli("materialize", "training_dataset", "--partition", "GOOGL-1d|2023-12-01", "--span-windows", "0")
    assert code == 2 and "--span-windows 0 is invalid" in err
    assert googl.execute("SELECT count(*) FROM evaluation_reports").fetchone()[0] == 0


@pytest.mark.slow
def test_training_dataset_runs_take_the_markets_span_or_the_runs(googl, capsys, monkeypatch, rl_env):
    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    add_market(googl, GOOGL, span_windows=None)  # registered already (XNYS): nothing changes
    set_market_span_windows(googl, GOOGL, 12)
    code, out, err = cli("materialize", "training_dataset", "--partition", "GOOGL-1d|2023-12-01")
    assert code == 0, out + err
    dataset = latest_version(googl, GOOGL, DECEMBER)
    assert (dataset.spec.first_window, dataset.rows) == ("2023-01-01", 250)
    code, out, err = cli("materialize", "training_dataset", "--partition", "GOOGL-1d|2023-12-01", "--span-windows", "6")
    assert code == 0, out + err
    dataset = latest_version(googl, GOOGL, DECEMBER)
    assert (dataset.spec.first_window, dataset.rows) == ("2023-07-01", _sessions("2023-07-01", "2023-12-31"))
