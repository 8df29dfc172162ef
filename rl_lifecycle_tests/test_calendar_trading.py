"""Trading by the market's calendar (issue 17, points 1 and 2): bars per year are the calendar's own count,
episodes run across the market's closes (a missing bar while it is open still ends one), and a position
held over a close earns the same close-to-close return in the env, the accountant and NautilusTrader.

Known answers come from outside the production code: exchange_calendars' session list, session opens and
closes, and New York wall-clock time from zoneinfo.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import pytest
import yaml

from rl_lifecycle.candles.store import load_candles, upsert_candles
from rl_lifecycle.candles.synthetic import synthetic_candles
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.evaluation.accountant import account_candles, replay
from rl_lifecycle.evaluation.backtest import FoldJob, align_candles, run_fold_backtest
from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.metrics import bars_per_year, sharpe_per_bar, simple_returns
from rl_lifecycle.evaluation.policies import FixedPositions
from rl_lifecycle.evaluation.service import evaluate_spec, report_json, subset_continues
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.calendars import get_calendar
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.models.env import MarketEnv, contiguous, episode_summary, segments
from rl_lifecycle.models.service import training_data
from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.windows import DAY_US, WindowScheme, iso, to_us

H = 3_600_000_000
BALANCE = 100_000.0
GOOGL = Market("GOOGL", "1d")
SCHEME = WindowScheme("monthly")
DECEMBER = SCHEME.parse("2023-12-01")
MISSING_SESSION = "2023-07-12"  # a normal Wednesday session, not stored: a real gap


def _xnys(first: str = "2022-01-01", last: str = "2025-12-31"):
    return xcals.get_calendar("XNYS", start=first, end=last)


def _xnys_hourly_bars(year: int) -> int:
    """Hourly bars overlapping each session [open, close) of the year, from exchange_calendars' own
    opens and closes: a session 09:30-16:00 New York holds the bars opening 09:00 (09:30-10:00) to 15:00."""
    cal = _xnys()
    sessions = cal.sessions_in_range(f"{year}-01-01", f"{year}-12-31")
    total = 0
    for session in sessions:
        open_s = int(cal.session_open(session).timestamp())
        close_s = int(cal.session_close(session).timestamp())
        total += -(-close_s // 3600) - open_s // 3600  # ceil(close) - floor(open), in hours
    return total


def _fx_hours(year: int) -> int:
    """UTC hours of the year whose New York wall-clock time lies in the fx week, Sunday 17:00 to Friday 17:00."""
    zone, hour = ZoneInfo("America/New_York"), datetime(year, 1, 1, tzinfo=UTC)
    count = 0
    while hour.year == year:
        local = hour.astimezone(zone)
        weekday = local.weekday()  # Monday 0 .. Sunday 6
        count += (weekday in (0, 1, 2, 3)) or (weekday == 4 and local.hour < 17) or (weekday == 6 and local.hour >= 17)
        hour += timedelta(hours=1)
    return count


# -- bars per year: the calendar's own count ---------------------------------------------------------


def test_bars_per_year_are_the_calendars_count_over_the_years_the_bars_touch():
    year_2023 = [to_us("2023-01-03"), to_us("2023-12-29")]
    # XNYS daily: its sessions of 2023 (250), 2024 (252)
    assert len(_xnys().sessions_in_range("2023-01-01", "2023-12-31")) == 250
    assert bars_per_year("1d", "XNYS", year_2023) == 250
    assert bars_per_year("1d", "XNYS", [to_us("2024-03-01")]) == 252
    # XNYS hourly: every bar overlapping a session (the 09:00 bar with the half-hour open counts), early closes
    # shorter: the count of expected rows the candles' gap checks use
    assert _xnys_hourly_bars(2023) == 1744
    assert bars_per_year("1h", "XNYS", year_2023) == 1744
    assert bars_per_year("1h", "XNYS", [to_us("2023-06-01")]) == len(
        get_calendar("XNYS").expected_bar_opens(to_us("2023-01-01"), to_us("2024-01-01"), H))
    # fx hourly: 120 hours a week (52 weeks and a day in 2023: 6,242; 2024 is a leap year: 6,288)
    assert _fx_hours(2023) == 6242 and _fx_hours(2024) == 6288
    assert bars_per_year("1h", "fx", year_2023) == 6242
    assert abs(bars_per_year("1h", "fx", year_2023) - 120 * 52) <= 48
    assert bars_per_year("1d", "fx", year_2023) == 260  # Monday .. Friday
    # crypto: 24/7
    assert bars_per_year("1h", "crypto", year_2023) == 8760
    assert bars_per_year("1h", "crypto", [to_us("2024-07-01")]) == 8784
    # a quarter is annualised by its whole year (its holidays and its weekday edges do not move it); a span
    # across New Year by the mean of both years
    assert bars_per_year("1d", "XNYS", [to_us("2023-10-02"), to_us("2023-12-29")]) == 250
    assert bars_per_year("1d", "XNYS", [to_us("2023-12-01"), to_us("2024-01-31")]) == (250 + 252) / 2
    # the overstatement the 365.25-day convention gave (issue 17): XNYS daily x1.21, hourly x2.24, fx x1.185
    assert math.sqrt(365.25 / 250) == pytest.approx(1.21, abs=0.005)
    assert math.sqrt(365.25 * 24 / 1744) == pytest.approx(2.24, abs=0.005)
    assert math.sqrt(365.25 * 24 / 6242) == pytest.approx(1.185, abs=0.005)


# -- closes are no gaps; missing bars while open are -----------------------------------------------------


def test_an_xnys_hourly_episode_runs_overnight_and_a_missing_bar_inside_a_session_ends_it():
    xnys = get_calendar("XNYS")
    ts = xnys.expected_bar_opens(to_us("2023-03-06"), to_us("2023-03-18"), H)  # two weeks, 7 bars a session
    assert len(ts) == 70
    missing = to_us("2023-03-15T16:00")  # 12:00 New York (EDT since March 12), inside the session
    holed = ts[ts != missing]
    breaks = np.flatnonzero(~xnys.continues(holed, H))
    assert [iso(holed[i]) for i in breaks] == ["2023-03-15T15:00:00Z"]  # one break, at the bar before it
    assert len(segments(contiguous(holed, H), len(holed))) == 11  # 24/7: every night and the weekend broke it
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(holed))))
    env = MarketEnv(rng.normal(size=(len(holed), 2)), close, xnys.continues(holed, H), cost_bps=0.0)
    lengths = []
    for _ in range(2):
        env.reset()
        steps, terminated = 0, False
        while not terminated:
            _, reward, terminated, _, _ = env.step(1)
            steps += 1
        lengths.append(steps)
    assert lengths == [int(breaks[0]), len(holed) - 1 - int(breaks[0]) - 1]  # up to the gap; after it


def test_the_episode_summary_counts_xnys_weekends_and_holidays_as_closes_and_a_missing_session_as_a_gap():
    sessions = _xnys().sessions_in_range("2023-06-01", "2023-08-31")  # known answer: exchange_calendars
    ts = np.array([to_us(str(day.date())) for day in sessions if str(day.date()) != MISSING_SESSION], dtype=np.int64)
    closes_between = sum(1 for a, b in zip(sessions[:-1], sessions[1:], strict=True) if (b - a).days > 1)
    summary = episode_summary(ts, get_calendar("XNYS").continues(ts, DAY_US), DAY_US)
    before = int(np.searchsorted(ts, to_us(MISSING_SESSION)))  # rows up to the Tuesday before the gap
    assert (summary.episodes, summary.gaps) == (2, 1)
    assert summary.longest_steps == max(before - 1, len(ts) - before - 1)
    assert summary.steps_across_closes == closes_between  # every weekend, Juneteenth and July 4th: held
    assert summary.describe().startswith("2 episodes (longest ")
    # the former 24/7 contiguity: every close was a gap too
    naive = episode_summary(ts, contiguous(ts, DAY_US), DAY_US)
    assert (naive.gaps, naive.steps_across_closes, naive.longest_steps) == (closes_between + 1, 0, 4)


def test_a_folds_training_rows_continue_where_the_dataset_does_and_joins_are_gaps():
    continues = np.array([True, True, False, True, True, True, True], dtype=bool)  # 8 rows, a gap after row 2
    rows = np.array([0, 1, 2, 3, 5, 6, 7])  # row 4 left out (purged)
    assert subset_continues(continues, rows).tolist() == [True, True, False, False, True, True]
    assert subset_continues(continues, np.array([3])).tolist() == []


# -- the production path: an XNYS daily market in PostgreSQL ---------------------------------------------


def store_on_calendar(conn, market: Market, calendar: str, start: str, end: str, seed: int, *drop: str,
                      fill: str = "close") -> None:
    """Synthetic candles on the calendar's expected bars only (as an exchange's files hold them), less `drop`;
    the market filled at `fill` (these tests' datasets are built with the spec's default fill, close)."""
    frame = synthetic_candles(market, to_us(start), to_us(end), seed)
    expected = set(get_calendar(calendar).expected_bar_opens(to_us(start), to_us(end), market.interval_us).tolist())
    keep = sorted(expected - {to_us(d) for d in drop})
    frame = frame.filter(frame["ts"].dt.epoch("us").is_in(keep))
    with conn.transaction():
        add_market(conn, market, calendar=calendar, fill=fill)
        upsert_candles(conn, market, frame)


@pytest.fixture
def googl(conn, tmp_path):
    """GOOGL-1d on XNYS: 2022 (warmup) and 2023 sessions, 2023-07-12 missing; a 12-window dataset ending 2023-12."""
    store_on_calendar(conn, GOOGL, "XNYS", "2022-01-01", "2024-01-01", 11, MISSING_SESSION)
    build_dataset(conn, spec_ending_at(GOOGL, DECEMBER, SCHEME, "ta_v2", 12), tmp_path / "datasets",
                  load_feature_set("ta_v2"))
    return conn


@pytest.mark.slow
def test_a_position_held_over_a_weekend_earns_fridays_to_mondays_close_in_env_accountant_and_nautilus(googl):
    conn = googl
    data = training_data(conn, GOOGL, DECEMBER)
    ts, close, n = data.content.ts, data.content.close, len(data.content)
    assert data.calendar == "XNYS"
    assert n == 249  # the 250 sessions of 2023, less the one missing
    # the calendar's continuity: one break, at the session before the missing one; weekends and holidays none
    gap_row = int(np.flatnonzero(~data.continues)[0])
    assert np.flatnonzero(~data.continues).tolist() == [gap_row] and iso(ts[gap_row])[:10] == "2023-07-11"
    assert len(segments(data.continues, n)) == 2
    assert len(segments(contiguous(ts, DAY_US), n)) >= 52  # the 24/7 contiguity: every weekend broke it

    weekday = ((ts // DAY_US) + 3) % 7  # Monday 0 (epoch day 0 was a Thursday)
    positions = np.isin(weekday, (3, 4)).astype(np.int8)  # long at Thursday's and Friday's close, else flat
    # Friday rows (the last session before a weekend) long since Thursday (a Thanksgiving Friday, or the
    # first row of an episode, would pay the cost of entering)
    held = np.r_[False, positions[:-2] == 1] & (positions[:-1] == 1)
    over_weekend = np.flatnonzero((np.diff(ts) >= 3 * DAY_US) & held)
    over_weekend = over_weekend[over_weekend != gap_row + 1]
    assert len(over_weekend) >= 45
    cost_bps = 10.0
    log_return = np.log(close[1:] / close[:-1])

    # the env: two episodes (up to the gap; after it), a long held over each weekend earns log(C_Mon / C_Fri)
    env = MarketEnv.from_dataset(data.content, data.continues, action_set="long_flat", cost_bps=cost_bps)
    rewards: dict[int, float] = {}
    for start in (0, gap_row + 1):
        env.reset()
        row, terminated = start, False
        while not terminated:
            _, reward, terminated, _, _ = env.step(int(positions[row]))
            rewards[row] = reward
            row += 1
        assert row == (gap_row if start == 0 else n - 1)
    assert gap_row not in rewards  # no reward across the missing session
    for t in over_weekend:  # Thursday's long is held: no cost at Friday's close, the pure close-to-close return
        assert rewards[int(t)] == log_return[t]

    # the accountant and NautilusTrader hold the same bars: over the weekend the equity moves by the units
    # held times (C_Mon - C_Fri), on the invested part the return C_Mon / C_Fri - 1 = expm1(env reward)
    candles = align_candles(load_candles(conn, GOOGL, int(ts[0]), int(ts[-1]) + DAY_US), ts)
    booked = account_candles(GOOGL, candles, positions, cost_bps, BALANCE)
    units = np.cumsum(booked.quantities)  # held after each bar's order
    for t in over_weekend:
        moved = booked.equity[t + 1] - booked.equity[t]
        assert units[t] > 0 and booked.quantities[t] == 0.0  # held from Thursday, nothing traded on Friday
        assert moved == pytest.approx(units[t] * (close[t + 1] - close[t]), abs=1e-9 * BALANCE)
        assert moved / (units[t] * close[t]) == pytest.approx(math.expm1(rewards[int(t)]), rel=1e-9, abs=1e-12)
    job = FoldJob(GOOGL.key, 0, candles, np.zeros((n, 1)), FixedPositions(tuple(positions.tolist())), cost_bps,
                  BALANCE)
    result = run_fold_backtest(job)
    assert result.ok, result.error
    assert np.array_equal(result.equity, booked.equity) and result.account_equity == booked.account_equity
    assert replay(GOOGL, candles, result, cost_bps)["exact"]


def _tiny_spec(tmp_path: Path):
    fields = {**load_model_spec("ppo_small").model_dump(mode="json"), "total_timesteps": 128,
              "hyperparameters": {"n_steps": 64, "batch_size": 32, "n_epochs": 1}, "episode_length": 32}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(fields))
    return load_model_spec(str(path))


@pytest.mark.slow
def test_an_xnys_daily_report_annualises_by_the_sessions_of_its_year(googl, tmp_path):
    config = FoldConfig.create(n_folds=2, test_size=60, purge_bars=1)
    report = evaluate_spec(googl, GOOGL, DECEMBER, _tiny_spec(tmp_path), config, workdir=tmp_path / "evals",
                           workers=1, log=lambda _: None)
    assert report.status == "ok", [f.error for f in report.folds]
    assert report.aggregates["bars_per_year"] == 250 and report.aggregates["calendar"] == "XNYS"
    shown = report_json(report)
    assert shown["bars_per_year"] == 250 and shown["calendar"] == "XNYS"
    from rl_lifecycle.evaluation.curves import read_curve

    for fold in report.folds:
        equity = read_curve(googl, fold.equity_curve_uri)["equity"].to_numpy()
        returns = simple_returns(equity)
        assert fold.metrics["sharpe"] == pytest.approx(sharpe_per_bar(returns) * math.sqrt(250), rel=1e-12)
        log_growth = math.log(equity[-1] / equity[0])
        assert fold.metrics["annual_return"] == pytest.approx(math.expm1(log_growth * 250 / len(returns)), rel=1e-12)
