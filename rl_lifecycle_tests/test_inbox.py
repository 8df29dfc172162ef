"""Live ingestion: the candle inbox and the synthetic live feed, on a real PostgreSQL and real files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetKey, AssetRecordsFilter, SensorResult, SkipReason, build_sensor_context

from rl_lifecycle.candles.inbox import (
    IMPORTED,
    REJECTED,
    append_closed_bars,
    process_inbox,
)
from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.candles.synthetic import synthetic_arrays
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market, get_market
from rl_lifecycle.windows import WindowScheme, closed_bars_end, to_us, utc_now_us

MONTHLY = WindowScheme("monthly")
BTC = Market("BTCUSDT", "1h")
HEADER = "timestamp,open,high,low,close,volume\n"
# Five hourly bars across a month boundary: windows 2024-02-01 (2 bars) and 2024-03-01 (3 bars).
GOOD_ROWS = [
    "2024-02-29T22:00:00Z,100.0,101.0,99.5,100.5,10.0",
    "2024-02-29T23:00:00Z,100.5,102.0,100.0,101.5,11.0",
    "2024-03-01T00:00:00Z,101.5,103.0,101.0,102.0,12.0",
    "2024-03-01T01:00:00Z,102.0,102.5,100.5,101.0,13.0",
    "2024-03-01T02:00:00Z,101.0,101.5,99.0,100.0,14.0",
]


def _drop(directory: Path, name: str, rows: list[str], *, age_seconds: float = 60.0) -> Path:
    """Write a candle file as a finished drop: mtime `age_seconds` ago."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(HEADER + "\n".join(rows) + "\n")
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path


def _table_state(conn) -> tuple[int, str]:
    """Row count and a checksum of every candle value and write stamp."""
    count, digest = conn.execute(
        """SELECT count(*), md5(coalesce(string_agg(
             concat_ws(',', pair, interval, ts, open, high, low, close, volume, write_seq), ';'
             ORDER BY pair, interval, ts), ''))
           FROM market_candles"""
    ).fetchone()
    return int(count), digest


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def test_a_good_file_is_imported_and_moved(conn, tmp_path):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    _drop(inbox / "BTCUSDT-1h", "new.csv", GOOD_ROWS)

    (outcome,) = process_inbox(conn, inbox, scheme=MONTHLY)

    assert outcome.status == IMPORTED and outcome.market == "BTCUSDT-1h" and outcome.file == "new.csv"
    assert (outcome.rows_read, outcome.rows_written, outcome.inserted) == (5, 5, 5)
    assert outcome.windows == {"2024-02-01": 2, "2024-03-01": 3}
    assert outcome.windows_touched == ["2024-02-01", "2024-03-01"]
    assert outcome.problems == []
    assert _files(inbox / "BTCUSDT-1h") == []
    (moved,) = _files(inbox / "BTCUSDT-1h" / "imported")
    assert moved.endswith("_new.csv") and moved[:8].isdigit()
    assert Path(outcome.moved_to).name == moved
    stored = load_candles(conn, BTC, to_us("2024-02-29T22:00:00"), to_us("2024-03-01T03:00:00"))
    assert len(stored) == 5
    assert stored.close.tolist() == [100.5, 101.5, 102.0, 101.0, 100.0]


def test_a_bad_file_is_rejected_with_every_problem_and_nothing_written(conn, tmp_path):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    _drop(inbox / "BTCUSDT-1h", "first.csv", GOOD_ROWS[:2])
    process_inbox(conn, inbox, scheme=MONTHLY)
    before = _table_state(conn)
    assert before[0] == 2

    bad = [
        "2024-03-01T00:00:00Z,101.5,103.0,101.0,102.0,12.0",
        "2024-03-01T01:00:00Z,102.0,99.0,100.5,101.0,13.0",  # high below low (and below open/close)
        "2024-03-01T02:00:00Z,101.0,101.5,99.0,100.0,14.0",
        "2024-03-01T02:00:00Z,101.0,101.5,99.0,100.7,15.0",  # duplicate timestamp, other values
        "2024-03-01T03:00:00Z,100.0,100.5,99.5,100.2,9.0",
    ]
    _drop(inbox / "BTCUSDT-1h", "bad.csv", bad)
    (outcome,) = process_inbox(conn, inbox, scheme=MONTHLY)

    assert outcome.status == REJECTED and outcome.rows_written == 0 and outcome.windows == {}
    text = "\n".join(outcome.problems)
    assert "row 3" in text and "high 99.0 < max(open, close)" in text
    assert "row 4" in text and "row 5" in text and "duplicate timestamp" in text
    assert len(outcome.problems) == 3  # every bad row, one line each
    assert _table_state(conn) == before  # count and checksum (values and write stamps) unchanged
    assert conn.execute("SELECT count(*) FROM candles_quarantine").fetchone()[0] == 0

    rejected = inbox / "BTCUSDT-1h" / "rejected"
    names = _files(rejected)
    assert len(names) == 2 and any(n.endswith("_bad.csv") for n in names)
    report_name = next(n for n in names if n.endswith(".report.json"))
    assert Path(outcome.report).name == report_name
    report = json.loads((rejected / report_name).read_text())
    assert report["status"] == "rejected" and report["nothing_written"] is True
    assert report["problems"] == outcome.problems and report["problem_count"] == 3
    assert "3 bad rows" in report["summary"]
    assert _files(inbox / "BTCUSDT-1h") == []


