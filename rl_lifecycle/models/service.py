"""Training use cases: train a challenger on a partition's dataset, register it, and verify it.

The dataset is the one `training_dataset` built for the partition (its Parquet file, whose hash
the dataset gates verified); the model is registered in MLflow with its lineage and the training
feature statistics; the two model gates re-derive that lineage and replay the recorded actions.

The gates record their outcome on the version they checked (`rl_lifecycle.models.checks`): that,
not the run that trained it, decides whether a version may hold `challenger` or be promoted.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from rl_lifecycle.datasets.builder import DatasetContent, dataset_hash, read_dataset
from rl_lifecycle.datasets.service import DatasetVersion, latest_version, on_this_machine
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import FeatureSetSpec, load_feature_set
from rl_lifecycle.features.store import load_registered_feature_set
from rl_lifecycle.markets.calendars import DEFAULT_CALENDAR, get_calendar
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.markets.table import market_fill, registered_calendar
from rl_lifecycle.models.checks import PARTITION_TAG, ModelCheck, record_check
from rl_lifecycle.models.env import EpisodeSummary, episode_summary
from rl_lifecycle.models.policy import Policy, actions_digest, load_registered_policy
from rl_lifecycle.models.spec import ModelSpec, check_dataset_compatible, feature_columns
from rl_lifecycle.models.statistics import FeatureStatistics
from rl_lifecycle.models.tracking import ModelRegistry, ModelVersionInfo
from rl_lifecycle.models.trainer import train_policy, weights_hash
from rl_lifecycle.plots import line_png, moving_average
from rl_lifecycle.trading import FILL_CLOSE, FILL_NEXT_OPEN
from rl_lifecycle.windows import Window, iso

POLICY_ARTIFACTS = "policy"
STATS_ARTIFACTS = "training_stats"


@dataclass(frozen=True)
class TrainingData:
    market: Market
    window: Window
    dataset: DatasetVersion
    features: FeatureSetSpec
    content: DatasetContent
    # bool [n-1]: no bar the market's calendar expects is missing between row i and row i+1 (a night,
    # weekend or holiday close is no break; a missing bar while the market is open is)
    continues: np.ndarray
    calendar: str = DEFAULT_CALENDAR  # the market's trading calendar (`markets.calendars` name)
    fill: str = FILL_CLOSE  # the fill convention the dataset was built under (= the market's: refused otherwise)
    # float64 [n]: each row's open, from the stored candles, under `next_open` (the env's and backtest's fill
    # price); None under `close`
    open: np.ndarray | None = None


def check_dataset_fill(dataset_fill: str, market_fill_now: str, market: Market, dataset_hash_: str) -> None:
    """A dataset is used only under the fill it was built under: a model trained with close-fill rewards is
    never evaluated, nor trusted, as if it filled at the next open (or back)."""
    if dataset_fill != market_fill_now:
        raise UserInputError(
            f"fill: the dataset {dataset_hash_[:12]} of {market.key} was built under fill {dataset_fill!r}, but the "
            f"market fills at {market_fill_now!r} now: materialize `training_dataset` again (its models and "
            f"evaluations follow the new fill), or `rl-lifecycle market set-fill {market.key} {dataset_fill}`")


def training_data(conn: psycopg.Connection, market: Market, window: Window) -> TrainingData:
    """The partition's latest training dataset, as the arrays it was hashed over; refused when it was built under
    another fill convention than the market's (`check_dataset_fill`)."""
    version = latest_version(conn, market, window)
    if version is None:
        raise UserInputError(
            f"no training dataset for {partition_key(market, window)}: materialize `training_dataset` for it first"
        )
    features = load_registered_feature_set(conn, version.fingerprint)
    version = on_this_machine(conn, version, features)
    fill = version.spec.fill
    check_dataset_fill(fill, market_fill(conn, market), market, version.dataset_hash)
    content = read_dataset(version.storage_uri, version.spec, features.feature_names)
    calendar = get_calendar(registered_calendar(conn, market))
    opens = None
    if fill == FILL_NEXT_OPEN:
        from rl_lifecycle.candles.store import load_candles

        candles = load_candles(conn, market, int(content.ts[0]), int(content.ts[-1]) + market.interval_us)
        at = np.minimum(np.searchsorted(candles.ts, content.ts), max(len(candles) - 1, 0))
        if not len(candles) or not np.array_equal(candles.ts[at], content.ts):
            raise UserInputError(f"the dataset {version.dataset_hash[:12]} of {market.key} has rows without a stored "
                                 f"candle: their opens (fill next_open) are unknown")
        opens = np.asarray(candles.open, dtype=np.float64)[at]
    return TrainingData(market, window, version, features, content,
                        calendar.continues(content.ts, market.interval_us), calendar.name, fill, opens)


