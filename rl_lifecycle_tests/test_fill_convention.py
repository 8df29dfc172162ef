"""The fill convention per market (issue 17, point 3): `close` (the deciding bar's close; crypto's default) or
`next_open` (the next bar's open; fx's and the exchange calendars' default), stored with the market, recorded
in the dataset it builds (so in its hash, the models and the evaluations), followed by the env, the
NautilusTrader backtest, the accountant and the paper book, and shown by `report show --json`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.datasets.spec import DatasetSpec
from rl_lifecycle.decisions.paper_pnl import SegmentDecisions, book_segment
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.accountant import account_candles
from rl_lifecycle.evaluation.backtest import FoldJob, align_candles, run_fold_backtest
from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.policies import FixedPositions
from rl_lifecycle.evaluation.service import evaluate_spec, report_json
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import get_market, set_market_fill
from rl_lifecycle.models.env import MarketEnv
from rl_lifecycle.models.service import training_data
from rl_lifecycle.trading import cost_fraction, step_rewards
from rl_lifecycle.windows import DAY_US, WindowScheme
from rl_lifecycle_tests.cli_helpers import run_cli
from rl_lifecycle_tests.test_calendar_trading import _tiny_spec, store_on_calendar

GOOGL = Market("GOOGL", "1d")
DECEMBER = WindowScheme("monthly").parse("2023-12-01")
H = 3_600_000_000


def test_a_markets_fill_is_stored_listed_defaulted_by_calendar_and_changed_only_explicitly(
        capsys, monkeypatch, rl_env, conn, dagster_database_url):
    def cli(*args):
        return run_cli(capsys, monkeypatch, *args)

    assert cli("market", "add", "GOOGL", "1d", "--calendar", "XNYS")[0] == 0
    assert cli("market", "add", "EUR/USD", "1h", "--calendar", "fx")[0] == 0
    assert cli("market", "add", "BTC/USDT", "1h")[0] == 0
    code, out, err = cli("market", "add", "ETH/USDT", "1d", "--fill", "next_open")
    assert code == 0, err
    code, out, _ = cli("market", "list")
    header, *rows = out.splitlines()
    assert "fill" in header.split()
    fills = {row.split()[0]: row.split()[header.split().index("fill") + 1] for row in rows}  # "default (3)": 2 words
    assert fills == {"BTCUSDT-1h": "close", "ETHUSDT-1d": "next_open", "EURUSD-1h": "next_open",
                     "GOOGL-1d": "next_open"}
    # the same fill again is fine; another is refused and points to the explicit command
    assert cli("market", "add", "GOOGL", "1d", "--fill", "next_open")[0] == 0
    code, _, err = cli("market", "add", "GOOGL", "1d", "--fill", "close")
    assert code == 2 and "fill 'next_open'" in err and "market set-fill GOOGL-1d close" in err
    code, _, err = cli("market", "add", "AAPL", "1d", "--fill", "open")
    assert code == 2 and "--fill 'open' is invalid: expected one of close, next_open" in err
    assert conn.execute("SELECT count(*) FROM markets WHERE pair = 'AAPL'").fetchone()[0] == 0
    code, out, _ = cli("market", "set-fill", "GOOGL-1d", "close")
    assert code == 0 and "GOOGL-1d: fill next_open -> close" in out and get_market(conn, GOOGL).fill == "close"
    code, out, _ = cli("market", "set-fill", "GOOGL-1d", "default")
    assert code == 0 and "close -> next_open" in out
    code, _, err = cli("market", "set-fill", "GOOGL-1d", "later")
    assert code == 2 and "fill 'later' is invalid" in err
    code, _, err = cli("market", "set-fill", "NOPE-1d", "close")
    assert code == 2 and "not registered" in err


def test_the_fill_is_part_of_the_datasets_identity_and_close_keeps_the_old_hashes():
    fields = dict(market="GOOGL-1d", first_window="2023-01-01", last_window="2023-12-01", feature_set="ta_v2")
    close, next_open = DatasetSpec.create(**fields), DatasetSpec.create(**fields, fill="next_open")
    assert "fill" not in json.loads(close.canonical_json())  # as stored before the field: the same dataset_hash
    assert json.loads(next_open.canonical_json())["fill"] == "next_open"
    assert DatasetSpec.create(**json.loads(close.canonical_json())).fill == "close"
    with pytest.raises(UserInputError, match="fill"):
        DatasetSpec.create(**fields, fill="open")


def test_the_env_under_next_open_earns_the_gap_with_the_previous_position_and_the_bar_from_the_open():
    close = np.array([100.0, 110.0, 121.0, 121.0])
    opens = np.array([99.0, 105.0, 120.0, 125.0])
    c = 0.001
    env = MarketEnv(np.zeros((4, 1)), close, np.ones(3, bool), cost_bps=10.0, opens=opens)
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in (1, 1, 0)]
    # row 0: decided long at close 100, filled at 105: earns 110/105; row 1: the gap 110 -> 120 and the bar
    # 120 -> 121, both long; row 2: flat from the open 125, the gap 121 -> 125 still long
    assert rewards == pytest.approx([math.log(110 / 105) - c, math.log(120 / 110) + math.log(121 / 120),
                                     math.log(125 / 121) - c], abs=1e-15)
    assert rewards == pytest.approx(step_rewards(close, [1, 1, 0], 10.0, open_=opens).tolist(), abs=1e-15)
    assert sum(rewards) == pytest.approx(math.log(125 / 105) - 2 * c, abs=1e-15)  # open to open, less the cost


def test_nautilus_fills_a_next_open_order_at_the_next_bars_open_as_the_accountant_books_it():
    """Through the backtest's own venue: decided at bar t's close, sized at bar t+1's open and filled there."""
    ts = np.arange(6, dtype=np.int64) * H + 1_700_000_000 // 3600 * H
    close = np.array([100.0, 102.0, 101.0, 104.0, 103.0, 105.0])
    opens = np.array([99.5, 100.5, 103.0, 100.0, 104.5, 102.0])  # no open equals the previous close
    high, low = np.maximum(opens, close) + 0.5, np.minimum(opens, close) - 0.5
    candles = CandleArrays(ts, opens, high, low, close, np.full(6, 10.0))
    positions = (1, 1, 0, 1, 1, 0)
    job = FoldJob("BTCUSDT-1h", 0, candles, np.zeros((6, 1)), FixedPositions(positions), 10.0, 100_000.0,
                  fill="next_open")
    result = run_fold_backtest(job)
    assert result.ok, result.error
    assert result.fill == "next_open"
    # long decided at bar 0 -> bought at open[1]; flat at bar 2 -> sold at open[3]; long at bar 3 -> open[4]
    assert [(f.bar, f.price, int(np.sign(f.quantity))) for f in result.fills] == [(1, 100.5, 1), (3, 100.0, -1),
                                                                                  (4, 104.5, 1)]
    assert [f.ts for f in result.fills] == [int(ts[1]), int(ts[3]), int(ts[4])]  # stamped at those bars' opens
    first = result.fills[0]
    assert first.quantity == pytest.approx(100_000.0 / 100.5, abs=1e-4)  # sized at the open it fills at
    # equity marked at each close includes the fills at its open
    assert result.equity[0] == 100_000.0 and result.equity[1] == pytest.approx(
        100_000.0 - first.fee + first.quantity * (102.0 - 100.5), abs=1e-6)
    booked = account_candles("BTCUSDT-1h", candles, np.array(positions, np.int8), 10.0, fill="next_open")
    assert booked.fill_bars.tolist() == [1, 3, 4] and booked.fill == "next_open"
    assert np.array_equal(booked.equity, result.equity) and booked.account_equity == result.account_equity
    close_fill = account_candles("BTCUSDT-1h", candles, np.array(positions, np.int8), 10.0)
    assert close_fill.fill_bars.tolist() == [0, 2, 3] and close_fill.fill_prices.tolist() == [100.0, 101.0, 104.0]


