"""`make run` shows the lifecycle's point (issue 21, point 3): the planted-edge market ends with a champion
promoted by hand, its paper decisions act, and a second challenger meets it on the paired gates with a
deflated Sharpe ratio over more than one trial; the no-edge markets have no champion; the champion's feature
groups are ablated.

The demo itself runs (`rl-lifecycle run`, a process of its own, as `make run` starts it) on the test
database; the assertions read what it stored: the audit, the decisions, the fold reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from rl_lifecycle.cli.demo import DEMO_MARKETS, EDGE_MARKET, PAPER_DECISIONS, SECOND_CHALLENGER
from rl_lifecycle.decisions.store import decision_history
from rl_lifecycle.evaluation.store import read_report
from rl_lifecycle.promotion.audit import current_champion, history
from rl_lifecycle.promotion.gates import DSR_BELOW_MIN, PAIRED_TEST_NOT_SIGNIFICANT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")


@pytest.fixture
def demo_database_url(server_url):
    """A database of its own (and so an MLflow database of its own, `<database>_mlflow`): the demo registers
    models of BTCUSDT-1h and ETHUSDT-1h, which other tests of this worker must not find in MLflow."""
    from rl_lifecycle.db.migrate import apply_migrations
    from rl_lifecycle_tests.conftest import _scratch_database

    for url in _scratch_database(server_url, "demo"):
        apply_migrations(url)
        yield url


@pytest.fixture
def conn(demo_database_url):
    with psycopg.connect(demo_database_url, autocommit=True) as connection:
        yield connection


def test_make_run_ends_with_a_champion_its_paper_decisions_and_a_second_challenger_against_it(
    conn, demo_database_url, tmp_path,
):
    rl_env = {"RL_DATABASE_URL": demo_database_url, "RL_HOME": str(tmp_path / "rl_home")}
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONWARNINGS")} | rl_env
    done = subprocess.run([str(RL_LIFECYCLE), "run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout

    # the edge: bootstrap decision passed every gate and waited (manual mode), then `promote` by hand
    first, promoted, second = sorted(history(conn, EDGE_MARKET.key), key=lambda r: r.id)
    assert first.action == "pending" and not first.gates_failed, first  # the audit's word for pending_manual
    assert promoted.action == "manual_promote" and promoted.challenger_version == first.challenger_version
    champion = current_champion(conn, EDGE_MARKET.key)
    assert champion == first.challenger_version
    assert f"rl-lifecycle promote --market {EDGE_MARKET.key} --version {champion}" in out

    # its paper decisions act (the champion's actions, not NO_CHAMPION holds)
    decisions = decision_history(conn, EDGE_MARKET.key, limit=100)
    assert len(decisions) == PAPER_DECISIONS[1]
    assert all(d.champion_version == champion for d in decisions)
    acting = [d for d in decisions if d.action != "hold"]
    assert len(acting) > PAPER_DECISIONS[1] // 2, [(d.action, d.reason_codes) for d in decisions]
    assert {d.action for d in acting} == {"long", "flat"}  # a long_flat policy following the oscillation

    # the second challenger met the champion: paired gates, and a DSR that counts both trials
    assert second.action in ("reject", "pending_manual") and second.champion_version == champion
    assert second.challenger_version != champion
    paired = next(g for g in second.gates if g["code"] == PAIRED_TEST_NOT_SIGNIFICANT)
    assert paired["details"]["n_bars"] > 1000
    dsr = next(g for g in second.gates if g["code"] == DSR_BELOW_MIN)
    assert dsr["details"]["n_trials"] >= 2  # the champion's evaluation and this one, at least
    report = read_report(conn, second.evaluation_report_id)
    assert dsr["value"] < report.aggregates["psr"]  # deflated for the trials
    assert SECOND_CHALLENGER in out

    # no edge, no champion
    for market in DEMO_MARKETS:
        assert current_champion(conn, market.key) is None
        assert [r.action for r in history(conn, market.key)] == ["reject"]
    # and what its features are worth: the ablation table, its variants counted as trials (issue 18, point 7)
    assert f"$ rl-lifecycle ablation --market {EDGE_MARKET.key}" in out
    assert f"trials of {EDGE_MARKET.key}:" in out and "momentum" in out
    assert "partition runs succeeded" in out