def test_an_unreadable_file_is_rejected_with_the_reason(conn, tmp_path):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    path = inbox / "BTCUSDT-1h" / "prices.csv"
    path.parent.mkdir(parents=True)
    path.write_text("name,price\nfoo,1\n")  # no time or OHLCV columns: the importer refuses the file
    os.utime(path, (time.time() - 60, time.time() - 60))
    (outcome,) = process_inbox(conn, inbox, scheme=MONTHLY)
    assert outcome.status == REJECTED and outcome.problems and "prices.csv" in outcome.problems[0]
    assert _table_state(conn)[0] == 0


def test_unknown_markets_and_files_outside_a_market_are_rejected(conn, tmp_path):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    _drop(inbox / "DOGEUSDT-1h", "x.csv", GOOD_ROWS)
    _drop(inbox / "not-a-market", "y.csv", GOOD_ROWS)
    _drop(inbox, "loose.csv", GOOD_ROWS)

    outcomes = {o.file: o for o in process_inbox(conn, inbox, scheme=MONTHLY)}

    assert {o.status for o in outcomes.values()} == {REJECTED}
    assert "unknown market 'DOGEUSDT-1h'" in outcomes["x.csv"].problems[0]
    assert "BTCUSDT-1h" in outcomes["x.csv"].problems[0]  # names the registered ones
    assert "unknown market 'not-a-market'" in outcomes["y.csv"].problems[0]
    assert "not in a market directory" in outcomes["loose.csv"].problems[0]
    assert any(n.endswith("_x.csv.report.json") for n in _files(inbox / "DOGEUSDT-1h" / "rejected"))
    assert any(n.endswith("_loose.csv") for n in _files(inbox / "rejected"))
    assert _table_state(conn)[0] == 0
    assert process_inbox(conn, inbox, scheme=MONTHLY) == []  # rejected files are never picked up again


def test_a_synthetic_market_refuses_files(conn, tmp_path):
    add_market(conn, Market("ETHUSDT", "1h"), source="synthetic", seed=3)
    inbox = tmp_path / "inbox"
    _drop(inbox / "ETHUSDT-1h", "x.csv", GOOD_ROWS)
    (outcome,) = process_inbox(conn, inbox, scheme=MONTHLY)
    assert outcome.status == REJECTED and "synthetic" in outcome.problems[0]
    assert _table_state(conn)[0] == 0


def test_files_still_being_written_are_left_alone(conn, tmp_path):
    add_market(conn, BTC)
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    _drop(market_dir, "fresh.csv", GOOD_ROWS, age_seconds=0)
    _drop(market_dir, "upload.csv.part", GOOD_ROWS)
    _drop(market_dir, "upload.tmp", GOOD_ROWS)
    _drop(market_dir, ".hidden.csv", GOOD_ROWS)

    assert process_inbox(conn, tmp_path / "inbox", scheme=MONTHLY) == []
    assert _files(market_dir) == [".hidden.csv", "fresh.csv", "upload.csv.part", "upload.tmp"]
    assert _table_state(conn)[0] == 0

    # Once old enough, the finished file goes through; the others still wait.
    (outcome,) = process_inbox(conn, tmp_path / "inbox", now=time.time() + 10, scheme=MONTHLY)
    assert outcome.file == "fresh.csv" and outcome.status == IMPORTED


def test_dropping_the_same_file_again_is_idempotent(conn, tmp_path):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    _drop(inbox / "BTCUSDT-1h", "same.csv", GOOD_ROWS)
    process_inbox(conn, inbox, scheme=MONTHLY)
    state = _table_state(conn)

    _drop(inbox / "BTCUSDT-1h", "same.csv", GOOD_ROWS)
    (again,) = process_inbox(conn, inbox, scheme=MONTHLY)

    assert again.status == IMPORTED
    assert (again.rows_written, again.unchanged, again.windows) == (0, 5, {})
    assert _table_state(conn) == state
    names = _files(inbox / "BTCUSDT-1h" / "imported")
    assert len(names) == 2 and all(n.endswith("_same.csv") for n in names)  # no collision

    # A corrected bar updates only its own window.
    changed = GOOD_ROWS[:4] + ["2024-03-01T02:00:00Z,101.0,101.5,99.0,100.3,14.0"]
    _drop(inbox / "BTCUSDT-1h", "fix.csv", changed)
    (fix,) = process_inbox(conn, inbox, scheme=MONTHLY)
    assert (fix.updated, fix.inserted, fix.windows) == (1, 0, {"2024-03-01": 1})


