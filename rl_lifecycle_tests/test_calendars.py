"""Trading calendars: expected bars, gaps and continuity for crypto (24/7), fx (24/5) and exchange sessions."""

from __future__ import annotations

from pathlib import Path

import exchange_calendars as xcals
import numpy as np
import pytest

from rl_lifecycle.candles.service import summarize_window
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.calendars import Gap, get_calendar, normalize_calendar_name
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market, get_market, set_market_calendar
from rl_lifecycle.windows import DAY_US, WindowScheme, iso, to_us
from rl_lifecycle_tests.cli_helpers import run_cli

H = 3_600_000_000
M30 = H // 2


def _hours(start: str, end: str) -> np.ndarray:
    return np.arange(to_us(start), to_us(end), H, dtype=np.int64)


def _without(ts: np.ndarray, *moments: str) -> np.ndarray:
    return ts[~np.isin(ts, [to_us(m) for m in moments])]


def _weekend_closed(ts: np.ndarray, closes_at: str, reopens_at: str) -> np.ndarray:
    return ts[(ts < to_us(closes_at)) | (ts >= to_us(reopens_at))]


def _xnys_sessions(first: str, last: str) -> np.ndarray:
    """Session dates straight from exchange_calendars, as 00:00 UTC keys (what daily equity files hold)."""
    sessions = xcals.get_calendar("XNYS", start="2014-01-01", end="2019-12-31").sessions_in_range(first, last)
    return np.array([to_us(d.date()) for d in sessions], dtype=np.int64)


# ---------------------------------------------------------------------------------------- crypto


def test_crypto_expects_every_bar_and_counts_each_missing_one():
    crypto = get_calendar("crypto")
    assert get_calendar() is crypto
    start, end = to_us("2024-03-01"), to_us("2024-03-04")
    assert np.array_equal(crypto.expected_bar_opens(start, end, H), _hours("2024-03-01", "2024-03-04"))
    assert len(crypto.expected_bar_opens(start, end, DAY_US)) == 3
    ts = _without(_hours("2024-03-01", "2024-03-04"), "2024-03-02T05:00", "2024-03-02T06:00")  # a Saturday
    assert crypto.gaps(ts, H) == [Gap(to_us("2024-03-02T05:00"), to_us("2024-03-02T07:00"), 2)]
    assert crypto.gaps(ts, H)[0].last_missing_us == to_us("2024-03-02T06:00")
    breaks = np.flatnonzero(~crypto.continues(ts, H))
    assert [iso(ts[i]) for i in breaks] == ["2024-03-02T04:00:00Z"]
    # the edges count when a range is given
    gaps = crypto.gaps(ts[2:-1], H, start, end)
    assert [(iso(g.start_us), g.missing_bars) for g in gaps] == [
        ("2024-03-01T00:00:00Z", 2), ("2024-03-02T05:00:00Z", 2), ("2024-03-03T23:00:00Z", 1)
    ]


# -------------------------------------------------------------------------------------------- fx


def test_fx_hourly_weekends_follow_new_york_time_across_the_march_dst_change():
    fx = get_calendar("fx")
    # Friday 2017-03-10 closes 17:00 EST = 22:00 UTC; US clocks go forward on Sunday 03-12, which
    # reopens 17:00 EDT = 21:00 UTC; Friday 03-17 closes 17:00 EDT = 21:00 UTC.
    stored = _weekend_closed(_hours("2017-03-06", "2017-03-18"), "2017-03-10T22:00", "2017-03-12T21:00")
    stored = stored[stored < to_us("2017-03-17T21:00")]
    assert np.array_equal(fx.expected_bar_opens(to_us("2017-03-06"), to_us("2017-03-18"), H), stored)
    assert fx.gaps(stored, H) == []
    assert fx.gaps(stored, H, to_us("2017-03-06"), to_us("2017-03-18")) == []
    assert fx.continues(stored, H).all()  # the weekend is no break
    # a missing Wednesday hour is a gap, and breaks continuity there only
    holed = _without(stored, "2017-03-15T10:00")
    assert fx.gaps(holed, H) == [Gap(to_us("2017-03-15T10:00"), to_us("2017-03-15T11:00"), 1)]
    assert [iso(holed[i]) for i in np.flatnonzero(~fx.continues(holed, H))] == ["2017-03-15T09:00:00Z"]
    # in winter the Friday 21:00 UTC bar is still trading: missing, it is a gap
    assert fx.gaps(_without(stored, "2017-03-10T21:00"), H) == [Gap(to_us("2017-03-10T21:00"), to_us("2017-03-12T21:00"), 1)]


