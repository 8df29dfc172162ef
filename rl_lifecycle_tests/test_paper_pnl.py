"""Paper P&L per champion segment against its walk-forward band, the breach alert once per breach, the
gauges; known answers over hand-made candles, decisions, audit rows and fold curves (real PostgreSQL)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.store import upsert_candles
from rl_lifecycle.decisions.paper_pnl import (
    BREACH_CODE,
    target_positions,
    walk_forward_band,
)
from rl_lifecycle.decisions.store import DecisionRecord, append_decision
from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.report import FoldRecord
from rl_lifecycle.evaluation.store import EvaluationReport, write_report
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.ops.alerts import PAPER_BREACH, count_open_alerts, list_alerts
from rl_lifecycle.ops.metrics import collect_families, family_records
from rl_lifecycle.ops.paper import paper_performance, performance_png, watch
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord
from rl_lifecycle.windows import iso, to_us
from rl_lifecycle_tests.cli_helpers import run_cli

HOUR = 3_600_000_000
T0 = to_us("2024-03-01")
CLOSES = [100.0, 110.0, 121.0, 115.0, 125.0, 100.0, 90.0]


# -- the pure core -----------------------------------------------------------------------------------------
def test_the_band_is_the_quantiles_of_every_window_of_the_tested_returns():
    returns = np.random.default_rng(3).normal(0.0005, 0.01, 60)
    band = walk_forward_band(returns, 10, quantile=0.9)
    for k in band.lengths.tolist():
        windows = [returns[i:i + k] for i in range(len(returns) - k + 1)]
        growth = [np.prod(1 + w) - 1 for w in windows]
        drawdowns = []
        for w in windows:
            equity = np.concatenate(([1.0], np.cumprod(1 + w)))
            drawdowns.append(np.max(1 - equity / np.maximum.accumulate(equity)))
        assert band.return_quantile(0.05, k) == pytest.approx(np.quantile(growth, 0.05), abs=1e-12)
        assert band.drawdown_limit(k) == pytest.approx(np.quantile(drawdowns, 0.9), abs=1e-12)
        assert band.expected(k)["windows"] == len(windows)
    assert band.expected(25)["extrapolated"] and band.expected(25)["drawdown_limit"] == band.drawdown_limit(10)


def test_the_fill_rule_holds_each_decision_from_its_bar_until_the_next():
    ts = np.arange(6, dtype=np.int64) * HOUR
    assert target_positions(ts, np.array([1, 4]) * HOUR, np.array([1, 0])).tolist() == [0, 1, 1, 1, 0, 0]
    # the same targets under next_open: the accountant fills them at the next candle's open (test_fill_convention)
    assert target_positions(ts, np.array([1, 4]) * HOUR, np.array([1, 0]), "next_open").tolist() == [0, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="next_open"):
        target_positions(ts, ts, np.zeros(6), convention="at_noon")


# -- through the database: a hand-made champion history -----------------------------------------------------
def _candles(conn, market: Market) -> None:
    close = np.array(CLOSES)
    arrays = CandleArrays(T0 + np.arange(len(close), dtype=np.int64) * HOUR, close, close, close, close,
                          np.full(len(close), 10.0))
    upsert_candles(conn, market, arrays.to_frame())


def _report(conn, market: Market, tmp_path: Path, returns: np.ndarray, cost_bps: float = 10.0) -> int:
    path = tmp_path / f"curve-{uuid.uuid4().hex[:8]}.parquet"
    pl.DataFrame({"equity": 100_000.0 * np.concatenate(([1.0], np.cumprod(1 + returns)))}).write_parquet(path)
    fold = FoldRecord(0, ((0, 100),), (100, 100 + len(returns) + 1), ((0, 1),), (0, 1), "ok",
                      {"total_return": float(np.prod(1 + returns) - 1)}, {}, equity_curve_uri=path.as_uri())
    return write_report(conn, EvaluationReport(
        market=market.key, spec={"cost_bps": cost_bps}, model_spec_hash=uuid.uuid4().hex, dataset_hash="d" * 64,
        fold_config=FoldConfig(), label_horizon=1, strict=True, status="ok", aggregates={}, timings={}, folds=[fold]))


def _promote(conn, market: Market, version: int, report_id: int | None, before: int | None = None) -> None:
    audit.append(conn, AuditRecord(market=market.key, action=audit.PROMOTE, actor="pytest", challenger_version=version,
                                   champion_version=before, resulting_champion_version=version,
                                   evaluation_report_id=report_id))


def _decide(conn, market: Market, bar: int, action: str, version: int) -> None:
    append_decision(conn, DecisionRecord(market.key, T0 + bar * HOUR + HOUR + 1_000_000, T0 + bar * HOUR, action,
                                         {"flat": 0, "long": 1}[action], version, "fp", None, (), 1.0))


@pytest.fixture
def history(conn, tmp_path) -> Market:
    """v1 trades bars 0..3 (long at 100, out at 121), v2 takes over at bar 4 and goes long at 125 into a fall;
    v2's walk-forward never drew down (a steady +0.1% a bar), so any paper drawdown is beyond it."""
    market = Market(f"T{uuid.uuid4().hex[:8].upper()}USDT", "1h")
    add_market(conn, market)
    _candles(conn, market)
    _promote(conn, market, 1, _report(conn, market, tmp_path, np.random.default_rng(1).normal(0, 0.01, 200)))
    for bar, action in enumerate(["long", "long", "flat", "flat"]):
        _decide(conn, market, bar, action, 1)
    _promote(conn, market, 2, _report(conn, market, tmp_path, np.full(50, 0.001)), before=1)
    _decide(conn, market, 4, "long", 2)
    _decide(conn, market, 5, "long", 2)
    return market


