"""History before RL_WINDOW_START: ingest says so, the CLI refuses unknown windows, and the default
start suits the history people import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME, window_partitions
from rl_lifecycle.settings import DEFAULT_WINDOW_START, load_settings
from rl_lifecycle.windows import DAY_US, WindowScheme, from_us
from rl_lifecycle_tests.cli_helpers import run_cli

RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")
FIRST = window_partitions.get_first_partition_key()  # from RL_WINDOW_START (default: settings)
CURRENT = window_partitions.get_last_partition_key()


def _windows_before_first(n: int) -> list[str]:
    out = [WINDOW_SCHEME.previous(WINDOW_SCHEME.parse(FIRST))]
    while len(out) < n:
        out.insert(0, WINDOW_SCHEME.previous(out[0]))
    return [w.key for w in out]


def _hourly_csv(tmp_path: Path, first: str, hours: int) -> Path:
    from datetime import datetime, timedelta

    start = datetime.fromisoformat(first)
    rows = [f"{(start + timedelta(hours=h)):%Y-%m-%d %H:%M:%S},1.1,1.2,1.0,1.15,10" for h in range(hours)]
    path = tmp_path / "eurusd.csv"
    path.write_text("Time,Open,High,Low,Close,Volume\n" + "\n".join(rows) + "\n")
    return path


def _nothing_ran(rl_env) -> bool:
    return not (Path(rl_env["RL_HOME"]) / "dagster").exists()


@pytest.fixture
def eurusd(conn):
    """EURUSD-1h registered (in the domain tables only: no Dagster instance is touched)."""
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.markets.table import add_market

    add_market(conn, Market("EURUSD", "1h"))


# -- (a) ingest says when candles fall before the first window, and what to set -------------------
def test_ingest_names_candles_before_the_first_window_and_the_setting(capsys, monkeypatch, rl_env, conn, tmp_path):
    early = _windows_before_first(1)[0]
    # 48 hourly bars: the last day before the first window, and the first day of it
    day_before = from_us(WINDOW_SCHEME.parse(FIRST).start - DAY_US)
    path = _hourly_csv(tmp_path, f"{day_before:%Y-%m-%d %H:%M:%S}", 48)
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "EURUSD-1h", "--csv", str(path))
    assert code == 0, err
    assert "inserted 48" in out  # the history is stored all the same
    assert "24 candles of EURUSD-1h" in err and f"before the first window partition {FIRST}" in err, err
    assert f"RL_WINDOW_START={early}" in err, err
    assert conn.execute("SELECT count(*) FROM market_candles").fetchone()[0] == 48
    # candles inside the partitions: no such note
    path = _hourly_csv(tmp_path, f"{FIRST} 00:00:00", 24)
    code, out, err = run_cli(capsys, monkeypatch, "ingest", "--market", "GBPUSD-1h", "--csv", str(path))
    assert code == 0 and "inserted 24" in out
    assert "RL_WINDOW_START" not in out + err


def test_synthetic_ingest_before_the_first_window_says_so(rl_env):
    """With a later RL_WINDOW_START (a fresh process: partitions are built at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RL_")} | rl_env | {"RL_WINDOW_START": "2024-03-01"}
    proc = subprocess.run([str(RL_LIFECYCLE), "ingest", "--market", "BTCUSDT-1d", "--synthetic",
                           "--start", "2024-02-01", "--end", "2024-03-03"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "inserted 31" in proc.stdout
    assert "29 candles of BTCUSDT-1d (from 2024-02-01T00:00:00Z)" in proc.stderr, proc.stderr
    assert "RL_WINDOW_START=2024-02-01" in proc.stderr


# -- (b) the CLI refuses windows outside the partitions, exit 2, before anything runs -------------
def test_materialize_refuses_windows_before_the_first_partition(capsys, monkeypatch, rl_env, eurusd):
    first, last = _windows_before_first(3)[0], _windows_before_first(3)[-1]
    code, out, err = run_cli(capsys, monkeypatch, "materialize", "candles", "--market", "EURUSD-1h",
                             "--windows", f"{first}..{last}")
    assert code == 2, (out, err)
    assert f"before the first window partition {FIRST}" in err
    assert f"RL_WINDOW_START={first}" in err
    assert "Traceback" not in err and "DagsterUnknownPartitionError" not in err
    assert _nothing_ran(rl_env)


def test_materialize_refuses_a_range_reaching_back_before_the_first_partition(capsys, monkeypatch, rl_env, eurusd):
    first = _windows_before_first(1)[0]
    code, _, err = run_cli(capsys, monkeypatch, "materialize", "candles", "--partition", f"EURUSD-1h|{FIRST}",
                           "--partition", f"EURUSD-1h|{first}")
    assert code == 2 and f"RL_WINDOW_START={first}" in err
    assert _nothing_ran(rl_env)


def test_materialize_refuses_windows_after_the_current_one(capsys, monkeypatch, rl_env, eurusd):
    future = WINDOW_SCHEME.next(WINDOW_SCHEME.parse(CURRENT)).key
    code, _, err = run_cli(capsys, monkeypatch, "materialize", "candles", "--market", "EURUSD-1h",
                           "--windows", f"{CURRENT}..{future}")
    assert code == 2
    assert f"window {future} is after the current window {CURRENT}" in err
    assert _nothing_ran(rl_env)


@pytest.mark.parametrize("command", [["train"], ["evaluate"]])
def test_train_and_evaluate_refuse_windows_before_the_first_partition(capsys, monkeypatch, rl_env, eurusd, command):
    early = _windows_before_first(1)[0]
    code, _, err = run_cli(capsys, monkeypatch, *command, "--market", "EURUSD-1h", "--window", early)
    assert code == 2 and f"RL_WINDOW_START={early}" in err
    assert _nothing_ran(rl_env)


def test_the_refusal_follows_rl_window_start(tmp_path):
    """RL_WINDOW_START moves the first partition (a fresh process: partitions are built at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RL_")}
    env |= {"RL_HOME": str(tmp_path / "home"), "RL_WINDOW_START": "2017-03-01", "RL_WINDOW_CADENCE": "monthly"}
    proc = subprocess.run([str(RL_LIFECYCLE), "materialize", "candles", "--market", "EURUSD-1h",
                           "--windows", "2017-01-01..2017-12-01"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "window 2017-01-01..2017-02-01 (2 windows) is before the first window partition 2017-03-01" in proc.stderr
    assert "RL_WINDOW_START=2017-01-01" in proc.stderr
    assert not (tmp_path / "home" / "dagster").exists()


# -- (c) the default start suits the data people have ------------------------------------------
def test_default_window_start_covers_common_history_with_few_partitions(monkeypatch):
    from rl_lifecycle.orchestration.partitions import _window_partitions

    monkeypatch.delenv("RL_WINDOW_START", raising=False)
    monkeypatch.delenv("RL_WINDOW_CADENCE", raising=False)
    settings = load_settings()
    # the default cadence covers daily equities from 2009 and hourly FX from 2017 (issue 7)
    assert settings.window_cadence == "monthly" and settings.window_start <= "2009-01-01"
    for cadence in sorted(DEFAULT_WINDOW_START):
        monkeypatch.setenv("RL_WINDOW_CADENCE", cadence)
        start = load_settings().window_start
        scheme = WindowScheme(cadence)
        assert scheme.parse(start).key == start  # a window start, so it is the first partition as given
        partitions = _window_partitions(scheme, start)
        assert partitions.get_first_partition_key() == start
        # market x window per asset: 30 markets must stay well under Dagster's 100,000
        assert 30 * len(partitions.get_partition_keys()) < 100_000, cadence