def test_fx_hourly_weekends_across_the_november_dst_change():
    fx = get_calendar("fx")
    # Friday 2017-11-03 closes 17:00 EDT = 21:00 UTC; clocks go back on Sunday 11-05, reopening 17:00 EST = 22:00 UTC.
    stored = _weekend_closed(_hours("2017-10-30", "2017-11-08"), "2017-11-03T21:00", "2017-11-05T22:00")
    assert np.array_equal(fx.expected_bar_opens(to_us("2017-10-30"), to_us("2017-11-08"), H), stored)
    assert fx.gaps(stored, H, to_us("2017-10-30"), to_us("2017-11-08")) == []
    assert fx.continues(stored, H).all()
    # hourly bars stored on a 24/7 calendar would count the weekend: the reported symptom
    assert get_calendar("crypto").gaps(stored, H) == [Gap(to_us("2017-11-03T21:00"), to_us("2017-11-05T22:00"), 49)]
    # missing the first bar of the week is a gap (the Sunday 21:00 UTC bar is not expected in winter)
    assert fx.gaps(_without(stored, "2017-11-05T22:00"), H) == [Gap(to_us("2017-11-05T22:00"), to_us("2017-11-05T23:00"), 1)]


def test_fx_daily_bars_are_monday_to_friday_and_a_sunday_bar_is_harmless():
    fx = get_calendar("fx")
    days = fx.expected_bar_opens(to_us("2017-03-01"), to_us("2017-04-01"), DAY_US)
    assert len(days) == 23 and {iso(d)[:10] for d in days[:3]} == {"2017-03-01", "2017-03-02", "2017-03-03"}
    with_sunday = np.sort(np.append(days, to_us("2017-03-05")))
    assert fx.gaps(with_sunday, DAY_US) == [] and fx.continues(with_sunday, DAY_US).all()


# ------------------------------------------------------------------------------------- exchanges


def test_xnys_daily_2015_2018_holidays_and_weekends_are_no_gaps():
    xnys = get_calendar("XNYS")
    stored = _xnys_sessions("2015-01-02", "2018-12-31")
    start, end = to_us("2015-01-01"), to_us("2019-01-01")
    assert np.array_equal(xnys.expected_bar_opens(start, end, DAY_US), stored)
    assert len(xnys.expected_bar_opens(to_us("2016-01-01"), to_us("2017-01-01"), DAY_US)) == 252
    assert to_us("2016-07-04") not in stored and to_us("2016-07-05") in stored  # Independence Day
    assert xnys.gaps(stored, DAY_US, start, end) == []
    assert xnys.continues(stored, DAY_US).all()
    # a missing normal Tuesday is a gap; the crypto calendar would also count every weekend
    holed = _without(stored, "2016-07-12")
    assert xnys.gaps(holed, DAY_US, start, end) == [Gap(to_us("2016-07-12"), to_us("2016-07-13"), 1)]
    assert [iso(holed[i])[:10] for i in np.flatnonzero(~xnys.continues(holed, DAY_US))] == ["2016-07-11"]
    assert len(get_calendar("crypto").gaps(stored, DAY_US)) > 200