def test_append_closed_bars_appends_exactly_the_closed_bars(conn):
    eth = Market("ETHUSDT", "1h")
    add_market(conn, eth, source="synthetic", seed=11)
    ingest_synthetic(conn, eth, to_us("2024-03-01"), to_us("2024-03-02"), 11)
    record = get_market(conn, eth)

    now = to_us("2024-03-02T05:30:00")
    assert closed_bars_end(now, eth.interval_us) == to_us("2024-03-02T05:00:00")
    assert append_closed_bars(conn, record, now) == 5  # 00:00 .. 04:00; the 05:00 bar is still open
    assert append_closed_bars(conn, record, now) == 0
    assert append_closed_bars(conn, record, to_us("2024-03-02T06:00:00")) == 1  # closes exactly at 06:00

    stored = load_candles(conn, eth, to_us("2024-01-01"), to_us("2025-01-01"))
    full = synthetic_arrays(eth, to_us("2024-03-01"), to_us("2024-03-02T06:00:00"), 11)
    assert len(stored) == 24 + 6
    np.testing.assert_array_equal(stored.ts, full.ts)
    for column in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(stored, column), getattr(full, column))

    add_market(conn, BTC)
    with pytest.raises(UserInputError, match="not synthetic"):
        append_closed_bars(conn, get_market(conn, BTC), now)


def _context(dagster_instance, rl_env, cursor=None):
    from rl_lifecycle.orchestration.resources import PostgresResource

    return build_sensor_context(
        instance=dagster_instance, resources={"database": PostgresResource(url=rl_env["RL_DATABASE_URL"])},
        cursor=cursor,
    )


def _tick(sensor, dagster_instance, rl_env, cursor=None):
    """One evaluation with the cursor of the previous one, as the daemon does: (result, cursor)."""
    context = _context(dagster_instance, rl_env, cursor)
    return sensor(context), context.cursor


