"""A file the inbox rejects raises one alert (however many ticks see it), shown by `rl-lifecycle status`;
importing a fixed file of the same name resolves it."""

from __future__ import annotations

import json

from dagster import SensorResult

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.ops.alerts import list_alerts
from rl_lifecycle_tests.cli_helpers import run_cli
from rl_lifecycle_tests.test_inbox import GOOD_ROWS, _drop, _tick

SYNTH = Market("BTCUSDT", "1h")
DEMO = Market("BTCDEMO", "1h")
INBOX_REJECTED = "inbox_rejected"  # the alert kind


def _inbox_alerts(conn):
    return [a for a in list_alerts(conn) if a.kind == INBOX_REJECTED]


def _status(capsys, monkeypatch) -> tuple[str, dict]:
    code, out, err = run_cli(capsys, monkeypatch, "status", "--no-challengers")
    assert code == 0, err
    code, as_json, err = run_cli(capsys, monkeypatch, "status", "--no-challengers", "--json")
    assert code == 0, err
    return out, {m["market"]: m for m in json.loads(as_json)["markets"]}


def test_a_rejected_file_raises_one_alert_over_ticks_and_shows_in_status(capsys, monkeypatch, conn, rl_env,
                                                                         dagster_instance):
    from rl_lifecycle.orchestration.automation.inbox import inbox_sensor
    from rl_lifecycle.settings import load_settings

    monkeypatch.setenv("RL_INBOX_SETTLE_SECONDS", "0")
    add_market(conn, SYNTH, source="synthetic", seed=7)
    add_market(conn, DEMO)
    inbox = load_settings().inbox_dir
    _drop(inbox / SYNTH.key, "july.csv", GOOD_ROWS)  # a synthetic market refuses files
    _, cursor = _tick(inbox_sensor, dagster_instance, rl_env)  # seen: settling
    result, cursor = _tick(inbox_sensor, dagster_instance, rl_env, cursor)
    assert isinstance(result, SensorResult) and "1 rejected" in result.skip_reason.skip_message
    assert "1 new alert(s)" in result.skip_reason.skip_message
    _tick(inbox_sensor, dagster_instance, rl_env, cursor)

    (alert,) = _inbox_alerts(conn)
    assert alert.market == SYNTH.key and alert.resolved_at is None
    assert "july.csv: rejected" in alert.summary and "synthetic" in alert.summary
    assert alert.dedupe_key.startswith(f"inbox:{SYNTH.key}/july.csv:")

    text, markets = _status(capsys, monkeypatch)
    assert markets[SYNTH.key]["open_alerts"] == 1 and markets[DEMO.key]["open_alerts"] == 0
    assert markets[SYNTH.key]["latest_open_alerts"][0]["kind"] == INBOX_REJECTED
    block = text.split(f"\n{SYNTH.key}\n", 1)[1]
    assert "open alerts     1" in block and "inbox: BTCUSDT-1h/july.csv: rejected" in block
    assert "is synthetic" in block  # the first problem, under the file


def test_a_refused_file_seen_on_every_tick_alerts_once_and_a_fixed_drop_resolves(capsys, monkeypatch, conn, rl_env,
                                                                                 dagster_instance, tmp_path):
    from rl_lifecycle.orchestration.automation.inbox import inbox_sensor
    from rl_lifecycle.settings import load_settings

    monkeypatch.setenv("RL_INBOX_SETTLE_SECONDS", "0")
    add_market(conn, DEMO)
    inbox = load_settings().inbox_dir
    market_dir = inbox / DEMO.key
    market_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (market_dir / "rejected").symlink_to(elsewhere)  # unsafe: the file stays in place, refused on every tick
    _drop(market_dir, "july.csv", GOOD_ROWS)
    cursor = None
    for _ in range(4):
        _, cursor = _tick(inbox_sensor, dagster_instance, rl_env, cursor)
    assert (market_dir / "july.csv").exists()
    (alert,) = _inbox_alerts(conn)
    assert alert.market == DEMO.key and "refused" in alert.summary

    # the directory fixed, the same file is imported: the alert of its name is resolved
    (market_dir / "rejected").unlink()
    for _ in range(2):
        _, cursor = _tick(inbox_sensor, dagster_instance, rl_env, cursor)
    assert not (market_dir / "july.csv").exists()
    (alert,) = _inbox_alerts(conn)
    assert alert.resolved_at is not None
    _, markets = _status(capsys, monkeypatch)
    assert markets[DEMO.key]["open_alerts"] == 0