def test_xnys_intraday_bars_follow_the_real_session_in_utc_with_early_closes():
    xnys = get_calendar("XNYS")

    def hours(day: str) -> list[str]:
        return [iso(t)[11:16] for t in xnys.expected_bar_opens(to_us(day), to_us(day) + DAY_US, H)]

    # 09:30-16:00 New York: the 1h bar opening 09:00 holds 09:30-10:00 and is expected
    assert hours("2016-01-05") == ["14:00", "15:00", "16:00", "17:00", "18:00", "19:00", "20:00"]  # EST
    assert hours("2016-07-05") == ["13:00", "14:00", "15:00", "16:00", "17:00", "18:00", "19:00"]  # EDT
    assert hours("2016-11-25") == ["14:00", "15:00", "16:00", "17:00"]  # day after Thanksgiving: closes 13:00
    assert hours("2016-07-04") == [] and hours("2016-07-09") == []  # holiday, Saturday
    minutes = xnys.expected_bar_opens(to_us("2016-01-05"), to_us("2016-01-06"), 60_000_000)
    assert (len(minutes), iso(minutes[0]), iso(minutes[-1])) == (390, "2016-01-05T14:30:00Z", "2016-01-05T20:59:00Z")


def test_lunch_breaks_are_closed_time():
    halves = get_calendar("XHKG").expected_bar_opens(to_us("2024-01-03"), to_us("2024-01-04"), M30)
    assert [iso(t)[11:16] for t in halves] == [
        "01:30", "02:00", "02:30", "03:00", "03:30", "05:00", "05:30", "06:00", "06:30", "07:00", "07:30"
    ]


def test_calendars_with_short_recorded_history_still_cover_their_years():
    # XSES holidays stop in 2026 and XTKS starts in 1997: the default 1990-2040 span cannot be built for them
    assert len(get_calendar("XSES").expected_bar_opens(to_us("2024-01-01"), to_us("2024-02-01"), DAY_US)) > 15
    assert len(get_calendar("XTKS").expected_bar_opens(to_us("2024-01-01"), to_us("2024-02-01"), DAY_US)) > 15
    with pytest.raises(UserInputError, match="XSES"):
        get_calendar("XSES").expected_bar_opens(to_us("2031-01-01"), to_us("2031-02-01"), DAY_US)


# ------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(("raw", "name"), [("crypto", "crypto"), (" FX ", "fx"), ("xnys", "XNYS"), ("nyse", "NYSE"), ("XLON", "XLON")])
def test_calendar_names_are_normalised(raw, name):
    assert normalize_calendar_name(raw) == name


@pytest.mark.parametrize("raw", ["NASDAQ-ISH", "", "X NYS"])
def test_unknown_calendar_names_are_refused_with_examples(raw):
    with pytest.raises(UserInputError) as info:
        get_calendar(raw)
    assert f"calendar {raw!r} is unknown" in str(info.value) and "XNYS" in str(info.value)


def test_the_librarys_own_24_7_and_24_5_are_refused_for_ours():
    # its 24/5 runs Monday to Friday in UTC, which is not the FX week
    with pytest.raises(UserInputError, match="use 'fx'"):
        normalize_calendar_name("24/5")
    with pytest.raises(UserInputError, match="use 'crypto'"):
        normalize_calendar_name("24/7")


# ----------------------------------------------------------------------------------- registry, CLI


def test_registry_keeps_the_calendar_and_changes_it_only_explicitly(conn):
    googl = Market("GOOGL", "1d")
    assert add_market(conn, googl, calendar="xnys")
    assert get_market(conn, googl).calendar == "XNYS"
    assert not add_market(conn, googl)  # no calendar named: the registered one stays
    with pytest.raises(UserInputError, match="already registered with calendar 'XNYS'"):
        add_market(conn, googl, calendar="fx")
    assert set_market_calendar(conn, googl, "XLON") == "XNYS"
    assert get_market(conn, googl).calendar == "XLON"
    assert add_market(conn, Market("BTCUSDT", "1h")) and get_market(conn, Market("BTCUSDT", "1h")).calendar == "crypto"