def check_spec_matches_dataset(spec: ModelSpec, data: TrainingData) -> None:
    """A spec trains only on the feature set it names, computed the way it is computed now."""
    check_dataset_compatible(
        spec, data.features.name, data.dataset.fingerprint,
        lambda name: load_feature_set(name, anchor=data.features.anchor).fingerprint,
        dataset=f"the dataset {data.dataset.dataset_hash[:12]}",
    )
    feature_columns(spec, data.features.feature_names)  # the features it observes are the set's


@dataclass(frozen=True)
class TrainedChallenger:
    version: ModelVersionInfo
    run_id: str
    weights_hash: str
    actions_sha256: str
    timesteps: int
    fps: float
    wall_seconds: float
    curve_png: bytes
    statistics: FeatureStatistics
    episodes: EpisodeSummary


def train_challenger(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market,
    window: Window,
    spec: ModelSpec,
    *,
    progress: Callable[[int, int], None] | None = None,
    run_tags: dict[str, str] | None = None,
) -> TrainedChallenger:
    """Train `spec` on the partition's dataset and register it (a version without alias: it becomes the
    `challenger` once its blocking checks have passed, `check_lineage` and `check_reproducible`)."""
    data = training_data(conn, market, window)
    check_spec_matches_dataset(spec, data)
    content = data.content
    episodes = episode_summary(content.ts, data.continues, market.interval_us)
    lineage = {
        "market": market.key,
        PARTITION_TAG: partition_key(market, window),
        "dataset_hash": data.dataset.dataset_hash,
        "fingerprint": data.dataset.fingerprint,
        "feature_set": data.features.name,
        "model_spec_hash": spec.spec_hash,
        "model_spec_name": spec.name,
        "algorithm": spec.algorithm,
        "train_start": iso(int(content.ts[0])),
        "train_end": iso(int(content.ts[-1])),
        "train_rows": str(len(content)),
        "fill": data.fill,
    }
    run_id = registry.start_run(market, f"{partition_key(market, window)} {spec.name}", {**lineage, **(run_tags or {})})
    try:
        registry.log_params(run_id, {**json.loads(spec.canonical_json()), "dataset_hash": data.dataset.dataset_hash,
                                     "training_episodes": episodes.episodes,
                                     "longest_episode_steps": episodes.longest_steps,
                                     "steps_across_closes": episodes.steps_across_closes})
        metrics = registry.metric_logger(run_id)
        trained = train_policy(content, data.continues, spec, progress=progress, log_metrics=metrics,
                               feature_names=data.features.feature_names)
        metrics.flush()
        policy = Policy(trained.model, spec, data.dataset.fingerprint, data.features.feature_names)
        actions = policy.rollout(content.values, fingerprint=data.dataset.fingerprint)
        statistics = FeatureStatistics.of(content.values, data.features.feature_names)
        curve = _curve_png(trained.curve, f"{market.key} {spec.name}: episode reward")
        with tempfile.TemporaryDirectory(prefix="rl-train-") as tmp:
            root = Path(tmp)
            policy.save(root / POLICY_ARTIFACTS)
            statistics.save(root / STATS_ARTIFACTS)
            (root / "plots").mkdir()
            (root / "plots" / "training_curve.png").write_bytes(curve)
            for sub in (POLICY_ARTIFACTS, STATS_ARTIFACTS, "plots"):
                registry.log_artifacts(run_id, root / sub, sub)
            tags = {**lineage, "weights_hash": trained.weights_hash, "actions_sha256": actions_digest(actions)}
            # the version is a pyfunc model of the same policy files (`mlflow.pyfunc.load_model` can load it)
            info = registry.register(market, run_id, POLICY_ARTIFACTS, tags, policy_dir=root / POLICY_ARTIFACTS,
                                     example_vectors=content.values[:3])
        registry.end_run(run_id)
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    return TrainedChallenger(info, run_id, trained.weights_hash, tags["actions_sha256"], trained.timesteps, trained.fps,
                             trained.wall_seconds, curve, statistics, episodes)


