"""Alerts: the `alerts` table, the webhook (a local HTTP server) with retries, and the Dagster sensors on real runs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    DagsterEventType,
    StaticPartitionsDefinition,
    asset,
    asset_check,
    build_sensor_context,
    materialize,
)
from dagster._core.definitions.run_status_sensor_definition import RunStatusSensorCursor

from rl_lifecycle.ops.alerts import (
    CHECK_FAILED,
    RUN_FAILED,
    AlertConfig,
    backoff_seconds,
    check_alert,
    deliver_pending,
    get_alert,
    list_alerts,
    load_alert_config,
    record_alert,
    resolve_run_alerts,
    run_alert,
    slack_body,
)
from rl_lifecycle.orchestration.automation.alerts import (
    alert_delivery_sensor,
    alert_sweep_sensor,
    check_failure_alert_sensor,
    process_finished_run,
    run_failure_alert_sensor,
    run_partition,
)
from rl_lifecycle.orchestration.definitions import defs
from rl_lifecycle.orchestration.resources import PostgresResource


# -- a local webhook --------------------------------------------------------------------------------
class Webhook:
    """A local HTTP server recording POSTed JSON bodies; `status` is what it answers, `delay` how long it waits."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.status = 200
        self.delay = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if hook.delay:
                    time.sleep(hook.delay)
                if hook.status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("RL_ALERT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("RL_DAGSTER_UI_URL", "http://dagster.example:3000/")
    yield hook
    hook.close()


def _config(hook: Webhook, timeout: float = 2.0) -> AlertConfig:
    return AlertConfig(webhook_url=hook.url, ui_url="http://dagster.example:3000", timeout_seconds=timeout)


def _due_now(conn) -> None:
    """Let the backoff expire (instead of waiting for it)."""
    conn.execute("UPDATE alerts SET next_attempt_at = now() - interval '1 second' WHERE delivered_at IS NULL")


# -- the core ---------------------------------------------------------------------------------------
def test_config_reads_the_environment_with_safe_defaults(monkeypatch):
    for name in ("RL_ALERT_WEBHOOK_URL", "RL_DAGSTER_UI_URL", "RL_ALERT_WEBHOOK_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    assert load_alert_config() == AlertConfig(None, "http://127.0.0.1:3000", 5.0)
    monkeypatch.setenv("RL_DAGSTER_UI_URL", "http://ui:3000/")
    monkeypatch.setenv("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS", "100")
    config = load_alert_config()
    assert config.ui_url == "http://ui:3000" and config.timeout_seconds == 30.0  # capped: never blocks a tick long


def test_an_alert_is_recorded_once_per_failure(conn):
    alert = check_alert("r1", "feature_snapshots", "features_deterministic", "BTCUSDT-1h|2024-03-01", "ERROR: differs",
                        severity="ERROR", ui_url="http://ui:3000")
    assert alert.dedupe_key == "check:r1:feature_snapshots:features_deterministic:BTCUSDT-1h|2024-03-01"
    assert alert.run_url == "http://ui:3000/runs/r1"
    stored = record_alert(conn, alert)
    assert stored is not None and stored.id and stored.delivered_at is None and stored.attempts == 0
    assert record_alert(conn, alert) is None  # the same failure again: nothing new
    assert conn.execute("SELECT count(*), min(market) FROM alerts").fetchone() == (1, "BTCUSDT-1h")
    run = run_alert("r1", "market_data_job", None, "step x failed")
    assert run.dedupe_key == "run:r1" and record_alert(conn, run) is not None
    assert [a.kind for a in list_alerts(conn)] == [RUN_FAILED, CHECK_FAILED]


def test_the_body_is_slack_compatible_and_names_everything():
    alert = check_alert("abcdef12-run", "feature_snapshots", "features_deterministic", "BTCUSDT-1h|2024-03-01",
                        "ERROR (blocking): 1 value differs", severity="ERROR", ui_url="http://ui:3000")
    body = slack_body(alert)
    assert set(body) >= {"text", "blocks"}
    text = json.dumps(body)
    for needle in ("feature_snapshots", "features_deterministic", "BTCUSDT-1h|2024-03-01", "1 value differs",
                   "http://ui:3000/runs/abcdef12-run"):
        assert needle in body["text"] or needle in text
    assert all(b["type"] in {"header", "section", "actions"} for b in body["blocks"])


def test_delivery_posts_once_and_marks_the_alert(conn, webhook):
    record_alert(conn, check_alert("r1", "a", "c", "BTCUSDT-1h", "bad", ui_url="http://ui:3000"))
    report = deliver_pending(conn, _config(webhook))
    assert report.delivered == ("check:r1:a:c:BTCUSDT-1h",) and not report.failed
    assert len(webhook.bodies) == 1 and webhook.bodies[0]["alert"]["check"] == "c"
    stored = get_alert(conn, "check:r1:a:c:BTCUSDT-1h")
    assert stored.delivered_at is not None and stored.attempts == 1 and stored.last_error is None
    assert deliver_pending(conn, _config(webhook)).delivered == ()  # delivered alerts are never sent again
    assert len(webhook.bodies) == 1


def test_a_webhook_that_is_down_is_retried_with_backoff(conn, webhook):
    record_alert(conn, run_alert("r2", "job", "BTCUSDT-1h|2024-03-01", "boom"))
    webhook.status = 503
    report = deliver_pending(conn, _config(webhook))
    assert report.failed == ("run:r2",) and webhook.bodies == []
    stored = get_alert(conn, "run:r2")
    assert stored.attempts == 1 and "503" in stored.last_error and stored.delivered_at is None
    wait = conn.execute("SELECT extract(epoch FROM next_attempt_at - now()) FROM alerts").fetchone()[0]
    assert 25 < float(wait) <= 30
    webhook.status = 200
    assert deliver_pending(conn, _config(webhook)).delivered == ()  # not due yet: the backoff holds
    _due_now(conn)
    webhook.status = 500
    deliver_pending(conn, _config(webhook))
    wait = conn.execute("SELECT extract(epoch FROM next_attempt_at - now()) FROM alerts").fetchone()[0]
    assert 55 < float(wait) <= 60  # doubled
    _due_now(conn)
    webhook.status = 200
    assert deliver_pending(conn, _config(webhook)).delivered == ("run:r2",)
    assert len(webhook.bodies) == 1 and get_alert(conn, "run:r2").attempts == 3
    assert [backoff_seconds(n) for n in (1, 2, 3, 10, 20)] == [30, 60, 120, 3600, 3600]


def test_an_unreachable_or_slow_webhook_neither_blocks_nor_raises(conn, webhook):
    record_alert(conn, run_alert("r3", "job", None, "boom"))
    webhook.delay = 5.0
    started = time.monotonic()
    report = deliver_pending(conn, _config(webhook, timeout=0.5))
    assert time.monotonic() - started < 3 and report.failed == ("run:r3",)
    assert "timed out" in get_alert(conn, "run:r3").last_error.lower()
    _due_now(conn)
    closed = AlertConfig(webhook_url="http://127.0.0.1:9/nothing-listens", timeout_seconds=0.5)
    assert deliver_pending(conn, closed).failed == ("run:r3",)
    assert get_alert(conn, "run:r3").attempts == 2


def test_without_a_webhook_alerts_are_recorded_not_posted(conn, monkeypatch):
    monkeypatch.delenv("RL_ALERT_WEBHOOK_URL", raising=False)
    record_alert(conn, run_alert("r4", "job", None, "boom"))
    report = deliver_pending(conn)
    assert report.skipped_reason and "RL_ALERT_WEBHOOK_URL" in report.skipped_reason
    assert get_alert(conn, "run:r4").attempts == 0


def test_old_undelivered_alerts_are_not_sent(conn, webhook):
    record_alert(conn, run_alert("old", "job", None, "boom"))
    conn.execute("UPDATE alerts SET created_at = now() - interval '2 days'")
    assert deliver_pending(conn, _config(webhook)).delivered == ()
    assert webhook.bodies == []


# -- the sensors on real runs -----------------------------------------------------------------------
PARTS = StaticPartitionsDefinition(["BTCUSDT-1h", "ETHUSDT-1h"])
STATE = {"blocking_passes": False, "warn_passes": False}


@asset(partitions_def=PARTS)
def toy_asset() -> int:
    return 1


@asset_check(asset=toy_asset, blocking=True, description="a blocking ERROR check")
def toy_blocking() -> AssetCheckResult:
    return AssetCheckResult(passed=STATE["blocking_passes"], description="the toy bytes differ")


@asset_check(asset=toy_asset, description="a non-blocking WARN check")
def toy_warn() -> AssetCheckResult:
    return AssetCheckResult(passed=STATE["warn_passes"], severity=AssetCheckSeverity.WARN,
                            description="toy rows look odd")


@asset(partitions_def=PARTS, deps=[toy_asset])
def toy_downstream() -> int:
    return 2


def _run(instance, checks, partition="BTCUSDT-1h", assets=(toy_asset, toy_downstream)):
    result = materialize([*assets, *checks], instance=instance, partition_key=partition, raise_on_error=False)
    return result.run_id, result.success


def _evaluate(sensor_def, instance, cursor: str | None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"database": PostgresResource()})
    result = sensor_def.evaluate_tick(context)
    return result, context.cursor


START = RunStatusSensorCursor(record_id=0, record_timestamp=None).to_json()


def test_the_sensors_alert_once_per_failed_check_and_failed_run(conn, dagster_instance, webhook):
    STATE.update(blocking_passes=False, warn_passes=False)
    # a failed blocking ERROR check fails the run; the failed WARN check rides along
    failed_run, ok = _run(dagster_instance, [toy_blocking, toy_warn])
    assert not ok
    # a successful run whose non-blocking WARN check failed
    STATE.update(blocking_passes=True)
    warn_run, ok = _run(dagster_instance, [toy_warn], partition="ETHUSDT-1h", assets=(toy_asset,))
    assert ok

    _, failure_cursor = _evaluate(run_failure_alert_sensor, dagster_instance, START)
    _, success_cursor = _evaluate(check_failure_alert_sensor, dagster_instance, START)
    alerts = {a.dedupe_key: a for a in list_alerts(conn)}
    # the failed run: its two failed checks, and no separate run alert (the blocking check explains it)
    assert set(alerts) == {
        f"check:{failed_run}:toy_asset:toy_blocking:BTCUSDT-1h",
        f"check:{failed_run}:toy_asset:toy_warn:BTCUSDT-1h",
        f"check:{warn_run}:toy_asset:toy_warn:ETHUSDT-1h",
    }
    assert alerts[f"check:{failed_run}:toy_asset:toy_blocking:BTCUSDT-1h"].severity == "ERROR"
    assert "the toy bytes differ" in alerts[f"check:{failed_run}:toy_asset:toy_blocking:BTCUSDT-1h"].summary
    assert all(a.delivered_at is not None for a in alerts.values())
    assert sorted((b["alert"]["check"], b["alert"]["partition"]) for b in webhook.bodies) == [
        ("toy_blocking", "BTCUSDT-1h"), ("toy_warn", "BTCUSDT-1h"), ("toy_warn", "ETHUSDT-1h")]
    assert all(b["alert"]["run_url"].startswith("http://dagster.example:3000/runs/") for b in webhook.bodies)

    # a restart: the same cursor, the old cursor, a fresh start - nothing new is recorded or posted
    for cursor in (failure_cursor, START):
        _evaluate(run_failure_alert_sensor, dagster_instance, cursor)
    for cursor in (success_cursor, START):
        _evaluate(check_failure_alert_sensor, dagster_instance, cursor)
    assert len(list_alerts(conn)) == 3 and len(webhook.bodies) == 3


def test_a_run_that_fails_in_a_step_is_one_run_alert_and_a_passing_check_resolves(conn, dagster_instance, webhook):
    @asset(partitions_def=PARTS, name="toy_asset")
    def broken() -> int:
        raise RuntimeError("candles table is on fire")

    run_id, ok = _run(dagster_instance, [], assets=(broken,))
    assert not ok
    _evaluate(run_failure_alert_sensor, dagster_instance, START)
    (alert,) = list_alerts(conn)
    assert alert.dedupe_key == f"run:{run_id}" and alert.kind == RUN_FAILED
    assert "candles table is on fire" in alert.summary and alert.partition == "BTCUSDT-1h"
    assert webhook.bodies[0]["alert"]["kind"] == RUN_FAILED

    # a WARN failure, then the same check passing on a later run: the alert is resolved, the run alert too
    STATE.update(blocking_passes=True, warn_passes=False)
    _run(dagster_instance, [toy_warn], assets=(toy_asset,))
    STATE.update(warn_passes=True)
    _run(dagster_instance, [toy_warn], assets=(toy_asset,))
    _evaluate(check_failure_alert_sensor, dagster_instance, START)
    kinds = {a.kind: a for a in list_alerts(conn)}
    assert kinds[CHECK_FAILED].resolved_at is not None
    # the same job succeeded on the same partition later: the run alert is resolved as well
    assert list_alerts(conn, market="BTCUSDT-1h", open_only=True) == []


def test_the_delivery_sensor_retries_later_and_never_raises(conn, dagster_instance, webhook):
    STATE.update(blocking_passes=False, warn_passes=True)
    webhook.status = 503  # down while the run fails
    run_id, _ = _run(dagster_instance, [toy_blocking])
    _evaluate(run_failure_alert_sensor, dagster_instance, START)
    key = f"check:{run_id}:toy_asset:toy_blocking:BTCUSDT-1h"
    assert get_alert(conn, key).attempts == 1 and webhook.bodies == []
    webhook.status = 200
    result, _ = _evaluate(alert_delivery_sensor, dagster_instance, None)
    assert "no alert due" in result.skip_message  # backoff not expired
    _due_now(conn)
    result, _ = _evaluate(alert_delivery_sensor, dagster_instance, None)
    assert "delivered 1" in result.skip_message
    assert [b["alert"]["dedupe_key"] for b in webhook.bodies] == [key]
    _due_now(conn)
    _evaluate(alert_delivery_sensor, dagster_instance, None)
    _evaluate(run_failure_alert_sensor, dagster_instance, START)
    assert len(webhook.bodies) == 1


def test_an_older_pass_seen_late_does_not_resolve_a_newer_failure(conn, dagster_instance, webhook):
    STATE.update(blocking_passes=True, warn_passes=True)
    older, _ = _run(dagster_instance, [toy_warn], assets=(toy_asset,))
    STATE.update(warn_passes=False)
    newer, _ = _run(dagster_instance, [toy_warn], assets=(toy_asset,))
    # the sensors tick independently: the newer failure is processed before the older pass
    for run_id in (newer, older):
        process_finished_run(dagster_instance, dagster_instance.get_run_by_id(run_id), conn, failed=False)
    (alert,) = list_alerts(conn)
    assert alert.run_id == newer and alert.resolved_at is None
    STATE.update(warn_passes=True)
    fixed, _ = _run(dagster_instance, [toy_warn], assets=(toy_asset,))
    process_finished_run(dagster_instance, dagster_instance.get_run_by_id(fixed), conn, failed=False)
    assert list_alerts(conn, open_only=True) == []


def test_the_sweep_records_what_the_run_sensors_missed_once_and_keeps_its_cursor_on_errors(
        conn, dagster_instance, webhook):
    STATE.update(blocking_passes=False, warn_passes=True)
    run_id, _ = _run(dagster_instance, [toy_blocking])  # no run status sensor saw it (the database was down)
    down = build_sensor_context(instance=dagster_instance, cursor=None,
                                resources={"database": PostgresResource(url="postgresql://nobody@127.0.0.1:9/none")})
    with pytest.raises(Exception, match="(?i)connect|refused"):
        alert_sweep_sensor.evaluate_tick(down)
    assert down.cursor is None and list_alerts(conn) == []
    result, cursor = _evaluate(alert_sweep_sensor, dagster_instance, None)
    assert "1 missed alert" in result.skip_message and cursor is not None
    assert [a.dedupe_key for a in list_alerts(conn)] == [f"check:{run_id}:toy_asset:toy_blocking:BTCUSDT-1h"]
    for again in (cursor, None):  # a later tick, or a restart without a cursor: nothing twice
        result, _ = _evaluate(alert_sweep_sensor, dagster_instance, again)
        assert "accounted for" in result.skip_message
    _evaluate(run_failure_alert_sensor, dagster_instance, START)
    assert len(list_alerts(conn)) == 1 and len(webhook.bodies) == 1


def test_the_sweep_looks_back_before_its_cursor(conn, dagster_instance, webhook):
    from datetime import UTC, datetime, timedelta

    STATE.update(blocking_passes=False, warn_passes=True)
    run_id, _ = _run(dagster_instance, [toy_blocking])
    stored_late = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()  # a cursor already past the run
    result, cursor = _evaluate(alert_sweep_sensor, dagster_instance, stored_late)
    assert "1 missed alert" in result.skip_message and cursor == stored_late
    assert [a.run_id for a in list_alerts(conn)] == [run_id]


def test_a_success_resolves_only_runs_that_failed_before_it_started(conn):
    from datetime import UTC, datetime, timedelta

    failed_at = datetime(2024, 1, 1, 12, tzinfo=UTC)
    record_alert(conn, run_alert("failed-run", "lifecycle_job", "BTCUSDT-1h|2024-01-01", "boom", failed_at=failed_at))
    assert get_alert(conn, "run:failed-run").failed_at == failed_at
    assert resolve_run_alerts(conn, "lifecycle_job", "BTCUSDT-1h|2024-01-01", "started-before",
                              passed_at=failed_at - timedelta(minutes=5)) == 0
    assert resolve_run_alerts(conn, "lifecycle_job", "BTCUSDT-1h|2024-01-01", "started-after",
                              passed_at=failed_at + timedelta(seconds=1)) == 1


def test_paper_decision_runs_are_alerted_per_market():
    from dagster import DagsterRun

    run = DagsterRun(job_name="paper_decisions_job", run_id="r1", tags={"paper_decisions/market": "BTCUSDT-1m"})
    assert run_partition(run) == "BTCUSDT-1m"


def test_the_sensors_run_by_default():
    from dagster import DefaultSensorStatus

    for s in (check_failure_alert_sensor, run_failure_alert_sensor, alert_delivery_sensor, alert_sweep_sensor):
        assert s.default_status == DefaultSensorStatus.RUNNING


# -- the project's own graph: a broken feature snapshot ---------------------------------------------
@pytest.mark.slow
def test_a_broken_feature_snapshot_sends_exactly_one_post_naming_check_and_partition(conn, dagster_instance, webhook,
                                                                                     nondeterministic_features):
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.orchestration.launcher import materialize as run_assets
    from rl_lifecycle.orchestration.partitions import sync_market_partitions
    from rl_lifecycle.windows import WindowScheme

    btc, scheme = Market("BTCUSDT", "1h"), WindowScheme("monthly")
    add_market(conn, btc, source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, [btc.key])
    ingest_synthetic(conn, btc, scheme.parse("2024-02-01").start, scheme.parse("2024-03-01").start, seed=7)
    (run,) = run_assets(dagster_instance, defs, ["candles", "feature_snapshots", "training_dataset"],
                        ["BTCUSDT-1h|2024-03-01"], in_process=True)
    assert not run.ok
    failures = dagster_instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_FAILURE).records
    assert failures  # the blocking check failed the run
    _evaluate(run_failure_alert_sensor, dagster_instance, START)
    _evaluate(check_failure_alert_sensor, dagster_instance, START)
    _evaluate(alert_delivery_sensor, dagster_instance, None)
    _evaluate(run_failure_alert_sensor, dagster_instance, START)  # a restart changes nothing
    # the fault breaks two checks here (determinism and no-lookahead both recompute in this process):
    # exactly one POST per failed check, none for the run they failed
    failed = sorted(c.check for c in run.checks if not c.passed)
    assert "features_deterministic" in failed
    assert sorted(b["alert"]["check"] for b in webhook.bodies) == failed
    assert all(b["alert"]["kind"] == CHECK_FAILED for b in webhook.bodies)
    (body,) = [b for b in webhook.bodies if b["alert"]["check"] == "features_deterministic"]
    assert body["alert"]["check"] == "features_deterministic"
    assert body["alert"]["partition"] == "BTCUSDT-1h|2024-03-01"
    assert "features_deterministic" in body["text"] and "BTCUSDT-1h|2024-03-01" in body["text"]
    assert body["alert"]["run_url"].endswith(f"/runs/{run.run_id}")


