"""Check evaluations per partition, as the UI reads them, from a run over one window or a range.

Dagster stores a partitioned check's status per partition: at run start one PLANNED row per partition
of the run in `asset_check_executions`, then each evaluation updates the row of its own `partition`.
An `AssetCheckResult` carries the run's partition only in a single-partition run; over a range it
would record one evaluation without a partition, and every window's row stays PLANNED, shown as
"Skipped" once the run ends. So a check yields one `AssetCheckEvaluation` per window, each naming the
window's latest materialization (else the UI treats the status as outdated). A failed blocking
evaluation still fails the step after every window is recorded, so downstream assets do not run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    Output,
)

from rl_lifecycle.orchestration.assets.presentation import partition_check_result
from rl_lifecycle.orchestration.dagster_internals import AssetCheckEvaluationTargetMaterializationData

CheckEvents = Iterator[AssetCheckEvaluation | Output]  # what a check body yields


def partition_evaluations(
    context: AssetCheckExecutionContext, outcomes: Sequence[tuple[str, object]]
) -> CheckEvents:
    """One evaluation of the running check per (partition key, report with `passed`, `summary` and
    optionally `details`): each window's own pass or fail, summary and metadata. First the check's
    output, as an `AssetCheckResult` yields it: what blocked downstream steps wait for."""
    (spec,) = context.check_specs
    (output,) = context.op_execution_context.op_def.output_defs
    yield Output(None, output_name=output.name)
    keys = [str(key) for key, _ in outcomes]
    targets = latest_materializations(context.instance, spec.asset_key, keys)
    for key, (_, report) in zip(keys, outcomes, strict=True):
        result = partition_check_result([(key, report)])
        yield AssetCheckEvaluation(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=result.passed,
            metadata=result.metadata,
            target_materialization_data=targets.get(key),
            severity=result.severity,
            description=result.description,
            blocking=spec.blocking,
            partition=key,
        )


def latest_materializations(
    instance: DagsterInstance, asset_key: AssetKey, partition_keys: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The latest materialization of each partition (two queries for the whole range), as Dagster
    itself records it for a single-partition check."""
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(partition_keys)
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    return {
        record.partition_key: AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
        )
        for record in records
        if record.partition_key is not None
    }