def test_the_paper_book_fills_at_the_next_open_under_next_open():
    ts = np.arange(5, dtype=np.int64) * H
    close = np.array([100.0, 102.0, 101.0, 104.0, 103.0])
    opens = np.array([99.0, 101.0, 103.0, 100.0, 104.0])
    candles = CandleArrays(ts, opens, np.maximum(opens, close) + 1, np.minimum(opens, close) - 1, close, np.ones(5))
    segment = SegmentDecisions(1, ts[[0, 2]], np.array([1, 0], np.int8), 2)
    book = book_segment("BTCUSDT-1h", candles, segment, 10.0, 8766.0, convention="next_open")
    assert book.booked.fill_bars.tolist() == [1, 3] and book.booked.fill_prices.tolist() == [101.0, 100.0]
    assert book.convention == "next_open"


@pytest.fixture
def googl_next_open(conn, tmp_path):
    """GOOGL-1d on XNYS filled at the next open: 2022 (warmup) and 2023 sessions; a 12-window dataset built
    under the market's fill, as `training_dataset` builds it."""
    store_on_calendar(conn, GOOGL, "XNYS", "2022-01-01", "2024-01-01", 11, fill="next_open")
    build_dataset(conn, spec_ending_at(GOOGL, DECEMBER, WindowScheme("monthly"), "ta_v2", 12, fill="next_open"),
                  tmp_path / "datasets", load_feature_set("ta_v2"))
    return conn


