"""Metrics endpoint (scraped over HTTP and parsed), JSON log lines, rollout switches and `status`."""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import rl_lifecycle.ops.metrics as obs
import rl_lifecycle.ops.status as status_of
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.ops.alerts import check_alert, record_alert, run_alert
from rl_lifecycle.promotion.audit import AuditRecord, append
from rl_lifecycle.switches import switch_states

BTC = Market("BTCUSDT", "1h")


def _scrape(url: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("rl_"), family.name
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


@pytest.fixture
def endpoint(database_url):
    server, thread = obs.serve_metrics(database_url, 0)  # port 0: a free port
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _audit(conn):
    append(conn, AuditRecord("BTCUSDT-1h", "reject", "job", reason_codes=("SHARPE_BELOW_MIN", "DSR_BELOW_MIN"),
                             challenger_version=1))
    append(conn, AuditRecord("BTCUSDT-1h", "reject", "job", reason_codes=("SHARPE_BELOW_MIN",), challenger_version=2))
    append(conn, AuditRecord("BTCUSDT-1h", "promote", "job", challenger_version=3, resulting_champion_version=3))


def _decision(conn, action, reasons=(), latency_ms=3.0, market="BTCUSDT-1h"):
    conn.execute(
        "INSERT INTO rl_decisions (market, as_of, action, position, reason_codes, latency_ms) VALUES (%s, now(), %s, %s, %s, %s)",
        (market, action, 1 if action == "long" else -1 if action == "short" else 0, list(reasons), latency_ms),
    )


def test_the_endpoint_reports_audit_alerts_and_decisions(conn, endpoint):
    add_market(conn, BTC)
    before = _scrape(endpoint)
    assert before["rl_metrics_database_up"][()] == 1
    assert all(v == 1 for v in before["rl_metrics_section_up"].values())
    assert before["rl_decisions_total"][(("action", "hold"), ("market", "BTCUSDT-1h"))] == 0  # zero, not absent
    assert before["rl_alerts_open"][(("kind", "check_failed"),)] == 0

    _audit(conn)
    record_alert(conn, check_alert("r1", "feature_snapshots", "features_deterministic", "BTCUSDT-1h|2024-03-01", "x"))
    record_alert(conn, check_alert("r2", "feature_snapshots", "features_deterministic", "BTCUSDT-1h|2024-04-01", "x"))
    record_alert(conn, run_alert("r3", "lifecycle_job", "BTCUSDT-1h|2024-03-01", "boom"))
    has_decisions = conn.execute("SELECT to_regclass('public.rl_decisions') IS NOT NULL").fetchone()[0]
    if has_decisions:
        _decision(conn, "long", latency_ms=4.0)
        _decision(conn, "hold", ("OOD", "STALE_FEATURES"), latency_ms=30.0)
        _decision(conn, "hold", ("OOD",), latency_ms=700.0)
        _decision(conn, "flat", latency_ms=1.5)

    m = _scrape(endpoint)
    assert m["rl_promotion_actions_total"][(("action", "reject"), ("market", "BTCUSDT-1h"))] == 2
    assert m["rl_promotion_actions_total"][(("action", "promote"), ("market", "BTCUSDT-1h"))] == 1
    reasons = m["rl_promotion_reasons_total"]
    assert reasons[(("action", "reject"), ("market", "BTCUSDT-1h"), ("reason", "SHARPE_BELOW_MIN"))] == 2
    assert reasons[(("action", "reject"), ("market", "BTCUSDT-1h"), ("reason", "DSR_BELOW_MIN"))] == 1
    assert m["rl_failed_checks_total"][(("asset", "feature_snapshots"), ("check", "features_deterministic"))] == 2
    assert m["rl_failed_runs_total"][(("job", "lifecycle_job"),)] == 1
    assert m["rl_alerts_open"][(("kind", "check_failed"),)] == 2
    assert m["rl_alerts_undelivered"][()] == 3
    if has_decisions:
        key = lambda action: (("action", action), ("market", "BTCUSDT-1h"))  # noqa: E731
        assert [m["rl_decisions_total"][key(a)] for a in ("flat", "long", "short", "hold")] == [1, 1, 0, 2]
        assert m["rl_decision_holds_total"][(("market", "BTCUSDT-1h"), ("reason", "OOD"))] == 2
        assert m["rl_decision_holds_total"][(("market", "BTCUSDT-1h"), ("reason", "STALE_FEATURES"))] == 1
        assert m["rl_decision_ood_ratio"][(("market", "BTCUSDT-1h"),)] == pytest.approx(0.5)
        buckets = {dict(k)["le"]: v for k, v in m["rl_decision_latency_seconds_bucket"].items()}
        assert buckets["0.002"] == 1 and buckets["0.005"] == 2 and buckets["0.05"] == 3 and buckets["1.0"] == 4
        assert buckets["+Inf"] == 4
        assert m["rl_decision_latency_seconds_count"][(("market", "BTCUSDT-1h"),)] == 4
        assert m["rl_decision_latency_seconds_sum"][(("market", "BTCUSDT-1h"),)] == pytest.approx(0.7355)


def test_decisions_report_zero_before_the_first_decision(conn):
    add_market(conn, BTC)
    records = {r["metric"]: r for r in obs.family_records(obs.collect_families(conn))}
    assert {s["value"] for s in records["rl_decisions"]["samples"]} == {0.0}
    assert len(records["rl_decisions"]["samples"]) == 4  # one per action
    assert records["rl_decision_ood_ratio"]["samples"][0]["value"] == 0.0
    counts = [s for s in records["rl_decision_latency_seconds"]["samples"] if s["name"].endswith("_count")]
    assert counts and counts[0]["value"] == 0.0


def test_a_broken_section_is_reported_down_and_the_rest_still_served(conn, monkeypatch):
    def broken(c, now):
        raise RuntimeError("no such table")

    monkeypatch.setitem(obs.SECTIONS, "folds", broken)
    records = {r["metric"]: r for r in obs.family_records(obs.collect_families(conn))}
    up = {s["labels"]["section"]: s["value"] for s in records["rl_metrics_section_up"]["samples"]}
    assert up["folds"] == 0 and up["promotions"] == 1
    assert "rl_promotion_actions" in records


def test_an_unreachable_database_is_a_zero_not_an_error():
    collector = obs.LifecycleCollector(obs.url_connector("postgresql://nobody@127.0.0.1:9/none"))
    (family,) = list(collector.collect())
    assert family.name == "rl_metrics_database_up" and family.samples[0].value == 0


def test_freshness_and_missing_rate_of_stored_snapshots(conn):
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.features.service import materialize_window
    from rl_lifecycle.features.spec import load_feature_set
    from rl_lifecycle.features.store import read_snapshots
    from rl_lifecycle.windows import WindowScheme

    scheme = WindowScheme("monthly")
    window = scheme.parse("2024-02-01")
    add_market(conn, BTC, source="synthetic", seed=3)
    ingest_synthetic(conn, BTC, scheme.parse("2024-01-01").start, window.end, seed=3)
    spec = load_feature_set("core_v1")
    materialize_window(conn, BTC, spec, scheme, window)
    now = datetime(2024, 3, 1, 1, tzinfo=UTC)
    records = {r["metric"]: r for r in obs.family_records(obs.collect_families(conn, now=now))}
    newest = conn.execute("SELECT max(ts) FROM market_candles").fetchone()[0]
    (candles,) = records["rl_candle_freshness_seconds"]["samples"]
    assert candles["value"] == pytest.approx((now - newest - timedelta(hours=1)).total_seconds())
    (features,) = records["rl_feature_freshness_seconds"]["samples"]
    assert features["labels"] == {"market": "BTCUSDT-1h", "feature_set": "core_v1"}
    stored = read_snapshots(conn, BTC, spec, window.start, window.end)
    newest_snapshot = datetime.fromtimestamp(stored.ts[-1] / 1e6, tz=UTC)
    assert features["value"] == pytest.approx((now - newest_snapshot - timedelta(hours=1)).total_seconds())
    missing = {s["labels"]["feature"]: s["value"] for s in records["rl_feature_missing_ratio"]["samples"]}
    sample = stored.missing[-obs.MISSING_SAMPLE_ROWS:]
    assert missing == pytest.approx(dict(zip(spec.feature_names, sample.mean(axis=0).astype(float), strict=True)))
    assert set(missing) == set(spec.feature_names) and all(0 <= v <= 1 for v in missing.values())
    assert np.isfinite(list(missing.values())).all()


def test_the_figures_as_json_log_lines(conn, caplog):
    add_market(conn, BTC)
    _audit(conn)
    caplog.set_level(logging.INFO, logger="rl_lifecycle.metrics")
    lines = obs.log_metrics(conn)
    parsed = [json.loads(line) for line in lines]
    assert all(p["event"] == "metrics" and p["metric"].startswith("rl_") and "ts" in p for p in parsed)
    actions = next(p for p in parsed if p["metric"] == "rl_promotion_actions")
    assert {"name": "rl_promotion_actions_total", "labels": {"market": "BTCUSDT-1h", "action": "reject"},
            "value": 2.0} in actions["samples"]
    assert [r.getMessage() for r in caplog.records if r.name == "rl_lifecycle.metrics"] == lines


# -- switches and status ------------------------------------------------------------------------------
SWITCH_ENVS = ("RL_FEATURE_SET", "RL_STRICT_BACKTEST", "RL_AUTO_PROMOTION", "RL_ONLINE_LEARNING_ENABLED",
               "RL_PAPER_DECISIONS_ENABLED", "RL_AUTO_ROLLBACK")


def test_rollout_switches_have_safe_defaults(conn, monkeypatch):
    for name in SWITCH_ENVS:
        monkeypatch.delenv(name, raising=False)
    states = switch_states(conn)
    assert [s.stage for s in states] == sorted(s.stage for s in states)
    switches = {s.switch: s for s in states}
    assert {k: s.value for k, s in switches.items()} == {
        "feature_set": "ta_v2", "paper_decisions": "false", "strict_backtest": "true", "online_learning": "false",
        "auto_promotion": "false", "auto_rollback": "false",
    }
    assert {s.origin for s in switches.values()} == {"default"}
    monkeypatch.setenv("RL_PAPER_DECISIONS_ENABLED", "yes")
    monkeypatch.setenv("RL_FEATURE_SET", "core_v1")
    switches = {s.switch: s for s in switch_states(conn)}
    assert switches["paper_decisions"].value == "true" and switches["paper_decisions"].origin == "environment"
    assert "RL_FEATURE_SET=core_v1" in "\n".join(status_of.switch_lines(list(switches.values())))


def test_status_per_market(conn):
    add_market(conn, BTC)
    _audit(conn)
    record_alert(conn, check_alert("r1", "feature_snapshots", "features_deterministic", "BTCUSDT-1h|2024-03-01", "bad"))
    if conn.execute("SELECT to_regclass('public.rl_decisions') IS NOT NULL").fetchone()[0]:
        _decision(conn, "hold", ("OOD", "STALE_FEATURES"))

    class Registry:
        def versions(self, market):
            from rl_lifecycle.models.tracking import ModelVersionInfo

            return [ModelVersionInfo(market=market.key, version=2, aliases=("challenger",), run_id="r", source="s",
                                     tags={}, created_ms=0)]

    (status,) = status_of.market_status(conn, Registry())
    assert status["market"] == "BTCUSDT-1h" and status["champion_version"] == 3
    assert status["challenger"]["version"] == 2
    assert status["challenger"]["last_gate_decision"] == {"action": "reject", "reason_codes": ["SHARPE_BELOW_MIN"]}
    assert status["open_alerts"] == 1 and status["latest_open_alerts"][0]["check"] == "features_deterministic"
    assert status["candle_freshness_seconds"] is None
    text = "\n".join(status_of.status_lines([status], switch_states(conn)))
    assert "champion        v3" in text and "features_deterministic" in text and "auto_promotion" in text
    if status["last_decision"]:
        assert status["last_decision"]["reason_codes"] == ["OOD", "STALE_FEATURES"] and "OOD, STALE_FEATURES" in text


def test_status_and_metrics_commands(rl_env):
    from typer.testing import CliRunner

    from rl_lifecycle.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["status", "--no-challengers"])
    assert result.exit_code == 0, result.output
    assert "RL_PAPER_DECISIONS_ENABLED" in result.output and "RL_STRICT_BACKTEST" in result.output
    result = runner.invoke(app, ["status", "--json", "--no-challengers"])
    assert result.exit_code == 0 and {"switches", "markets"} <= set(json.loads(result.output))