def _record_like_the_daemon(instance, result: SensorResult) -> None:
    """What the sensor daemon does with a tick's result: partitions requests, then the asset events."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)


def test_inbox_sensor_skips_an_empty_inbox_and_observes_what_a_drop_wrote(conn, rl_env, dagster_instance,
                                                                          monkeypatch):
    from rl_lifecycle.orchestration.automation.inbox import inbox_sensor
    from rl_lifecycle.settings import load_settings

    monkeypatch.setenv("RL_INBOX_SETTLE_SECONDS", "0")  # still two looks: the first only sees the files
    add_market(conn, BTC)
    inbox = load_settings().inbox_dir
    skipped, cursor = _tick(inbox_sensor, dagster_instance, rl_env)
    assert isinstance(skipped, SkipReason) and "no new candle files" in skipped.skip_message
    assert (inbox / "BTCUSDT-1h").is_dir()  # created so a user sees where to drop

    _drop(inbox / "BTCUSDT-1h", "new.csv", GOOD_ROWS)
    _drop(inbox / "BTCUSDT-1h", "bad.csv", ["2024-03-01T00:00:00Z,1,0.5,2,1,1"])
    settling, cursor = _tick(inbox_sensor, dagster_instance, rl_env, cursor)
    assert isinstance(settling, SkipReason) and "2 file(s) settling" in settling.skip_message
    result, cursor = _tick(inbox_sensor, dagster_instance, rl_env, cursor)

    assert isinstance(result, SensorResult)
    assert "1 file(s) imported" in result.skip_reason.skip_message and "1 rejected" in result.skip_reason.skip_message
    # the market joins the `market` partitions (Dagster's storage is shared by the session's tests,
    # so another test may have added it already)
    requested = {k for r in result.dynamic_partitions_requests for k in r.partition_keys}
    assert "BTCUSDT-1h" in requested | set(dagster_instance.get_dynamic_partitions("market"))
    events = result.asset_events
    assert [(e.asset_key, str(e.partition)) for e in events] == [
        (AssetKey("candles"), "BTCUSDT-1h|2024-02-01"),
        (AssetKey("candles"), "BTCUSDT-1h|2024-03-01"),
    ]
    assert [e.metadata["rows"].value for e in events] == [2, 3]
    assert {e.metadata["file"].value for e in events} == {"new.csv"}
    assert _files(inbox / "BTCUSDT-1h" / "rejected") and _files(inbox / "BTCUSDT-1h" / "imported")

    # Dagster stores them as partitioned observations a downstream sensor can read by storage id.
    _record_like_the_daemon(dagster_instance, result)
    assert "BTCUSDT-1h" in dagster_instance.get_dynamic_partitions("market")
    records = dagster_instance.fetch_observations(
        AssetRecordsFilter(asset_key=AssetKey("candles"), after_storage_id=0), limit=10, ascending=True
    ).records
    assert [r.partition_key for r in records] == ["BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]
    assert records[0].storage_id < records[1].storage_id

    again, _ = _tick(inbox_sensor, dagster_instance, rl_env, cursor)
    assert isinstance(again, SkipReason)


def test_live_feed_sensor_appends_closed_bars_of_synthetic_markets(conn, rl_env, dagster_instance):
    from rl_lifecycle.orchestration.automation.inbox import live_feed_sensor
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME

    skipped = live_feed_sensor(_context(dagster_instance, rl_env))
    assert isinstance(skipped, SkipReason) and "no synthetic market" in skipped.skip_message

    eth = Market("ETHUSDT", "1h")
    add_market(conn, eth, source="synthetic", seed=5)
    closed_end = closed_bars_end(utc_now_us(), eth.interval_us)
    ingest_synthetic(conn, eth, closed_end - 5 * eth.interval_us, closed_end - 2 * eth.interval_us, 5)

    result = live_feed_sensor(_context(dagster_instance, rl_env))

    assert isinstance(result, SensorResult)
    appended = load_candles(conn, eth, closed_end - 2 * eth.interval_us, closed_end + 2 * eth.interval_us)
    assert len(appended) >= 2  # 2, or 3 when the hour turned during the test
    windows = {WINDOW_SCHEME.containing(int(t)).key for t in appended.ts}
    assert sorted(str(e.partition) for e in result.asset_events) == sorted(f"ETHUSDT-1h|{w}" for w in windows)
    assert sum(e.metadata["rows"].value for e in result.asset_events) == len(appended)
    assert isinstance(live_feed_sensor(_context(dagster_instance, rl_env)), SkipReason)


def test_inbox_sensor_through_dagster_tick_evaluation(conn, rl_env, dagster_instance, monkeypatch):
    """The path the daemon takes (evaluate_tick in a code location with these sensors added)."""
    from dagster import Definitions, partition_loading_context

    from rl_lifecycle.orchestration.automation.inbox import inbox_sensor, live_feed_sensor
    from rl_lifecycle.orchestration.definitions import defs
    from rl_lifecycle.orchestration.resources import PostgresResource
    from rl_lifecycle.settings import load_settings

    merged = Definitions.merge(defs, Definitions(sensors=[inbox_sensor, live_feed_sensor]))
    repository = merged.get_repository_def()
    sensor_def = repository.get_sensor_def("inbox_sensor")
    monkeypatch.setenv("RL_INBOX_SETTLE_SECONDS", "0")
    add_market(conn, BTC)
    _drop(load_settings().inbox_dir / "BTCUSDT-1h", "new.csv", GOOD_ROWS)
    cursor = None
    for _ in range(2):  # the first tick sees the file, the second takes it unchanged
        context = build_sensor_context(
            instance=dagster_instance, repository_def=repository, cursor=cursor,
            resources={"database": PostgresResource(url=rl_env["RL_DATABASE_URL"])},
        )
        with partition_loading_context(dynamic_partitions_store=dagster_instance):
            data = sensor_def.evaluate_tick(context)
        cursor = data.cursor
    assert not data.run_requests and data.skip_message.startswith("inbox: 1 file(s) imported (5 candles written)")
    assert [str(e.partition) for e in data.asset_events] == ["BTCUSDT-1h|2024-02-01", "BTCUSDT-1h|2024-03-01"]


def test_a_parquet_file_is_imported(conn, tmp_path):
    import polars as pl

    add_market(conn, BTC)
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    frame = pl.DataFrame(
        [row.split(",") for row in GOOD_ROWS], schema=["timestamp", "open", "high", "low", "close", "volume"],
        orient="row",
    ).with_columns(pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume"))
    path = market_dir / "new.parquet"
    frame.write_parquet(path)
    os.utime(path, (time.time() - 60, time.time() - 60))
    (outcome,) = process_inbox(conn, tmp_path / "inbox", scheme=MONTHLY)
    assert (outcome.status, outcome.rows_written, outcome.windows) == (IMPORTED, 5, {"2024-02-01": 2, "2024-03-01": 3})
