"""MLflow on the project's PostgreSQL server: runs, metrics, artifacts and one registered model per market.

Tracking and registry share a database of their own on the same server as the feature store
(`<database>_mlflow`, created on demand): MLflow keeps an `alembic_version` table like Dagster,
so it never shares a database. Artifacts live under `$RL_HOME/mlflow` unless RL_MLFLOW_ARTIFACTS
names an object store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from rl_lifecycle.db.connection import dagster_storage_url, plain_postgres_url
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market

CHALLENGER = "challenger"
CHAMPION = "champion"
# Model-version tags every challenger carries (the lineage the `model_lineage` check verifies).
LINEAGE_TAGS = (
    "market", "dataset_hash", "fingerprint", "feature_set", "model_spec_hash", "model_spec_name", "algorithm",
    "train_start", "train_end", "weights_hash", "actions_sha256", "train_rows",
    "fill",  # the fill convention the training dataset was built under (`trading.FILLS`)
)


MLFLOW_INIT_LOCK = 7_301_904_512  # pg advisory lock: one process creates MLflow's database and schema


@cache
def mlflow_database_url(database_url: str) -> str:
    """`postgresql+psycopg2://…/<db>_mlflow` on the server of `database_url`, the database and MLflow's
    tables created if missing. Under a server-wide advisory lock: two first runs at once (e.g. two
    markets training side by side on a fresh deployment) would otherwise both create the database,
    or both run MLflow's migrations, and one would fail on a duplicate key."""
    parts = urlsplit(plain_postgres_url(database_url))
    name = f"{parts.path.lstrip('/') or 'postgres'}_mlflow"
    url = dagster_storage_url(urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment)))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MLFLOW_INIT_LOCK,))
        try:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            _create_mlflow_tables(url)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MLFLOW_INIT_LOCK,))
    return url