@pytest.mark.slow
def test_an_xnys_next_open_evaluation_records_its_fill_and_a_changed_fill_is_refused_by_name(googl_next_open,
                                                                                              tmp_path):
    conn = googl_next_open
    data = training_data(conn, GOOGL, DECEMBER)
    assert data.fill == "next_open" and data.dataset.spec.fill == "next_open"
    candles = align_candles(load_candles(conn, GOOGL, int(data.content.ts[0]), int(data.content.ts[-1]) + DAY_US),
                            data.content.ts)
    assert np.array_equal(data.open, candles.open)
    config = FoldConfig.create(n_folds=2, test_size=60, purge_bars=1)
    report = evaluate_spec(conn, GOOGL, DECEMBER, _tiny_spec(tmp_path), config, workdir=tmp_path / "evals",
                           workers=1, log=lambda _: None)
    assert report.status == "ok", [f.error for f in report.folds]
    assert report.aggregates["fill"] == "next_open" and report_json(report)["fill"] == "next_open"
    cost = cost_fraction(report.spec["cost_bps"])
    for fold in report.folds:  # the accountant booked the folds' positions at the next opens, to the bit
        assert fold.baselines["accountant"]["fill"] == "next_open" and fold.baselines["accountant"]["exact"]
        # buy and hold trades as any strategy can: the first close's decision fills at the next bar's open
        first, end = fold.test_range
        held = candles.close[end - 1] / candles.open[first + 1] - cost - 1
        assert fold.baselines["buy_and_hold"]["total_return"] == pytest.approx(held, rel=1e-12)

    set_market_fill(conn, GOOGL, "close")
    with pytest.raises(UserInputError, match=r"built under fill 'next_open', but the market fills at 'close'.*"
                                             r"materialize `training_dataset` again"):
        training_data(conn, GOOGL, DECEMBER)
    with pytest.raises(UserInputError, match="fill"):
        evaluate_spec(conn, GOOGL, DECEMBER, _tiny_spec(tmp_path), config, workdir=tmp_path / "evals2",
                      log=lambda _: None)


@pytest.mark.slow
def test_training_dataset_is_built_under_the_markets_fill(conn, capsys, monkeypatch, rl_env):
    from rl_lifecycle.datasets.service import latest_version

    store_on_calendar(conn, GOOGL, "XNYS", "2022-01-01", "2024-01-01", 11, fill="next_open")
    code, out, err = run_cli(capsys, monkeypatch, "materialize", "training_dataset", "--partition",
                             "GOOGL-1d|2023-12-01", "--span-windows", "12")
    assert code == 0, out + err
    dataset = latest_version(conn, GOOGL, DECEMBER)
    assert dataset.spec.fill == "next_open" and training_data(conn, GOOGL, DECEMBER).fill == "next_open"
