"""Materialization through the workspace's code location, as the UI, schedules and sensors launch runs.

Every run is created from the code location's job snapshot and carries its origin, so the UI lists it
on the Overview timeline and re-executes it like any other. Data assets take a range of one market's
consecutive windows per run (their backfill policy), so a backfill pays run start-up once per range.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, Definitions

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import partition_key
from rl_lifecycle.orchestration.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    JobSubsetSelector,
    WorkspaceFileTarget,
    WorkspaceProcessContext,
)
from rl_lifecycle.orchestration.instance import REPO_ROOT
from rl_lifecycle.orchestration.partitions import partitions_of_run
from rl_lifecycle.orchestration.run_launcher import in_process_tags

LOCATION_NAME = "rl_lifecycle"  # workspace.yaml
POLL_SECONDS = 0.2


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


@dataclass(frozen=True)
class PlannedRun:
    """One run of a job for one partition or a range of one market's consecutive windows: the selected
    assets with their checks, or (no assets) the selected checks alone."""

    job_name: str
    asset_names: tuple[str, ...]
    partition_keys: tuple[str, ...]
    checks: tuple[tuple[str, str], ...] = ()  # (asset, check) run on their own, when no asset is selected

    def check_keys(self) -> frozenset[AssetCheckKey] | None:
        return frozenset(AssetCheckKey(AssetKey(asset), name) for asset, name in self.checks) if self.checks else None

    def tags(self, defs: Definitions) -> dict[str, str]:
        """The tags a UI launch of this run would carry: a range's bounds, or the partition's tags
        from the job (partition keys and the job's own per-partition tags)."""
        if len(self.partition_keys) > 1:
            return {ASSET_PARTITION_RANGE_START_TAG: self.partition_keys[0],
                    ASSET_PARTITION_RANGE_END_TAG: self.partition_keys[-1]}
        (key,) = self.partition_keys
        config = defs.resolve_job_def(self.job_name).partitioned_config
        return dict(config.get_tags_for_partition_key(key, job_name=self.job_name))


def plan_runs(
    job_name: str, asset_names: Sequence[str], partition_keys: Sequence[str], windows_per_run: int,
    checks: Sequence[tuple[str, str]] = (),
) -> list[list[PlannedRun]]:
    """Runs per market, in window order: each market's list runs in sequence (a range's warmup comes
    from the range before it), markets side by side. Ranges never skip a window."""
    lanes: dict[str, list[list[str]]] = {}
    previous_end: dict[str, int] = {}
    for _, market, window in partitions_of_run(sorted(set(partition_keys))):
        chunks = lanes.setdefault(market.key, [])
        if not chunks or previous_end[market.key] != window.start or len(chunks[-1]) >= windows_per_run:
            chunks.append([])
        chunks[-1].append(partition_key(market, window))
        previous_end[market.key] = window.end
    names = tuple(asset_names)
    return [[PlannedRun(job_name, names, tuple(chunk), tuple(checks)) for chunk in chunks] for chunks in lanes.values()]


def windows_per_run(defs: Definitions, asset_names: Sequence[str]) -> int:
    """The largest range every selected asset's backfill policy accepts in one run."""
    limits = [a.backfill_policy.max_partitions_per_run or 1 for a in defs.assets
              if a.key.to_user_string() in asset_names and a.backfill_policy is not None]
    return min(limits, default=1)


def asset_selection(defs: Definitions, asset_names: Sequence[str]) -> list[str]:
    """The selected assets in dependency order; none, unknown or repeated names are refused by name."""
    known = [a.key.to_user_string() for a in defs.assets]
    if not asset_names:
        raise UserInputError(f"give at least one asset; known assets: {', '.join(known)}")
    unknown = [n for n in asset_names if n not in known]
    if unknown:
        raise UserInputError(f"unknown asset(s) {', '.join(unknown)}; known assets: {', '.join(known)}")
    return [n for n in known if n in set(asset_names)]


def asset_jobs(defs: Definitions) -> list[str]:
    """The jobs that materialize assets, in dependency order (the order `Definitions` lists them)."""
    return [job.name for job in defs.jobs if defs.resolve_job_def(job.name).asset_layer.executable_asset_keys]


def jobs_for(defs: Definitions, asset_names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(job, its selected assets) in dependency order; unknown assets are refused by name."""
    return _per_job(defs, asset_selection(defs, asset_names), lambda name: name)


def _per_job(defs: Definitions, selection: Sequence[str], asset_of: Callable[[str], str]) -> list[tuple[str, list]]:
    """The selection split by the job holding each item's asset, jobs in dependency order."""
    phases = []
    for job_name in asset_jobs(defs):
        in_job = {k.to_user_string() for k in defs.resolve_job_def(job_name).asset_layer.executable_asset_keys}
        selected = [item for item in selection if asset_of(item) in in_job]
        if selected:
            phases.append((job_name, selected))
    return phases


def checks_for(defs: Definitions, check_names: Sequence[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(job, its selected (asset, check) pairs) in dependency order; unknown checks are refused by name."""
    asset_of = {key.name: key.asset_key.to_user_string() for c in defs.asset_checks for key in c.check_keys}
    unknown = [n for n in check_names if n not in asset_of]
    if unknown:
        raise UserInputError(f"unknown check(s) {', '.join(unknown)}; known checks: {', '.join(sorted(asset_of))}")
    return [(job, [(asset_of[n], n) for n in names]) for job, names in _per_job(defs, check_names, asset_of.__getitem__)]


def materialize(
    instance: DagsterInstance,
    defs: Definitions,
    asset_names: Sequence[str],
    partition_keys: Sequence[str],
    on_done: Callable[[PartitionRun], None] | None = None,
    run_config: dict | None = None,
    log_level: str = "WARNING",
    workers: int = 2,
    in_process: bool = False,
) -> list[PartitionRun]:
    """Materialize the selected assets (and their checks) for these partitions through the code
    location: up to `workers` runs at once, one market's runs in window order, each job's runs after
    the previous job's (a partition that failed there is not run further). `in_process` runs in this
    interpreter instead (for tests that inject faults into this process). One result per job and
    partition, in the order of `partition_keys`."""
    phases = [(job, names, []) for job, names in jobs_for(defs, asset_names)]
    return _run_phases(instance, defs, phases, partition_keys, on_done, run_config, log_level, workers, in_process)


def run_checks(
    instance: DagsterInstance,
    defs: Definitions,
    check_names: Sequence[str],
    partition_keys: Sequence[str],
    on_done: Callable[[PartitionRun], None] | None = None,
    log_level: str = "WARNING",
    workers: int = 2,
    in_process: bool = False,
) -> list[PartitionRun]:
    """Evaluate asset checks on their own against what is stored (as the UI's "Execute check" does),
    e.g. after stored data changed: the same runs and results as `materialize`, without the assets."""
    phases = [(job, [], pairs) for job, pairs in checks_for(defs, check_names)]
    return _run_phases(instance, defs, phases, partition_keys, on_done, None, log_level, workers, in_process)


def _run_phases(instance, defs, phases, partition_keys, on_done, run_config, log_level, workers, in_process) -> list[PartitionRun]:
    # the run's console log goes to this terminal: only what needs attention
    run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
    results: list[PartitionRun] = []

    def finished(run_id: str, planned: PlannedRun) -> None:
        for run in partition_results(instance, run_id, planned):
            results.append(run)
            if on_done:
                on_done(run)

    keys = list(partition_keys)
    with _sigterm_interrupts(), nullcontext() if in_process else code_location(instance) as launcher:
        for job_name, names, checks in phases:
            checked_assets = names or [asset for asset, _ in checks]
            lanes = plan_runs(job_name, names, keys, windows_per_run(defs, checked_assets), checks)
            job_config = _config_for(run_config, names)
            if launcher is None:
                for planned in (p for lane in lanes for p in lane):
                    finished(_execute_in_process(instance, defs, planned, job_config), planned)
            else:
                _run_lanes(instance, defs, launcher, lanes, job_config, max(1, workers), finished)
            failed = {r.partition_key for r in results if not r.ok}
            keys = [k for k in keys if k not in failed]
    order = {key: i for i, key in enumerate(partition_keys)}
    return sorted(results, key=lambda r: order.get(r.partition_key, len(order)))  # stable: job order kept


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside, SIGTERM interrupts as Ctrl-C does (as Dagster's own processes map it): the runs going are
    terminated and the code server is shut down, instead of this process vanishing (Python's default)
    and leaving them orphaned. Only in the main thread, and only where nobody installed a handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _config_for(run_config: dict, asset_names: Sequence[str]) -> dict:
    """The run config with only the `ops` entries of this job's assets (a job refuses unknown ops)."""
    ops = {name: value for name, value in run_config.get("ops", {}).items() if name in asset_names}
    return {**{k: v for k, v in run_config.items() if k != "ops"}, **({"ops": ops} if ops else {})}


# -- launching through the code location ---------------------------------------------------------
@dataclass
class CodeLocationLauncher:
    context: object  # WorkspaceRequestContext
    location: object  # CodeLocation
    repository_name: str

    def launch(self, instance: DagsterInstance, planned: PlannedRun, run_config: dict, tags: dict[str, str]) -> str:
        selector = JobSubsetSelector(
            location_name=self.location.name, repository_name=self.repository_name, job_name=planned.job_name,
            op_selection=None, asset_selection=[AssetKey(n) for n in planned.asset_names],
            asset_check_selection=planned.check_keys(),
        )
        remote_job = self.location.get_job(selector)
        plan = self.location.get_execution_plan(
            remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
        ).execution_plan_snapshot
        run = instance.create_run(
            job_name=planned.job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute, op_selection=None, status=None,
            root_run_id=None, parent_run_id=None, tags={**remote_job.tags, **tags},
            job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=frozenset(AssetKey(n) for n in planned.asset_names),
            asset_check_selection=planned.check_keys(),
            asset_graph=self.location.get_repository(self.repository_name).asset_graph,
        )
        # Launched directly (not queued): the CLI and `make run` work without the daemon.
        instance.launch_run(run.run_id, self.context)
        return run.run_id


@contextmanager
def code_location(instance: DagsterInstance) -> Iterator[CodeLocationLauncher]:
    """The workspace's code location, served by a code server process as for the webserver."""
    target = WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
    # The code server and the run workers it starts write their own console logs; they go to a file
    # under DAGSTER_HOME, this terminal shows one line per partition (and the errors) instead.
    with _children_output_to(_run_log_path(instance)):
        process_context = WorkspaceProcessContext(instance, target, code_server_log_level="WARNING")
    with process_context:
        context = process_context.create_request_context()
        location = context.get_code_location(LOCATION_NAME)
        (repository_name,) = location.get_repositories()
        yield CodeLocationLauncher(context, location, repository_name)


def _run_log_path(instance: DagsterInstance) -> Path | None:
    root = instance.root_directory
    return Path(root) / "logs" / "runs.log" if root else None


@contextmanager
def _children_output_to(path: Path | None) -> Iterator[None]:
    """Processes started inside inherit stdout and stderr pointing at `path` (appended to)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _run_lanes(instance, defs: Definitions, launcher: CodeLocationLauncher, lanes: list[list[PlannedRun]], run_config: dict,
               workers: int, finished: Callable[[str, PlannedRun], None]) -> None:
    """Launch each lane's runs in order, at most one per lane and `workers` in all at a time."""
    queues = [list(lane) for lane in lanes]
    active: dict[str, tuple[int, PlannedRun]] = {}  # run id -> (lane, run)
    try:
        while any(queues) or active:
            busy = {lane for lane, _ in active.values()}
            for lane, queue in enumerate(queues):
                if queue and lane not in busy and len(active) < workers:
                    planned = queue.pop(0)
                    active[launcher.launch(instance, planned, run_config, planned.tags(defs))] = (lane, planned)
            time.sleep(POLL_SECONDS)
            for run_id in [r for r in active if instance.get_run_by_id(r).is_finished]:
                _, planned = active.pop(run_id)
                finished(run_id, planned)
    except BaseException:
        for run_id in active:  # interrupted: don't leave runs going that nobody waits for
            instance.run_launcher.terminate(run_id)
        raise


def _execute_in_process(instance: DagsterInstance, defs: Definitions, planned: PlannedRun, run_config: dict) -> str:
    job = defs.resolve_job_def(planned.job_name)
    if planned.checks:
        job = job.get_subset(asset_selection=set(), asset_check_selection=planned.check_keys())
    result = job.execute_in_process(
        instance=instance, asset_selection=[AssetKey(n) for n in planned.asset_names] or None,
        # this process is the run's worker: run monitoring checks it (run_launcher.py)
        tags={**planned.tags(defs), **in_process_tags()}, run_config=run_config, raise_on_error=False,
    )
    return result.run_id


# -- what a run did, per partition --------------------------------------------------------------
def partition_results(instance: DagsterInstance, run_id: str, planned: PlannedRun) -> list[PartitionRun]:
    """Per partition of the run: its materializations and their metadata, its check evaluations (one
    per window of a range run too; one without a partition counts for every window), and the run's errors."""
    from dagster import DagsterRunStatus

    materialized: dict[str, dict[str, dict]] = {key: {} for key in planned.partition_keys}
    checks: dict[str | None, list[CheckOutcome]] = {}
    errors: list[str] = []
    run_failure: str | None = None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            m = event.event_specific_data.materialization
            materialized.setdefault(str(m.partition), {})[m.asset_key.to_user_string()] = {
                k: v.value for k, v in m.metadata.items()
            }
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            e = event.event_specific_data
            checks.setdefault(e.partition, []).append(CheckOutcome(
                e.asset_key.to_user_string(), e.check_name, e.passed, bool(e.blocking), e.description,
            ))
        elif event.event_type == DagsterEventType.STEP_FAILURE and event.event_specific_data.error:
            errors.append(f"{event.step_key}: {_root_message(event.event_specific_data.error)}")
        elif event.event_type == DagsterEventType.RUN_FAILURE and getattr(event.event_specific_data, "error", None):
            run_failure = _root_message(event.event_specific_data.error)
    if run_failure and not errors:
        errors.append(run_failure)
    success = instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
    return [
        PartitionRun(
            partition_key=key, run_id=run_id, success=success, materialized=sorted(materialized[key]),
            checks=checks.get(key, []) + checks.get(None, []), errors=errors, metadata=materialized[key],
        )
        for key in planned.partition_keys
    ]


def root_cause(error):
    """The innermost cause of a step failure's error info: what the user's code raised, not Dagster's wrapper."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error


def _root_message(error) -> str:
    return root_cause(error).message.strip()