def _create_mlflow_tables(url: str) -> None:
    """MLflow creates (or migrates) its tracking and registry tables when its stores first open."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables" per process
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)


HOST_TAG, PID_TAG = "rl_lifecycle.host", "rl_lifecycle.pid"  # the process that started a run (runs it)
SERVED_SCHEMES = ("http://", "https://")  # a tracking server's URI, not a database
SERVED_ARTIFACTS = "mlflow-artifacts:"  # artifacts stored and served by the tracking server (`--serve-artifacts`)
WORKER_TAG = "rl_lifecycle.worker"  # its Celery node (`rl-lifecycle worker --name`), when it ran on one


def _process_alive(pid: int, started_at: float) -> bool:
    """Whether `pid` is a live process that existed when the run started (not a later one under a reused pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started_at + 2.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def mlflow_server_command(registry: ModelRegistry, host: str, port: int, workers: int = 1,
                          serve_artifacts: bool = False) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of `mlflow server` on the registry's store: the store URI, which holds the
    database password, goes through the environment (`MLFLOW_BACKEND_STORE_URI`, read by `mlflow
    server`, passed to its workers in their environment too), never the arguments `ps` shows to all.
    Start-up is paid per process, each importing MLflow and opening the store: MLflow's defaults start 4
    uvicorn workers plus a job-execution runner (for MLflow's GenAI jobs, unused here), which on two cores
    took 42-60 s to answer; one worker and no job runner (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`
    unless the environment sets it) answer in about a third of that. One person's UI needs one worker.

    `serve_artifacts`: the tracking server of a deployment whose processes share no disk (issue 19): it
    stores artifacts under the registry's artifact root and serves them (`mlflow-artifacts:/`), so clients
    pointed at it (`RL_MLFLOW_TRACKING_URI`) upload and download through it."""
    import sys

    mlflow = str(Path(sys.executable).with_name("mlflow"))
    if registry.tracking_uri.startswith(SERVED_SCHEMES):
        raise ValueError(f"an MLflow server needs a database store, not another server ({registry.tracking_uri})")
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": registry.tracking_uri,
           "MLFLOW_DEFAULT_ARTIFACT_ROOT": SERVED_ARTIFACTS + "/" if serve_artifacts else registry.artifacts_uri}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    argv = [mlflow, "server", "--host", host, "--port", str(port), "--workers", str(workers)]
    if serve_artifacts:
        argv += ["--serve-artifacts", "--artifacts-destination", registry.artifacts_uri]
    return argv, env


def registered_model_name(market: Market) -> str:
    return f"rl-{market.key}"


@dataclass(frozen=True)
class ModelVersionInfo:
    market: str
    version: int
    aliases: tuple[str, ...]
    run_id: str
    source: str
    tags: dict[str, str]
    created_ms: int

    @property
    def created(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_ms / 1000))

    def summary(self) -> dict:
        """The fields `models list` prints."""
        return {
            "version": self.version,
            "aliases": list(self.aliases),
            "weights_hash": self.tags.get("weights_hash"),
            "dataset_hash": self.tags.get("dataset_hash"),
            "feature_set": self.tags.get("feature_set"),
            "fingerprint": self.tags.get("fingerprint"),
            "created": self.created,
        }


class ModelRegistry:
    """A thin, typed layer over `MlflowClient` for what the lifecycle needs."""

    def __init__(self, tracking_uri: str, artifacts_uri: str, ui_url: str | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download on stderr
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # after import: mlflow sets up its logger then

        self.tracking_uri, self.artifacts_uri, self.ui_url = tracking_uri, artifacts_uri.rstrip("/"), ui_url
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- runs ---------------------------------------------------------------------------------------
    def experiment_id(self, market: Market) -> str:
        name = registered_model_name(market)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=f"{self.artifacts_uri}/{market.key}")
        except Exception:  # created concurrently
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, market: Market, run_name: str, tags: dict[str, str]) -> str:
        """A RUNNING run tagged with the host and pid of this process; first, runs left RUNNING by a
        training process that is gone (killed) are marked FAILED (`fail_orphaned_runs`)."""
        self.fail_orphaned_runs()
        from rl_lifecycle.cluster.placement import this_process

        ran_on = this_process()
        owner = {HOST_TAG: ran_on["host"], PID_TAG: str(ran_on["pid"])}
        if ran_on["worker"]:
            owner[WORKER_TAG] = ran_on["worker"]
        run = self.client.create_run(self.experiment_id(market), run_name=run_name, tags={**tags, **owner})
        return run.info.run_id

    def fail_orphaned_runs(self) -> list[str]:
        """Mark FAILED every RUNNING run of this host whose process (its `rl_lifecycle.pid` tag) is gone:
        a training killed with -9 never ends its run itself. Returns their run ids."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if not experiments:
            return []
        host, failed = socket.gethostname(), []
        for run in self.client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'",
                                           max_results=1000):
            tags = run.data.tags
            pid = tags.get(PID_TAG, "")
            if tags.get(HOST_TAG) != host or not pid.isdigit() or _process_alive(int(pid), run.info.start_time / 1000):
                continue
            self.client.set_tag(run.info.run_id, "rl_lifecycle.failed_because",
                                f"its process (pid {pid} on {host}) ended without ending the run (killed)")
            self.client.set_terminated(run.info.run_id, "FAILED")
            failed.append(run.info.run_id)
        return failed

    def metric_logger(self, run_id: str) -> MetricBuffer:
        return MetricBuffer(self.client, run_id)

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, dict | list) else str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_artifacts(self, run_id: str, directory: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(directory), artifact_path)

    def log_walkforward(self, run_id: str, aggregates: dict, equity_png: bytes | None = None,
                        paths_png: bytes | None = None) -> None:
        """A challenger's walk-forward aggregates as `walkforward/...` metrics on its training run (nested dicts
        flattened, non-numbers and NaN left out), its equity curves as `plots/walkforward_equity.png` and a
        CPCV report's paths as `plots/cpcv_paths.png`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        flat = {}
        for key, value in aggregates.items():
            if isinstance(value, dict):
                flat.update({f"walkforward/{key}_{k}": v for k, v in value.items()})
            else:
                flat[f"walkforward/{key}"] = value
        metrics = [Metric(k, float(v), now, 0) for k, v in flat.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and v == v]
        self.client.log_batch(run_id, metrics=metrics)
        for name, png in (("walkforward_equity.png", equity_png), ("cpcv_paths.png", paths_png)):
            if png is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / name
                    path.write_bytes(png)
                    self.client.log_artifact(run_id, str(path), "plots")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def run_url(self, run_id: str) -> str | None:
        if not self.ui_url:
            return None
        run = self.client.get_run(run_id)
        return f"{self.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    # -- registry -----------------------------------------------------------------------------------
    def register(self, market: Market, run_id: str, artifact_path: str, tags: dict[str, str], *,
                 policy_dir: Path | None = None, example_vectors=None) -> ModelVersionInfo:
        """A new version of the market's model. With `policy_dir` (a policy as `Policy.save` wrote it, and
        logged to the run as `artifact_path`) the version is a pyfunc model of those files logged to the run
        (`rl_lifecycle.models.pyfunc`: loadable with `mlflow.pyfunc.load_model`, servable with `mlflow models
        serve`; `example_vectors` give its input example); without, it is the run's artifact directory
        `artifact_path` as it stands. It gets no alias: `challenger` is given by
        `rl_lifecycle.models.service.sync_challenger_alias` once its blocking checks passed."""
        from mlflow.exceptions import MlflowException

        name = registered_model_name(market)
        try:
            self.client.create_registered_model(name, description=f"RL trading policies for {market.key}")
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        if policy_dir is None:
            source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
            created = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
            return self.version(market, int(created.version))
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        from rl_lifecycle.models.pyfunc import log_policy_model

        # The fluent `log_model` (and the registry store, to resolve `models:/<model id>`) read the
        # process-wide tracking URI and active run: both are this registry's for the call, restored after,
        # and the run is left RUNNING for its owner to end. (`set_tracking_uri` also sets and then unsets the
        # environment's MLFLOW_TRACKING_URI: a value the process had is put back.)
        environment_uri = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(self.tracking_uri):
                mlflow.start_run(run_id=run_id)
                try:
                    logged = log_policy_model(policy_dir, example_vectors, {"market": market.key})
                finally:
                    mlflow.end_run("RUNNING")
                created = self.client.create_model_version(name, source=logged.model_uri, run_id=run_id, tags=tags,
                                                           model_id=logged.model_id)
        finally:
            if environment_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = environment_uri
        return self.version(market, int(created.version))

    def set_version_tag(self, market: Market, version: int, key: str, value: str) -> None:
        self.client.set_model_version_tag(registered_model_name(market), str(version), key, value)

    def aliases(self, market: Market) -> dict[str, int] | None:
        """Alias -> version of the market's model; None when no version was ever registered."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(registered_model_name(market))
        except MlflowException:
            return None
        return {alias: int(version) for alias, version in (model.aliases or {}).items()}

    def set_alias(self, market: Market, alias: str, version: int | None) -> None:
        """Point `alias` at `version`; None removes it."""
        name = registered_model_name(market)
        if version is None:
            self.client.delete_registered_model_alias(name, alias)
        else:
            self.client.set_registered_model_alias(name, alias, str(version))

    def version(self, market: Market, version: int | str) -> ModelVersionInfo:
        """A version by number, or by alias (`challenger`, `champion`)."""
        from mlflow.exceptions import MlflowException

        name = registered_model_name(market)
        try:
            if isinstance(version, str) and not version.isdigit():
                found = self.client.get_model_version_by_alias(name, version)
            else:
                found = self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise UserInputError(f"{market.key} has no model version {version!r}") from exc
        return _info(market, found)

    def versions(self, market: Market) -> list[ModelVersionInfo]:
        """Every version of the market's model, newest first."""
        from mlflow.exceptions import MlflowException

        name = registered_model_name(market)
        try:
            aliases = self.client.get_registered_model(name).aliases or {}
        except MlflowException:
            return []  # no version was ever registered for this market
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(int(version), []).append(alias)
        found = self.client.search_model_versions(f"name = '{name}'")
        infos = [_info(market, v, by_version.get(int(v.version), [])) for v in found]
        return sorted(infos, key=lambda v: v.version, reverse=True)

    def download(self, info: ModelVersionInfo, target: Path) -> Path:
        """The version's policy directory (`model.zip`, `policy.json`), copied to `target`: the policy artifact
        of its pyfunc model, or, for a version registered before versions were pyfunc models, its source."""
        from mlflow.artifacts import download_artifacts

        target.mkdir(parents=True, exist_ok=True)
        if info.source.startswith("models:/"):  # models:/<logged model id>
            model = self.client.get_logged_model(info.source.removeprefix("models:/").strip("/"))
            from rl_lifecycle.models.pyfunc import POLICY_KEY

            uri = f"{model.artifact_location.rstrip('/')}/artifacts/{POLICY_KEY}"
        else:
            uri = info.source
        return Path(download_artifacts(artifact_uri=uri, dst_path=str(target), tracking_uri=self.tracking_uri))

    def model_version_url(self, info: ModelVersionInfo) -> str | None:
        if not self.ui_url:
            return None
        return f"{self.ui_url}/#/models/{registered_model_name(Market.parse(info.market))}/versions/{info.version}"


def _info(market: Market, version, aliases: list[str] | None = None) -> ModelVersionInfo:
    return ModelVersionInfo(
        market=market.key,
        version=int(version.version),
        aliases=tuple(sorted(set(aliases or []) | set(getattr(version, "aliases", None) or []))),
        run_id=version.run_id,
        source=version.source,
        tags=dict(version.tags or {}),
        created_ms=int(version.creation_timestamp),
    )


class MetricBuffer:
    """Per-step metrics sent to MLflow in batches: one round trip per few hundred points, not per point."""

    def __init__(self, client, run_id: str, batch: int = 500):
        self._client, self._run_id, self._batch = client, run_id, batch
        self._pending: list = []

    def __call__(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step)) for k, v in values.items() if v == v]  # NaN dropped
        if len(self._pending) >= self._batch:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._pending), 1000):
            self._client.log_batch(self._run_id, metrics=self._pending[i : i + 1000])
        self._pending = []


def open_registry(database_url: str, *, tracking_uri: str | None = None, artifacts_uri: str | None = None,
                  direct: bool = False) -> ModelRegistry:
    """The registry for the database in use, with the settings' artifact root and UI link: through the tracking
    server of RL_MLFLOW_TRACKING_URI when set (artifacts through it, unless RL_MLFLOW_ARTIFACTS names a store
    every process reaches), else on the `<db>_mlflow` database directly. `direct`: the database whatever the
    settings say (for the tracking server itself)."""
    from rl_lifecycle.settings import load_settings

    settings = load_settings()
    tracking = tracking_uri or (None if direct else settings.mlflow_tracking_uri) or mlflow_database_url(database_url)
    served = tracking.startswith(SERVED_SCHEMES)
    return ModelRegistry(
        tracking,
        artifacts_uri or settings.mlflow_artifacts or (SERVED_ARTIFACTS if served else settings.mlflow_artifacts_uri),
        settings.mlflow_ui_url,
    )
