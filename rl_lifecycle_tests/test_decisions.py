"""Paper decisions against a real PostgreSQL, real TA-Lib, a real MLflow registry and a tiny SB3 champion."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.candles.store import load_candles, upsert_candles
from rl_lifecycle.datasets.builder import build_dataset
from rl_lifecycle.datasets.service import spec_ending_at
from rl_lifecycle.decisions import safety
from rl_lifecycle.decisions.config import DecisionConfig, load_decision_config, parse_decision_config
from rl_lifecycle.decisions.service import CHAMPIONS, decide, parse_at
from rl_lifecycle.decisions.store import decision_history
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.features.vectors import load_vectors
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market, set_market_fill
from rl_lifecycle.models.service import train_challenger
from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.models.tracking import open_registry
from rl_lifecycle.promotion.service import manual_promote
from rl_lifecycle.windows import WindowScheme, iso, newest_closed_bar, to_us
from rl_lifecycle_tests.cli_helpers import run_cli

SCHEME = WindowScheme("monthly")
WINDOW = SCHEME.parse("2024-03-01")
HOUR = 3_600_000_000
AT = to_us("2024-04-20T12:00:00")  # out of sample: the champion trained on 2024-01..03
FREE = {"flat", "long", "short"}


def _tiny_spec(tmp_path: Path) -> str:
    spec = load_model_spec("ppo_small")
    fields = {**spec.model_dump(mode="json"), "total_timesteps": 256}
    fields["hyperparameters"] = {**fields.get("hyperparameters", {}), "n_steps": 128, "batch_size": 64}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def _market(prefix: str = "D", interval: str = "1h") -> Market:
    # MLflow's database outlives each test: a market of its own keeps registered versions apart
    return Market(f"{prefix}{uuid.uuid4().hex[:10].upper()}", interval)


@pytest.fixture
def registry(rl_env, database_url):
    return open_registry(database_url)


@pytest.fixture
def champion_market(conn, registry, tmp_path) -> Market:
    """Candles 2023-12..2024-04, a dataset of 2024-01..03, a tiny PPO trained on it and promoted to champion."""
    market = _market()
    ingest_synthetic(conn, market, to_us("2023-12-01"), to_us("2024-05-01"), seed=11)
    build_dataset(conn, spec_ending_at(market, WINDOW, SCHEME, "ta_v2", 3), tmp_path / "datasets",
                  load_feature_set("ta_v2"))
    trained = train_challenger(conn, registry, market, WINDOW, load_model_spec(_tiny_spec(tmp_path)))
    manual_promote(conn, registry, market, trained.version.version, "decision tests", "pytest", override=True)
    return market


def _canonical_sha(conn, market: Market, bar_ts: int) -> str:
    frame = load_vectors(conn, market, load_feature_set("ta_v2"), bar_ts, bar_ts + 1).frame
    assert int(frame.ts[0]) == bar_ts
    return safety.vector_sha256(frame.values[0])


# -- pure rules ------------------------------------------------------------------------------------------
def test_staleness_follows_the_market_calendar():
    from rl_lifecycle.markets.calendars import get_calendar

    crypto, fx = get_calendar("crypto"), get_calendar("fx")
    friday_last = to_us("2024-03-08T21:00:00")  # FX closes Friday 17:00 New York = 22:00 UTC in winter
    sunday_noon = to_us("2024-03-10T12:00:00")
    assert safety.missed_bars(fx, HOUR, friday_last, sunday_noon) == 0
    assert safety.missed_bars(crypto, HOUR, friday_last, sunday_noon) > 30
    assert safety.missed_bars(fx, HOUR, friday_last, to_us("2024-03-11T12:00:00")) > 2  # Monday: the week is open
    assert safety.missed_bars(crypto, HOUR, None, sunday_noon) is None and safety.is_stale(None, 2)
    assert newest_closed_bar(to_us("2024-03-08T21:59:59"), HOUR) == to_us("2024-03-08T20:00:00")
    assert newest_closed_bar(to_us("2024-03-08T22:00:00"), HOUR) == friday_last


def test_config_is_validated_by_name(tmp_path, monkeypatch):
    assert load_decision_config() == DecisionConfig()  # the shipped YAML and the model's defaults agree
    with pytest.raises(UserInputError, match="ood_max_abs_z"):
        parse_decision_config({"ood_max_abs_z": -1})
    with pytest.raises(UserInputError, match="unknown key 'stale_after_bar'"):
        parse_decision_config({"stale_after_bar": 3})
    path = tmp_path / "d.yaml"
    path.write_text("stale_after_bars: 5\ncritical_features: [rsi_14]\n")
    monkeypatch.setenv("RL_DECISION_CONFIG", str(path))
    config = load_decision_config()
    assert config.stale_after_bars == 5 and config.critical_for(("rsi_14", "x"), ()) == ("rsi_14",)
    with pytest.raises(UserInputError, match="nope"):
        DecisionConfig(critical_features=("nope",)).critical_for(("rsi_14",), ())
    assert DecisionConfig().critical_for(("a", "b"), ()) == ("a", "b")  # none marked: all are critical


def test_parse_at_refuses_garbage_and_the_future():
    now = to_us("2024-05-01")
    assert parse_at(None, now) == now and parse_at("2024-04-01T10:00:00Z", now) == to_us("2024-04-01T10:00:00")
    with pytest.raises(UserInputError, match="--at 'yesterday'"):
        parse_at("yesterday", now)
    with pytest.raises(UserInputError, match="in the future"):
        parse_at("2024-06-01", now)


# -- without a champion ------------------------------------------------------------------------------------
def test_no_champion_holds_and_lists_every_reason(conn):
    market = _market("N")
    ingest_synthetic(conn, market, to_us("2024-03-01"), to_us("2024-04-01"), seed=3)
    held = decide(conn, market, at_us=to_us("2024-04-01"), registry=None).record
    assert held.action == "hold" and held.reason_codes == (safety.NO_CHAMPION,)
    assert held.champion_version is None and held.bar_ts_us == to_us("2024-03-31T23:00:00")
    assert held.vector_sha256 == _canonical_sha(conn, market, held.bar_ts_us)
    # a day later: also stale; before the first candle: stale and no vector at all
    later = decide(conn, market, at_us=to_us("2024-04-02"), registry=None).record
    assert later.reason_codes == (safety.NO_CHAMPION, safety.STALE_FEATURES)
    empty = decide(conn, market, at_us=to_us("2024-02-01"), registry=None).record
    assert empty.reason_codes == (safety.NO_CHAMPION, safety.STALE_FEATURES, safety.MISSING_CRITICAL_FEATURES)
    assert empty.vector_sha256 is None and empty.bar_ts_us is None
    assert [d.id for d in decision_history(conn, market.key)] == [empty.id, later.id, held.id]


def test_a_weekend_is_not_stale_for_fx(conn):
    market = _market("F")
    add_market(conn, market, calendar="fx")
    ingest_synthetic(conn, market, to_us("2024-03-01"), to_us("2024-03-08T22:00:00"), seed=4)
    sunday = decide(conn, market, at_us=to_us("2024-03-10T12:00:00"), registry=None).record
    assert sunday.reason_codes == (safety.NO_CHAMPION,) and sunday.bar_ts_us == to_us("2024-03-08T21:00:00")
    monday = decide(conn, market, at_us=to_us("2024-03-11T12:00:00"), registry=None).record
    assert safety.STALE_FEATURES in monday.reason_codes


def test_unknown_market_is_refused(conn):
    with pytest.raises(UserInputError, match="not registered"):
        decide(conn, _market("U"), registry=None)


def test_rl_decisions_is_append_only(conn):
    market = _market("A")
    ingest_synthetic(conn, market, to_us("2024-03-01"), to_us("2024-03-03"), seed=5)
    decide(conn, market, at_us=to_us("2024-03-03"), registry=None)
    for statement in ("UPDATE rl_decisions SET action = 'long'", "DELETE FROM rl_decisions", "TRUNCATE rl_decisions"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
    assert len(decision_history(conn, market.key)) == 1


# -- with a champion -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_champion_acts_freely_then_holds_when_a_candle_is_far_out(conn, registry, champion_market):
    CHAMPIONS.clear()
    market = champion_market
    free = decide(conn, market, at_us=AT, registry=registry).record
    assert free.action in FREE and free.reason_codes == (), free.details
    assert free.champion_version is not None and free.fingerprint == load_feature_set("ta_v2").fingerprint
    bar = to_us("2024-04-20T11:00:00")
    assert free.bar_ts_us == bar and free.vector_sha256 == _canonical_sha(conn, market, bar)
    # --at in the past: the bar closed then, and its canonical vector
    past = decide(conn, market, at_us=to_us("2024-04-10T05:30:00"), registry=registry).record
    assert past.bar_ts_us == to_us("2024-04-10T04:00:00") and past.reason_codes == ()
    assert past.vector_sha256 == _canonical_sha(conn, market, past.bar_ts_us) != free.vector_sha256
    # one candle pushed far out of range: the next decision holds with OOD (and only OOD)
    candles = load_candles(conn, market, bar, bar + HOUR)
    spike = CandleArrays(candles.ts, candles.open, candles.high * 40, candles.low, candles.close * 40,
                         candles.volume * 1000)
    upsert_candles(conn, market, spike.to_frame())
    held = decide(conn, market, at_us=AT, registry=registry).record
    assert held.action == "hold" and held.reason_codes == (safety.OOD,)
    assert held.details["ood"]["features_beyond_bound"] or held.details["ood"]["mahalanobis"] > 25
    assert held.vector_sha256 == _canonical_sha(conn, market, bar) != free.vector_sha256


@pytest.mark.slow
def test_stale_mismatch_and_several_reasons_together(conn, registry, champion_market, monkeypatch):
    market = champion_market
    stale = decide(conn, market, at_us=to_us("2024-05-01T06:00:00"), registry=registry).record
    assert stale.action == "hold" and stale.reason_codes == (safety.STALE_FEATURES,)
    assert stale.bar_ts_us == to_us("2024-04-30T23:00:00") and stale.details["missed_bars"] == 6
    monkeypatch.setenv("RL_FEATURE_SET", "core_v1")  # the active set no longer matches the champion's
    mismatch = decide(conn, market, at_us=AT, registry=registry).record
    assert mismatch.action == "hold" and mismatch.reason_codes == (safety.FEATURE_SET_MISMATCH,)
    assert mismatch.fingerprint == load_feature_set("core_v1").fingerprint
    both = decide(conn, market, at_us=to_us("2024-05-02"), registry=registry).record
    assert both.reason_codes == (safety.FEATURE_SET_MISMATCH, safety.STALE_FEATURES)
    monkeypatch.delenv("RL_FEATURE_SET")
    # the market fills at the next open now; the champion learned close-fill rewards: a forced hold
    set_market_fill(conn, market, "next_open")
    refill = decide(conn, market, at_us=AT, registry=registry).record
    assert refill.action == "hold" and refill.reason_codes == (safety.FILL_MISMATCH,)
    assert (refill.details["champion_fill"], refill.details["market_fill"]) == ("close", "next_open")
    set_market_fill(conn, market, None)  # back to the calendar's default (crypto: close): free again
    assert decide(conn, market, at_us=AT, registry=registry).record.reason_codes == ()


@pytest.mark.slow
def test_cli_prints_exactly_one_json_object(capsys, monkeypatch, conn, champion_market, rl_env):
    code, out, err = run_cli(capsys, monkeypatch, "decide", "--market", champion_market.key, "--at", iso(AT))
    assert code == 0, err
    assert out.count("\n") == 1
    decision = json.loads(out)
    assert {"action", "champion_version", "fingerprint", "vector_sha256", "reason_codes", "latency_ms"} <= set(decision)
    assert decision["action"] in FREE and decision["reason_codes"] == [] and decision["latency_ms"] > 0
    stored = decision_history(conn, champion_market.key, limit=1)[0]
    assert stored.id == decision["decision_id"] and stored.vector_sha256 == decision["vector_sha256"]
    code, out, err = run_cli(capsys, monkeypatch, "decide", "--market", champion_market.key, "--at", iso(AT),
                             "--no-record")
    assert code == 0 and json.loads(out)["decision_id"] is None
    assert json.loads(out)["vector_sha256"] == decision["vector_sha256"]
    assert [d.id for d in decision_history(conn, champion_market.key)] == [stored.id]  # nothing appended
    for args, message in (
        (("--market", "BTC$USDT-1h"), "pair"),
        (("--market", "BTCUSDT-7m"), "interval"),
        (("--market", champion_market.key, "--at", "tomorrow-ish"), "--at"),
        (("--market", "NOPEUSDT-1h"), "not registered"),
    ):
        code, out, err = run_cli(capsys, monkeypatch, "decide", *args)
        assert code == 2 and out == "" and message in err, (args, err)


# -- the Dagster shell ---------------------------------------------------------------------------------------
def test_paper_decisions_schedule_is_gated_and_decides_once_per_market_per_bar(conn, rl_env, monkeypatch):
    from dagster import DefaultScheduleStatus, Definitions, SkipReason, build_schedule_context

    from rl_lifecycle.decisions.service import due_decisions
    from rl_lifecycle.orchestration.automation.paper_decisions import paper_decisions
    from rl_lifecycle.orchestration.jobs import paper_decisions_job
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    database = PostgresResource(url=rl_env["RL_DATABASE_URL"])
    resources = {"database": database, "mlflow": MlflowResource(database=database)}
    Definitions(jobs=[paper_decisions_job], schedules=[paper_decisions], resources=resources).resolve_all_job_defs()
    assert paper_decisions.default_status == DefaultScheduleStatus.RUNNING  # it reads the switch every tick
    crypto, fx = _market("S", "1m"), _market("W")
    add_market(conn, crypto)
    add_market(conn, fx, calendar="fx")

    monkeypatch.delenv("RL_PAPER_DECISIONS_ENABLED", raising=False)
    with build_schedule_context(resources=resources) as context:
        skipped = paper_decisions(context)
    assert isinstance(skipped, SkipReason) and "RL_PAPER_DECISIONS_ENABLED" in skipped.skip_message

    monkeypatch.setenv("RL_PAPER_DECISIONS_ENABLED", "true")
    from datetime import UTC, datetime

    with build_schedule_context(resources=resources, scheduled_execution_time=datetime.now(UTC)) as context:
        requests = paper_decisions(context)
    due = {r.tags["paper_decisions/market"]: r for r in requests}
    assert crypto.key in due  # crypto is always live; fx only on weekdays
    saturday = to_us("2024-03-09T12:00:00")
    assert [d.market for d in due_decisions(conn, saturday)] == [crypto.key]
    run_config = due[crypto.key].run_config
    assert run_config["ops"]["paper_decision"]["config"]["bar_ts"]
    run_config["ops"]["paper_decision"]["config"]["grace_seconds"] = 0  # no candle will come: don't wait for it
    result = paper_decisions_job.execute_in_process(run_config=run_config, resources=resources)
    assert result.success
    (made,) = decision_history(conn, crypto.key)
    assert made.action == "hold" and safety.NO_CHAMPION in made.reason_codes
    assert crypto.key not in {d.market for d in due_decisions(conn)}  # decided: not due again until the next bar