@pytest.mark.slow
def test_a_corrupted_stored_snapshot_fails_its_check_run_alone_and_alerts_once(conn, rl_env, dagster_instance, webhook):
    """As an operator would: one stored vector changed behind the store's back, `rl-lifecycle check
    features_deterministic` for that partition (a run launched through the code location) fails, and
    exactly one POST names the check and the partition."""
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.orchestration.launcher import materialize as run_assets
    from rl_lifecycle.orchestration.launcher import run_checks
    from rl_lifecycle.orchestration.partitions import sync_market_partitions
    from rl_lifecycle.windows import WindowScheme

    btc, scheme, key = Market("BTCUSDT", "1h"), WindowScheme("monthly"), "BTCUSDT-1h|2024-03-01"
    add_market(conn, btc, source="synthetic", seed=7)
    sync_market_partitions(dagster_instance, [btc.key])
    ingest_synthetic(conn, btc, scheme.parse("2024-02-01").start, scheme.parse("2024-03-01").start, seed=7)
    (stored,) = run_assets(dagster_instance, defs, ["candles", "feature_snapshots"], [key])
    assert stored.ok, stored.errors
    # flip the lowest bit of one value of the window's last row
    conn.execute("""UPDATE rl_feature_snapshots SET vector = set_byte(vector, 0, get_byte(vector, 0) # 1)
                    WHERE ts = (SELECT max(ts) FROM rl_feature_snapshots)""")

    (run,) = run_checks(dagster_instance, defs, ["features_deterministic"], [key])
    assert run.materialized == [] and [(c.check, c.passed) for c in run.checks] == [("features_deterministic", False)]
    assert "2024-03-31T23:00" in run.checks[0].description
    assert dagster_instance.get_run_by_id(run.run_id).remote_job_origin is not None

    _evaluate(run_failure_alert_sensor, dagster_instance, START)
    _evaluate(check_failure_alert_sensor, dagster_instance, START)
    _evaluate(run_failure_alert_sensor, dagster_instance, START)  # a restart sends nothing again
    (body,) = webhook.bodies
    assert body["alert"]["check"] == "features_deterministic" and body["alert"]["partition"] == key
    assert body["alert"]["run_url"].endswith(f"/runs/{run.run_id}")
