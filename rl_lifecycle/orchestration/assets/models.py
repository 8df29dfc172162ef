"""`challenger_model`: a policy trained on the partition's training dataset, registered in MLflow."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.orchestration.assets.presentation import markdown_table, png_markdown
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import (
    ONE_WINDOW_PER_RUN,
    market_window_partitions,
    parse_partition_key,
)
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource


class ChallengerModelConfig(Config):
    spec: str = Field(default="ppo_small", description="model spec: a name under rl_lifecycle/models/specs/ or a YAML path")


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=ONE_WINDOW_PER_RUN,
    deps=["training_dataset"],
    group_name="lifecycle",
    kinds={"pytorch", "mlflow"},
    description="A stable-baselines3 policy trained on this partition's training dataset, registered in MLflow "
    "(`rl-<market>`) with its lineage and training feature statistics; alias `challenger`.",
)
def challenger_model(
    context: AssetExecutionContext, config: ChallengerModelConfig, database: PostgresResource, mlflow: MlflowResource
) -> MaterializeResult:
    from rl_lifecycle.models.service import train_challenger  # torch and SB3: only in runs that train

    market, window = parse_partition_key(context.partition_key)
    spec = load_model_spec(config.spec)
    registry = mlflow.registry()
    last_logged = [0]

    def progress(done: int, total: int) -> None:
        if done - last_logged[0] >= max(1, total // 10) or done == total:
            last_logged[0] = done
            context.log.info(f"training {spec.name}: {done}/{total} timesteps")

    with user_errors_fail_the_step(), database.connect() as conn:
        trained = train_challenger(
            conn, registry, market, window, spec, progress=progress, run_tags={"dagster_run_id": context.run_id},
        )
    version = trained.version
    context.log.info(
        f"{market.key}: version {version.version} ({spec.name}), weights {trained.weights_hash[:12]}, "
        f"{trained.timesteps} timesteps at {trained.fps:.0f} fps"
    )
    links = {}
    if (run_url := registry.run_url(trained.run_id)) is not None:
        links["mlflow_run"] = MetadataValue.url(run_url)
    if (version_url := registry.model_version_url(version)) is not None:
        links["mlflow_model_version"] = MetadataValue.url(version_url)
    stats = trained.statistics.table()
    return MaterializeResult(
        metadata={
            "model_version": version.version,
            "registered_model": f"rl-{market.key}",
            "mlflow_run_id": trained.run_id,
            **links,
            "weights_hash": trained.weights_hash,
            "actions_sha256": trained.actions_sha256,
            "dataset_hash": version.tags["dataset_hash"],
            "fingerprint": version.tags["fingerprint"],
            "feature_set": version.tags["feature_set"],
            "model_spec": spec.name,
            "model_spec_hash": spec.spec_hash,
            "algorithm": spec.algorithm,
            "train_span": f"{version.tags['train_start']} .. {version.tags['train_end']}",
            "train_rows": int(version.tags["train_rows"]),
            "training_episodes": trained.episodes.episodes,
            "longest_episode_steps": trained.episodes.longest_steps,
            "steps_across_closes": trained.episodes.steps_across_closes,
            "episodes": trained.episodes.describe(),
            "timesteps": trained.timesteps,
            "fps": round(trained.fps, 1),
            "wall_seconds": round(trained.wall_seconds, 2),
            "training_curve": png_markdown(trained.curve_png, "training curve"),
            "training_feature_statistics": markdown_table(
                ["feature", "mean", "std", "p01", "p99"],
                [(s["feature"], f"{s['mean']:.4g}", f"{s['std']:.4g}", f"{s['p01']:.4g}", f"{s['p99']:.4g}") for s in stats],
            ),
        }
    )


def _result(check) -> AssetCheckResult:
    metadata = {"summary": check.summary}
    if check.details:
        metadata["differences"] = MetadataValue.json(check.details)
    return AssetCheckResult(passed=check.passed, description=check.summary, metadata=metadata)


@asset_check(asset=challenger_model, blocking=True, partitions_def=market_window_partitions,
             description="The model version's lineage tags equal the dataset (re-hashed from its file), the feature "
             "fingerprint, the spec and the weights derived from its artifacts.")
def model_lineage(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    from rl_lifecycle.models.service import check_lineage

    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        return _result(check_lineage(conn, mlflow.registry(), market, window))


@asset_check(asset=challenger_model, blocking=True, partitions_def=market_window_partitions,
             description="The registered artifact, loaded in a fresh process, takes byte-identical actions over the "
             "dataset to those recorded at training time.")
def model_reproducible(context: AssetCheckExecutionContext, database: PostgresResource, mlflow: MlflowResource) -> AssetCheckResult:
    from rl_lifecycle.models.service import check_reproducible

    market, window = parse_partition_key(context.partition_key)
    with database.connect() as conn:
        return _result(check_reproducible(conn, mlflow.registry(), market, window))


MODEL_CHECKS = [model_lineage, model_reproducible]
