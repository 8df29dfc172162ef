"""Drift-triggered retraining (issue 20, point 5): the pure measures with known answers (PSI of two known
histograms, the OOD share staying above its threshold), the planner's requests for a drifting market's open
window, and the online-learning sensor requesting it with the reason in the run's tags (real PostgreSQL and
Dagster instance)."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from dagster import SensorResult, SkipReason, build_sensor_context

from rl_lifecycle import switches
from rl_lifecycle.decisions.drift import (
    TRAINING_SHARES,
    bin_shares,
    feature_psi,
    ood_drift,
    psi,
    rolling_share,
    sustained,
)
from rl_lifecycle.decisions.store import DecisionRecord, append_decision
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle.models.statistics import FeatureStatistics
from rl_lifecycle.online.planner import (
    DATA_JOB,
    LIFECYCLE_JOB,
    DatasetEvent,
    plan_drift_requests,
    plan_lifecycle_requests,
)
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord
from rl_lifecycle.windows import WindowScheme, iso, to_us

HOUR = 3_600_000_000
MONTHLY = WindowScheme("monthly")
T0 = to_us("2024-03-10")


# -- PSI -----------------------------------------------------------------------------------------------------
def test_psi_of_two_known_histograms():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-15)
    assert psi([50, 50], [25, 75]) == pytest.approx(0.2746530721670274, abs=1e-15)  # counts are normalised
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.0, 1.0]) == pytest.approx((1e-6 - 0.5) * math.log(1e-6 / 0.5) + 0.5 * math.log(2))
    with pytest.raises(ValueError, match="same bins"):
        psi([1.0], [1.0])


def test_feature_psi_against_the_training_quantile_bins():
    assert TRAINING_SHARES.sum() == pytest.approx(1.0) and TRAINING_SHARES[4] == pytest.approx(0.25)
    assert bin_shares(np.array([0.0, 1.0, 1.5, 3.0]), np.array([1.0, 2.0])).tolist() == [0.5, 0.25, 0.25]
    rng = np.random.default_rng(0)
    training = rng.normal(0, 1, (20_000, 2))
    stats = FeatureStatistics.of(training, ("a", "b"))
    same = feature_psi(stats, rng.normal(0, 1, (5_000, 2)))
    shifted = feature_psi(stats, np.column_stack([rng.normal(0, 1, 5_000), rng.normal(2, 1, 5_000)]))
    assert same["a"] < 0.02 and same["b"] < 0.02
    assert shifted["a"] < 0.02 and shifted["b"] > 1.0


# -- the OOD share staying above its threshold ----------------------------------------------------------------
def test_rolling_share_and_sustained_runs():
    assert rolling_share([1, 0, 1, 1, 1], 2).tolist() == [0.5, 0.5, 1.0, 1.0]
    assert rolling_share([1], 2).tolist() == []
    assert sustained([0.1, 0.6, 0.2, 0.5, 0.7, 0.5], 0.5, 3) == 3
    assert sustained([0.1, 0.6, 0.2, 0.5, 0.7, 0.5], 0.5, 4) is None
    assert sustained([0.6, 0.7, 0.4], 0.5, 1) is None  # the newest bar is below: no drift now


def _record(market: str, bar: int, version: int | None, ood: bool, record_id: int) -> DecisionRecord:
    return DecisionRecord(market, T0 + bar * HOUR + HOUR, T0 + bar * HOUR, "hold" if ood else "long",
                          0 if ood else 1, version, "fp", None, ("OOD",) if ood else (), 1.0, id=record_id)


def test_ood_drift_names_its_episode_by_the_bar_it_began():
    # v1's bars 0..9 are free, then every bar is held for OOD; bars = 4: the share over 4 bars reaches 0.5 at
    # bar 11 (bars 8..11: two OOD) and has stayed there for 4 values by bar 14
    records = [_record("M-1h", b, 1, b >= 10, b) for b in range(14)]
    assert ood_drift(records, 1, 0.5, 4) is None  # bars 11..13: three values so far
    records.append(_record("M-1h", 14, 1, True, 14))
    signal = ood_drift(records, 1, 0.5, 4)
    assert (signal.since_us, signal.last_bar_us, signal.bars, signal.value) == (T0 + 11 * HOUR, T0 + 14 * HOUR, 4, 1.0)
    assert "OOD holds 100%" in signal.reason and iso(T0 + 11 * HOUR) in signal.reason
    more = ood_drift([*records, _record("M-1h", 15, 1, True, 15)], 1, 0.5, 4)
    assert more.since_us == signal.since_us  # the same episode: the same run key
    assert ood_drift(records, 2, 0.5, 4) is None  # another champion's reign has no decisions yet
    # a new champion's decisions start a new reign
    assert ood_drift([*records, _record("M-1h", 15, 2, True, 15)], 2, 0.5, 4) is None


def test_the_planner_requests_the_open_window_once_per_episode_and_lets_its_dataset_through():
    records = [_record("DRIFTUSDT-1h", b, 1, b >= 10, b) for b in range(16)]
    signal = ood_drift(records, 1, 0.5, 4)
    (request,) = plan_drift_requests([signal], MONTHLY, "2000-01-01")
    partition = "DRIFTUSDT-1h|2024-03-01"  # the window of the newest bar: still open in March 2024
    assert (request.job_name, request.partition) == (DATA_JOB, partition)
    assert request.run_key == f"drift:{partition}:{signal.since_us}" and request.drift_reason == signal.reason
    closes = {"DRIFTUSDT-1h": T0 + 16 * HOUR}
    now = to_us("2024-03-11")
    plain, _ = plan_lifecycle_requests([DatasetEvent(5, partition)], MONTHLY, ["DRIFTUSDT-1h"], closes, now, 0)
    assert plain == []  # an open window is not retrained on its own
    drifted, _ = plan_lifecycle_requests([DatasetEvent(5, partition, drift_reason=signal.reason)], MONTHLY,
                                         ["DRIFTUSDT-1h"], closes, now, 0)
    assert [(r.job_name, r.partition, r.drift_reason) for r in drifted] == [(LIFECYCLE_JOB, partition, signal.reason)]


# -- the sensor ------------------------------------------------------------------------------------------------
def test_the_online_learning_sensor_requests_a_drifting_markets_latest_window(conn, rl_env, dagster_instance,
                                                                             monkeypatch):
    from rl_lifecycle.orchestration.automation.online import current_cursor, online_learning_sensor
    from rl_lifecycle.orchestration.partitions import DRIFT_TAG, TRIGGER_TAG, sync_market_partitions
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource

    market = Market(f"D{uuid.uuid4().hex[:8].upper()}USDT", "1h")
    add_market(conn, market)
    sync_market_partitions(dagster_instance, [market.key])
    audit.append(conn, AuditRecord(market=market.key, action=audit.PROMOTE, actor="pytest", challenger_version=1,
                                   resulting_champion_version=1))
    monkeypatch.setenv("RL_DRIFT_BARS", "3")
    for bar in range(8):
        append_decision(conn, _record(market.key, bar, 1, bar >= 2, 0))
    database = PostgresResource(url=rl_env["RL_DATABASE_URL"])
    cursor = current_cursor(dagster_instance).to_json()

    def tick():
        with build_sensor_context(instance=dagster_instance, cursor=cursor,
                                  resources={"database": database, "mlflow": MlflowResource(database=database)}) as c:
            return online_learning_sensor(c)

    monkeypatch.delenv("RL_ONLINE_LEARNING_ENABLED", raising=False)
    assert isinstance(off := tick(), SkipReason) and "online learning is off" in off.skip_message
    switches.set_switch(conn, "online_learning", "true", "cli:alice")
    result = tick()
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.job_name == DATA_JOB and request.partition_key == f"{market.key}|2024-03-01"
    assert request.tags[TRIGGER_TAG] == "drift" and "OOD holds" in request.tags[DRIFT_TAG]
    assert request.run_key == tick().run_requests[0].run_key  # the same episode, the same run key
