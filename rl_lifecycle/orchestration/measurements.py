"""What the scale benchmark (`rl_lifecycle/bench/scale.py`) reads from Dagster: the UI's partition-status
query, the online-learning sensor's tick, and the fold steps of a run from its event log."""

from __future__ import annotations

import time

import psycopg

PARTITION_STATUS_QUERY = """
query PartitionStatus($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses {
        __typename
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey
            primaryDimEndKey
            secondaryDim {
              __typename
              ... on TimePartitionStatuses { ranges { status startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions failedPartitions unmaterializedPartitions }
            }
          }
        }
      }
    }
  }
}
"""


def partition_status_seconds(instance, repeats: int = 3) -> tuple[float, dict]:
    """Median seconds of the UI's partition-status query of `candles`, through the code location."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    from rl_lifecycle.orchestration.launcher import code_location

    times, stats = [], {}
    with code_location(instance) as location:
        for _ in range(repeats):
            started = time.perf_counter()
            result = execute_dagster_graphql(location.context, PARTITION_STATUS_QUERY,
                                             {"assetKey": {"path": ["candles"]}})
            times.append(time.perf_counter() - started)
            if result.errors:
                raise RuntimeError(f"partition status query: {result.errors}")
            stats = result.data["assetNodeOrError"]["partitionStats"]
    return sorted(times)[len(times) // 2], stats


def online_tick_seconds(instance, url: str) -> tuple[float, float, int]:
    """(first tick s, next tick s, run requests of the first) of the online-learning sensor, switch on."""
    from dagster import build_sensor_context

    from rl_lifecycle.orchestration.automation.online import ONLINE_LEARNING, online_learning_sensor
    from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
    from rl_lifecycle.switches import set_switch

    with psycopg.connect(url, autocommit=True) as conn:
        set_switch(conn, ONLINE_LEARNING, "true", actor="bench")
    database = PostgresResource(url=url)
    resources = {"database": database, "mlflow": MlflowResource(database=database)}
    cursor, times, first_requests = None, [], 0
    for _ in range(2):
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            started = time.perf_counter()
            result = online_learning_sensor(context)
            times.append(time.perf_counter() - started)
        cursor = getattr(result, "cursor", None) or cursor
        if not first_requests:
            first_requests = len(getattr(result, "run_requests", None) or [])
    return times[0], times[1], first_requests


def fold_fan_out_seconds(instance, run_id: str) -> tuple[float, dict[str, str]]:
    """From the first fold step's start to the last one's end; and the node of each fold step."""
    from dagster import DagsterEventType

    starts, ends, nodes = [], [], {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not (event.step_key or "").startswith("fold_report.run_fold"):
            continue
        key = event.step_key
        if event.event_type == DagsterEventType.STEP_START:
            starts.append(entry.timestamp)
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends.append(entry.timestamp)
        elif event.event_type == DagsterEventType.ENGINE_EVENT and "Celery worker" in event.engine_event_data.metadata:
            nodes[key] = event.engine_event_data.metadata["Celery worker"].value
    return max(ends) - min(starts), nodes
