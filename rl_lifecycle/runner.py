"""Headless materialization on the PostgreSQL-backed Dagster instance (runs show up in the UI)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dagster import AssetKey, DagsterInstance

from rl_lifecycle.errors import UserInputError


@dataclass(frozen=True)
class CheckOutcome:
    asset: str
    check: str
    passed: bool
    blocking: bool
    description: str | None


@dataclass(frozen=True)
class PartitionRun:
    partition_key: str
    run_id: str
    success: bool
    materialized: list[str]
    checks: list[CheckOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    metadata: dict[str, dict] = field(default_factory=dict)  # asset -> materialization metadata values

    @property
    def ok(self) -> bool:
        return self.success and all(c.passed for c in self.checks if c.blocking)


def materialize(
    instance: DagsterInstance,
    asset_names: Sequence[str],
    partition_keys: Sequence[str],
    on_done: Callable[[PartitionRun], None] | None = None,
    log_level: str = "WARNING",
    run_config: dict | None = None,
) -> list[PartitionRun]:
    """Run `lifecycle_job` once per partition for the selected assets (and their checks)."""
    from rl_lifecycle.definitions import ALL_ASSETS, defs

    known = {a.key.to_user_string() for a in ALL_ASSETS}
    unknown = [n for n in asset_names if n not in known]
    if unknown:
        raise UserInputError(f"unknown asset(s) {', '.join(unknown)}; known assets: {', '.join(sorted(known))}")
    job = defs.resolve_job_def("lifecycle_job")
    selection = [AssetKey(n) for n in asset_names]
    runs = []
    for key in partition_keys:
        result = job.execute_in_process(
            instance=instance, partition_key=key, asset_selection=selection, raise_on_error=False,
            run_config={**(run_config or {}), "loggers": {"console": {"config": {"log_level": log_level}}}},
            tags={"rl_lifecycle/launched_by": "cli"},
        )
        checks = [
            CheckOutcome(
                e.asset_key.to_user_string(), e.check_name, e.passed,
                bool(e.blocking), e.description,
            )
            for e in result.get_asset_check_evaluations()
        ]
        errors = [
            f"{event.step_key}: {_root_message(event.event_specific_data.error)}"
            for event in result.all_events
            if event.is_step_failure and event.event_specific_data and event.event_specific_data.error
        ]
        run = PartitionRun(
            partition_key=key,
            run_id=result.run_id,
            success=result.success,
            materialized=sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}),
            metadata={
                e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                for e in result.get_asset_materialization_events()
            },
            checks=checks,
            errors=errors,
        )
        runs.append(run)
        if on_done:
            on_done(run)
    return runs


def _root_message(error) -> str:
    """The innermost cause of a step failure: what the user's code raised, not Dagster's wrapper."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()