def test_each_champion_segment_is_booked_like_a_fold_at_its_cost(conn, history):
    performance = paper_performance(conn, history)
    first, second = performance.to_json()["segments"]
    # v1: 1000 units at 100 (fee 100), marked at 110, 121, sold at 121 (fee 121): 120 779 from 100 000
    assert (first["champion_version"], first["from"], first["to"], first["bars"]) == (
        1, iso(T0), iso(T0 + 4 * HOUR), 5)  # to the hand-over bar, marked at its close
    assert first["total_return"] == pytest.approx(0.20779, abs=1e-12)
    assert first["max_drawdown"] == pytest.approx(121 / 120_900, abs=1e-12)  # the sale's fee off the peak
    assert first["trades"] == 1 and first["fills"] == 2
    # v2: a fresh book from flat: 800 units at 125 (fee 100), marked at 100 then 90 (the newest candle)
    assert (second["champion_version"], second["from"], second["to"], second["bars"]) == (
        2, iso(T0 + 4 * HOUR), iso(T0 + 6 * HOUR), 3)
    assert second["total_return"] == pytest.approx(-0.281, abs=1e-12)
    assert second["max_drawdown"] == pytest.approx(0.281, abs=1e-12) and second["trades"] == 1
    assert second["cost_bps"] == 10.0 and second["fill"] == "close"
    assert first["expected"]["available"] and first["expected"]["within"]
    expected = second["expected"]
    assert expected["drawdown_limit"] == 0.0 and not expected["within"]
    assert [b["from"] for b in expected["breaches"]] == [iso(T0 + 5 * HOUR)] and expected["breaches"][0]["ongoing"]
    assert expected["total_return"]["p50"] == pytest.approx(1.001**2 - 1, abs=1e-12)
    assert performance_png(performance)[:4] == b"\x89PNG"


def test_a_breach_is_alerted_once_and_resolved_when_the_champion_changes(conn, history):
    first = watch(conn, history)
    assert [a.check for a in first.alerted] == [BREACH_CODE] and first.alerted[0].kind == PAPER_BREACH
    assert "v2" in first.alerted[0].summary and first.alerted[0].details["champion_version"] == 2
    again = watch(conn, history)
    assert again.alerted == [] and count_open_alerts(conn, history.key) == 1
    breaches = [a for a in list_alerts(conn, market=history.key) if a.kind == PAPER_BREACH]
    assert len(breaches) == 1

    records = {r["metric"]: r["samples"] for r in family_records(collect_families(conn))}
    mine = lambda name: [s for s in records[name] if s["labels"].get("market") == history.key]  # noqa: E731
    assert [(s["labels"]["champion_version"], s["value"]) for s in mine("rl_paper_breached")] == [("2", 1.0)]
    assert mine("rl_paper_total_return")[0]["value"] == pytest.approx(-0.281)
    assert mine("rl_paper_drawdown_limit")[0]["value"] == 0.0

    _promote(conn, history, 3, None, before=2)  # a new champion: the old breach is over
    assert watch(conn, history).resolved == 1 and count_open_alerts(conn, history.key) == 0


def test_a_champion_without_an_evaluation_has_no_band(conn, tmp_path):
    market = Market(f"N{uuid.uuid4().hex[:8].upper()}USDT", "1h")
    add_market(conn, market)
    _candles(conn, market)
    _promote(conn, market, 7, None)
    _decide(conn, market, 0, "long", 7)
    with pytest.raises(Exception, match="cost of v7 is unknown"):
        paper_performance(conn, market)  # no report keeps its spec, no registry to read it from


def test_cli_prints_the_segments_as_one_json_object(capsys, monkeypatch, conn, history, rl_env):
    code, out, err = run_cli(capsys, monkeypatch, "paper", "pnl", "--market", history.key, "--json")
    assert code == 0, err
    import json

    printed = json.loads(out)
    assert printed["market"] == history.key and [s["champion_version"] for s in printed["segments"]] == [1, 2]
    assert {"champion_version", "from", "to", "bars", "total_return", "max_drawdown", "trades", "expected"} <= set(
        printed["segments"][0])
    assert math.isclose(printed["segments"][1]["total_return"], -0.281, abs_tol=1e-12)
    assert "PAPER_DRAWDOWN_BEYOND_BACKTEST" in err  # recorded now, once
    code, out, err = run_cli(capsys, monkeypatch, "paper", "pnl", "--market", history.key)
    assert code == 0 and "BREACH x1" in out and "alert:" not in err


def test_the_paper_performance_asset_shows_the_segments_and_the_plot(conn, history, rl_env):
    from dagster import DagsterInstance, materialize

    from rl_lifecycle.orchestration.assets.paper import paper_performance as asset
    from rl_lifecycle.orchestration.partitions import market_partitions
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(market_partitions.name, [history.key])
    database = PostgresResource(url=rl_env["RL_DATABASE_URL"])
    result = materialize([asset], partition_key=history.key, instance=instance,
                         resources={"database": database, "mlflow": MlflowResource(database=database)})
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["champion_version"].value == 2 and metadata["breaches_alerted"].value == 1
    assert "BREACH x1" in metadata["segments"].value and "data:image/png;base64," in metadata["paper_vs_walk_forward"].value