def _curve_png(curve: dict[str, list[float]], title: str) -> bytes:
    rewards = np.asarray(curve.get("episode_reward", []), dtype=np.float64)
    steps = np.asarray(curve.get("timesteps", np.arange(len(rewards))), dtype=np.float64)
    if len(rewards) == 0:
        rewards, steps = np.zeros(1), np.zeros(1)
    series = {"episode reward": rewards}
    width = max(1, len(rewards) // 20)
    if width > 1:
        series = {"episode reward": rewards[width - 1 :], f"moving average ({width})": moving_average(rewards, width)}
        steps = steps[width - 1 :]
    return line_png(steps, series, title)


# -- gates -----------------------------------------------------------------------------------------
def partition_version(registry: ModelRegistry, market: Market, window: Window) -> ModelVersionInfo | None:
    """The newest version trained for this partition."""
    key = partition_key(market, window)
    return next((v for v in registry.versions(market) if v.tags.get(PARTITION_TAG) == key), None)


def check_lineage(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window) -> ModelCheck:
    """The version's tags name the dataset and fingerprint it was trained from, and its artifacts agree.
    The outcome is recorded on the version (`record_check`)."""
    return record_check(conn, registry, market, _lineage(conn, registry, market, window), "model_lineage")


def _lineage(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window) -> ModelCheck:
    info = partition_version(registry, market, window)
    if info is None:
        return ModelCheck(False, f"no model version trained for {partition_key(market, window)}", [])
    data = training_data(conn, market, window)
    with tempfile.TemporaryDirectory(prefix="rl-lineage-") as tmp:
        policy = Policy.load(registry.download(info, Path(tmp)), info.version)
    expected = {
        "dataset_hash": dataset_hash(data.dataset.fingerprint, data.dataset.spec, data.content),
        "fingerprint": data.dataset.fingerprint,
        "feature_set": data.features.name,
        "train_rows": str(len(data.content)),
        "train_start": iso(int(data.content.ts[0])),
        "train_end": iso(int(data.content.ts[-1])),
        "model_spec_hash": policy.spec.spec_hash,
        "weights_hash": weights_hash(policy.model),
    }
    details = [{"tag": k, "recorded": info.tags.get(k), "derived": v} for k, v in expected.items() if info.tags.get(k) != v]
    if policy.fingerprint != info.tags.get("fingerprint"):
        details.append({"tag": "artifact fingerprint", "recorded": info.tags.get("fingerprint"), "derived": policy.fingerprint})
    if details:
        names = ", ".join(d["tag"] for d in details)
        return ModelCheck(False, f"version {info.version} lineage differs from what it was trained on: {names}", details,
                          info.version)
    return ModelCheck(
        True,
        f"version {info.version}: dataset {expected['dataset_hash'][:12]} (re-hashed from its file), fingerprint "
        f"{expected['fingerprint'][:12]}, spec {expected['model_spec_hash'][:12]} and weights {expected['weights_hash'][:12]} "
        "all match the artifacts",
        [],
        info.version,
    )


def _replay_actions(tracking_uri: str, artifacts_uri: str, market_key: str, version: int, dataset_uri: str,
                    dataset_spec_json: str, feature_names: tuple[str, ...], fingerprint: str) -> str:
    from rl_lifecycle.datasets.spec import DatasetSpec

    registry = ModelRegistry(tracking_uri, artifacts_uri)
    policy = load_registered_policy(registry, Market.parse(market_key), version)
    content = read_dataset(dataset_uri, DatasetSpec.create(**json.loads(dataset_spec_json)), feature_names)
    return actions_digest(policy.rollout(content.values, fingerprint=fingerprint))


def check_reproducible(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window) -> ModelCheck:
    """The registered artifact, loaded in a fresh interpreter, takes byte-identical actions over the dataset.
    The outcome is recorded on the version (`record_check`)."""
    return record_check(conn, registry, market, _reproducible(conn, registry, market, window), "model_reproducible")


def _reproducible(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window) -> ModelCheck:
    info = partition_version(registry, market, window)
    if info is None:
        return ModelCheck(False, f"no model version trained for {partition_key(market, window)}", [])
    data = training_data(conn, market, window)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        replayed = pool.submit(
            _replay_actions, registry.tracking_uri, registry.artifacts_uri, market.key, info.version,
            data.dataset.storage_uri, data.dataset.spec.canonical_json(), data.features.feature_names,
            data.dataset.fingerprint,
        ).result()
    recorded = info.tags.get("actions_sha256")
    if replayed != recorded:
        return ModelCheck(False, f"version {info.version} replayed in a fresh process gives actions {replayed[:12]}, "
                                 f"recorded at training {str(recorded)[:12]}", [], info.version)
    return ModelCheck(True, f"version {info.version} loaded from the registry in a fresh process: the same actions over "
                            f"{len(data.content)} rows (sha256 {replayed[:12]})", [], info.version)


def registered_spec(registry: ModelRegistry, info: ModelVersionInfo) -> ModelSpec:
    """The model spec a registered version was trained with (from its artifacts)."""
    with tempfile.TemporaryDirectory(prefix="rl-spec-") as tmp:
        return Policy.load(registry.download(info, Path(tmp)), info.version).spec