def test_cli_market_add_with_a_calendar_and_list_shows_it(capsys, monkeypatch, rl_env, conn):
    code, out, err = run_cli(capsys, monkeypatch, "market", "add", "GOOGL", "1d", "--calendar", "XNYS")
    assert code == 0, err
    code, _, _ = run_cli(capsys, monkeypatch, "market", "add", "EUR/USD", "1h", "--calendar", "fx")
    assert code == 0
    code, _, _ = run_cli(capsys, monkeypatch, "market", "add", "BTCUSDT", "1h")
    assert code == 0
    code, out, _ = run_cli(capsys, monkeypatch, "market", "list")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split()[:3] == ["market", "source", "calendar"]
    assert [rows[k][2] for k in ("BTCUSDT-1h", "EURUSD-1h", "GOOGL-1d")] == ["crypto", "fx", "XNYS"]
    code, _, err = run_cli(capsys, monkeypatch, "market", "add", "GOOGL", "1d", "--calendar", "fx")
    assert code == 2 and "XNYS" in err and "set-calendar" in err
    code, out, _ = run_cli(capsys, monkeypatch, "market", "set-calendar", "GOOGL-1d", "xnas")
    assert code == 0 and "XNYS -> XNAS" in out  # the name given; the library serves XNAS with XNYS sessions


def test_cli_refuses_an_unknown_calendar_with_exit_2_and_writes_nothing(capsys, monkeypatch, rl_env, conn, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "market", "add", "GOOGL", "1d", "--calendar", "NOPE")
    assert code == 2 and "'NOPE'" in err and "XNYS" in err
    csv = tmp_path / "g.csv"
    csv.write_text("date,open,high,low,close,volume\n2016-07-05,1,2,0.5,1.5,10\n")
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "GOOGL-1d", "--csv", str(csv), "--calendar", "NOPE")
    assert code == 2 and "'NOPE'" in err
    assert conn.execute("SELECT count(*) FROM markets").fetchone()[0] == 0


def _daily_csv(path: Path, days: np.ndarray, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    close = 500 * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
    lines = ["date,open,high,low,close,volume"] + [
        f"{iso(d)[:10]},{c:.4f},{c * 1.01:.4f},{c * 0.99:.4f},{c:.4f},{1000 + i}" for i, (d, c) in enumerate(zip(days, close, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ingest_reports_gaps_against_the_calendar(capsys, monkeypatch, rl_env, conn, tmp_path):
    days = _xnys_sessions("2016-06-01", "2016-08-31")
    csv = _daily_csv(tmp_path / "googl.csv", _without(days, "2016-07-12"))
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "GOOGL-1d", "--csv", str(csv), "--calendar", "XNYS")
    assert code == 0, err
    assert "XNYS calendar" in out and "1 gaps (1 missing bars)" in out and "2016-07-12 00:00 UTC: 1 missing bar" in out
    assert get_market(conn, Market("GOOGL", "1d")).calendar == "XNYS"
    # the registered calendar is used without --calendar; naming another one is refused before anything is written
    code, out, _ = run_cli(capsys, monkeypatch, "ingest", "--market", "GOOGL-1d", "--csv", str(csv))
    assert code == 0 and "1 gaps" in out
    code, _, err = run_cli(capsys, monkeypatch, "ingest", "--market", "GOOGL-1d", "--csv", str(csv), "--calendar", "fx")
    assert code == 2 and "registered with calendar 'XNYS'" in err


def test_window_summary_counts_expected_rows_and_gaps_by_the_market_calendar(conn, tmp_path):
    from rl_lifecycle.candles.service import ingest_file

    googl = Market("GOOGL", "1d")
    add_market(conn, googl, calendar="XNYS")
    ingest_file(conn, googl, _daily_csv(tmp_path / "g.csv", _xnys_sessions("2016-01-04", "2016-12-30")))
    july = WindowScheme("monthly").containing(to_us("2016-07-01"))
    summary = summarize_window(conn, googl, july)
    assert (summary.rows, summary.expected_rows, summary.gaps) == (20, 20, [])
    conn.execute("DELETE FROM market_candles WHERE ts = '2016-07-12'")
    summary = summarize_window(conn, googl, july)
    assert (summary.rows, summary.expected_rows, summary.missing_bars) == (19, 20, 1)
