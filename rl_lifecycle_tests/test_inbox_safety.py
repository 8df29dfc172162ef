"""The inbox takes only complete files (the `.partial` convention and a settling period over two looks)
and never follows a link: links and other non-regular entries are rejected unread, and `imported/` /
`rejected/` must be real directories inside the inbox. Real files, links and FIFOs; a real PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from dagster import SensorResult, SkipReason, build_sensor_context

from rl_lifecycle.candles.inbox import IMPORTED, REFUSED, REJECTED, process_inbox
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.windows import WindowScheme

MONTHLY = WindowScheme("monthly")
BTC = Market("BTCUSDT", "1h")
HEADER = "timestamp,open,high,low,close,volume\n"
SECRET = "s3cr3t-line-that-must-never-appear"


def _rows(start_hour: int, n: int) -> str:
    return "".join(f"2024-03-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,100,101,99,100.5,10\n"
                   for h in range(start_hour, start_hour + n))


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def _candles(conn) -> int:
    return conn.execute("SELECT count(*) FROM market_candles").fetchone()[0]


def _tree_text(root: Path) -> str:
    """Every byte of every regular file under `root` (links not followed), as text."""
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(out)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory outside the inbox with a secret file that looks like candles."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret.csv").write_text(HEADER + _rows(0, 3) + SECRET + "\n")
    return place


# -- complete files only -------------------------------------------------------------------------------------


def test_a_writer_that_pauses_is_not_imported_half_written(conn, tmp_path):
    add_market(conn, BTC)
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    path = market_dir / "day.csv"
    path.write_text(HEADER + _rows(0, 24))
    _age(path, 5)  # the writer paused 5 s (the old rule took files 2 s old)
    seen: dict = {}
    t0 = time.time()

    assert process_inbox(conn, tmp_path / "inbox", now=t0, settle_seconds=10, seen=seen, scheme=MONTHLY) == []
    _age(path, 60)  # even once old, a file is taken only after a second look finds it unchanged
    assert process_inbox(conn, tmp_path / "inbox", now=t0 + 1, seen=seen, settle_seconds=10, scheme=MONTHLY) == []
    with path.open("a") as out:  # the writer goes on (keeping an old mtime, as `cp -p` does at the end)
        out.write(_rows(24, 24))
    _age(path, 60)
    assert process_inbox(conn, tmp_path / "inbox", now=t0 + 30, seen=seen, settle_seconds=10, scheme=MONTHLY) == []
    assert _candles(conn) == 0 and path.exists()

    (outcome,) = process_inbox(conn, tmp_path / "inbox", now=t0 + 45, seen=seen, settle_seconds=10, scheme=MONTHLY)
    assert outcome.status == IMPORTED and outcome.rows_read == 48 and _candles(conn) == 48
    assert seen == {}


def test_partial_files_wait_until_renamed(conn, tmp_path):
    add_market(conn, BTC)
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    partial = market_dir / "day.csv.partial"
    partial.write_text(HEADER + _rows(0, 24))
    _age(partial, 3600)
    seen: dict = {}
    for _ in range(3):
        assert process_inbox(conn, tmp_path / "inbox", settle_seconds=0, seen=seen, scheme=MONTHLY) == []
    assert seen == {}  # not even followed
    partial.rename(market_dir / "day.csv")
    assert process_inbox(conn, tmp_path / "inbox", settle_seconds=0, seen=seen, scheme=MONTHLY) == []
    (outcome,) = process_inbox(conn, tmp_path / "inbox", settle_seconds=0, seen=seen, scheme=MONTHLY)
    assert outcome.status == IMPORTED and outcome.rows_read == 24


def _context(dagster_instance, rl_env, cursor):
    from rl_lifecycle.orchestration.resources import PostgresResource

    return build_sensor_context(instance=dagster_instance, cursor=cursor,
                                resources={"database": PostgresResource(url=rl_env["RL_DATABASE_URL"])})


def test_the_sensor_leaves_a_file_still_changing_for_a_later_tick(conn, rl_env, dagster_instance, monkeypatch):
    from rl_lifecycle.orchestration.automation.inbox import inbox_sensor
    from rl_lifecycle.settings import load_settings

    monkeypatch.setenv("RL_INBOX_SETTLE_SECONDS", "1")
    add_market(conn, BTC)
    market_dir = load_settings().inbox_dir / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    path = market_dir / "day.csv"
    path.write_text(HEADER + _rows(0, 24))
    _age(path, 5)

    def tick(cursor):
        context = _context(dagster_instance, rl_env, cursor)
        return inbox_sensor(context), context.cursor

    first, cursor = tick(None)
    assert isinstance(first, SkipReason) and "1 file(s) settling" in first.skip_message
    with path.open("a") as out:
        out.write(_rows(24, 24))
    _age(path, 5)
    time.sleep(1.1)
    second, cursor = tick(cursor)  # changed since the first look: waits again
    assert isinstance(second, SkipReason) and "1 file(s) settling" in second.skip_message
    assert _candles(conn) == 0
    time.sleep(1.1)
    third, cursor = tick(cursor)
    assert isinstance(third, SensorResult) and "1 file(s) imported (48 candles written)" in third.skip_reason.skip_message
    assert json.loads(cursor) == {"settling": {}}
    garbled, _ = tick("not json")  # a cursor of another version starts afresh
    assert isinstance(garbled, SkipReason)


# -- links and other entries that are not regular files ------------------------------------------------------


def test_a_symlinked_file_is_rejected_unread(conn, tmp_path, outside):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    market_dir = inbox / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    (market_dir / "shadow.csv").symlink_to(outside / "secret.csv")
    _age(market_dir / "shadow.csv", 60)

    (outcome,) = process_inbox(conn, inbox, settle_seconds=0, scheme=MONTHLY)

    assert outcome.status == REJECTED and "symbolic link" in outcome.problems[0]
    assert "not opened or read" in outcome.problems[0]
    moved = Path(outcome.moved_to)
    assert moved.parent == market_dir / "rejected" and moved.is_symlink()  # the link itself, moved
    report = json.loads(Path(outcome.report).read_text())
    assert report["read"] is False and report["rows_read"] == 0
    assert SECRET not in _tree_text(inbox) and SECRET not in outcome.describe()
    assert _candles(conn) == 0
    assert (outside / "secret.csv").read_text().endswith(SECRET + "\n")  # untouched
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]


def test_a_symlinked_market_directory_is_rejected_and_nothing_is_written_through_it(conn, tmp_path, outside):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "BTCUSDT-1h").symlink_to(outside, target_is_directory=True)

    (outcome,) = process_inbox(conn, inbox, settle_seconds=0, scheme=MONTHLY)

    assert outcome.status == REJECTED and outcome.market == "" and "symbolic link" in outcome.problems[0]
    assert Path(outcome.moved_to).parent == inbox / "rejected"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]  # no imported/ or rejected/ made there
    assert SECRET not in _tree_text(inbox) and _candles(conn) == 0
    assert process_inbox(conn, inbox, settle_seconds=0, scheme=MONTHLY) == []
    assert (inbox / "BTCUSDT-1h").is_dir() and not (inbox / "BTCUSDT-1h").is_symlink()  # made again, real


def test_a_fifo_and_a_directory_are_rejected_unread(conn, tmp_path):
    add_market(conn, BTC)
    market_dir = tmp_path / "inbox" / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    os.mkfifo(market_dir / "pipe.csv")  # opening it for reading would wait for a writer forever
    (market_dir / "folder").mkdir()
    for name in ("pipe.csv", "folder"):
        _age(market_dir / name, 60)

    outcomes = {o.file: o for o in process_inbox(conn, tmp_path / "inbox", settle_seconds=0, scheme=MONTHLY)}

    assert {o.status for o in outcomes.values()} == {REJECTED}
    assert "is a FIFO, not a regular file" in outcomes["pipe.csv"].problems[0]
    assert "is a directory, not a regular file" in outcomes["folder"].problems[0]
    assert sorted(p.name for p in market_dir.iterdir()) == ["imported", "rejected"]


@pytest.mark.parametrize("which", ["rejected", "imported"])
def test_a_symlinked_destination_is_refused_and_nothing_is_written_outside(which, conn, tmp_path, outside):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    market_dir = inbox / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    (market_dir / which).symlink_to(outside, target_is_directory=True)
    good, bad = market_dir / "good.csv", market_dir / "bad.csv"
    good.write_text(HEADER + _rows(0, 3))
    bad.write_text(HEADER + "2024-03-01T00:00:00Z,1,0.5,2,1,1\n")
    for path in (good, bad):
        _age(path, 60)

    outcomes = process_inbox(conn, inbox, settle_seconds=0, scheme=MONTHLY)

    assert [o.status for o in outcomes] == [REFUSED, REFUSED]
    assert all(f"{market_dir / which} is not a real directory (a symbolic link)" in o.problems[0] for o in outcomes)
    assert good.exists() and bad.exists()  # left where they were
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]
    assert _candles(conn) == 0  # not imported either: the file could not be moved afterwards
    assert "refused, left in place unread" in outcomes[0].describe()


def test_a_symlinked_top_level_rejected_directory_is_refused(conn, tmp_path, outside):
    add_market(conn, BTC)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "rejected").symlink_to(outside, target_is_directory=True)
    loose = inbox / "loose.csv"
    loose.write_text(HEADER + _rows(0, 3))
    _age(loose, 60)
    (outcome,) = process_inbox(conn, inbox, settle_seconds=0, scheme=MONTHLY)
    assert outcome.status == REFUSED and loose.exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]


def test_the_sensor_reports_a_symlink_in_its_tick_without_its_content(conn, rl_env, dagster_instance, outside,
                                                                      capfd):
    from rl_lifecycle.orchestration.automation.inbox import inbox_sensor
    from rl_lifecycle.settings import load_settings

    add_market(conn, BTC)
    home = load_settings().home
    market_dir = load_settings().inbox_dir / "BTCUSDT-1h"
    market_dir.mkdir(parents=True)
    (market_dir / "shadow.csv").symlink_to(outside / "secret.csv")

    result = inbox_sensor(_context(dagster_instance, rl_env, None))

    assert isinstance(result, SensorResult)
    assert ("0 file(s) imported (0 candles written), 1 rejected (1 not a regular file, not read: "
            "BTCUSDT-1h/shadow.csv is a symbolic link)") in result.skip_reason.skip_message
    logged = "".join(capfd.readouterr())  # the tick's log lines
    assert "symbolic link" in logged and "shadow.csv" in logged
    assert SECRET not in logged and SECRET not in _tree_text(home)
