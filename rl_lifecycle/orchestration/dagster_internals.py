"""Every private `dagster._` name the shell uses, in one place: they are not public API and may move in
any Dagster release (pinned: dagster 1.13.27). After an upgrade, this is the module to check.

- Launching runs through the code location as the UI does (`launcher.py`): the run-range tags, the job
  selector, the workspace context started from workspace.yaml.
- Storing a backfill as the UI's "Materialize partitions" dialog does (`backfills.py`): Dagster has no
  public API that launches a backfill.
- The run launcher's worker health check for run monitoring (`run_launcher.py`): the types a
  `RunLauncher.check_run_worker_health` returns and `launch_run` receives.
- Per-partition check evaluations (`assets/checks.py`): the pointer to the materialization a check
  evaluated, which the UI's per-partition check status compares with the latest one.
- Idle ticks of the run status sensors (`automation/alerts.py`): the label Dagster gives a tick that
  returned nothing, replaced by a reason (`copy` of the tick's `SensorExecutionData`, a dagster_shared record).
- The watched Celery executor (`celery.py`): `RetryMode` from its config, as dagster-celery's own executor
  builds it (dagster-celery's `_submit_task` and `core_celery_execution_loop`, pinned 0.29.27, are imported
  there: the same check applies after an upgrade of dagster-celery).
"""

from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.execution.retries import RetryMode
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.utils import make_new_backfill_id
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._time import datetime_from_timestamp, get_current_timestamp
from dagster._utils.caching_instance_queryer import CachingInstanceQueryer
from dagster_shared.record import copy

DAEMON_MODULE = "dagster._daemon"  # `python -m dagster._daemon run`: what the `dagster-daemon` script runs
# SensorDefinition.evaluate_tick's skip message for a tick that returned nothing (dagster 1.13.27)
DAGSTER_EMPTY_RESULT = "Sensor function returned an empty result"

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG", "ASSET_PARTITION_RANGE_START_TAG", "DAEMON_MODULE", "DAGSTER_EMPTY_RESULT",
    "AssetCheckEvaluationTargetMaterializationData", "AssetGraphSubset",
    "CachingInstanceQueryer", "CheckRunHealthResult", "JobSubsetSelector", "LaunchRunContext", "PartitionBackfill",
    "RetryMode", "WorkerStatus", "WorkspaceFileTarget", "WorkspaceProcessContext", "copy", "datetime_from_timestamp",
    "get_current_timestamp", "make_new_backfill_id",
]
