"""`feature_ablation`: what the feature groups of the partition challenger's spec are worth (its own job,
`feature_ablation_job`; not on the promotion path). The work is `research.ablation.run_ablation`."""

from dagster import AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rl_lifecycle.orchestration.assets.evaluation import FoldReportConfig, fold_config
from rl_lifecycle.orchestration.assets.presentation import markdown_table, png_markdown, rounded
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import (
    ONE_WINDOW_PER_RUN,
    market_window_partitions,
    parse_partition_key,
)
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.switches import settings_in_force


class FeatureAblationConfig(FoldReportConfig):
    feature_groups: list[str] | None = Field(default=None, description="groups to ablate (default: every group "
                                             "of the feature set)")
    workers: int = Field(default=2, ge=1, le=64, description="fold backtests at once, a process each")
    permutation_block: int | None = Field(default=None, ge=1, description="bars per permuted block (default: "
                                          "n^(1/3) of each test range)")
    permutation_repeats: int = Field(default=5, ge=1, le=1000, description="seeded permutations per fold and group")
    permutation_seed: int = Field(default=0, ge=0, description="seed of the permutations")
    model_version: int | None = Field(default=None, ge=1, description="the market's model version whose spec is "
                                      "ablated (default: the partition's challenger); its MLflow run gets the table")


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=ONE_WINDOW_PER_RUN,
    deps=[AssetDep("challenger_model")],
    group_name="lifecycle",
    kinds={"nautilustrader", "postgres"},
    description="Feature-group ablation of the partition challenger's spec: the spec without each feature group, "
    "the full spec and a position-only baseline, each trained and backtested on the same walk-forward folds (each "
    "a stored evaluation, a trial of the market), and the permutation importance of each group for the full "
    "spec's fold policies. A table and a bar plot here and on the challenger's MLflow run.",
)
def feature_ablation(context: AssetExecutionContext, config: FeatureAblationConfig, database: PostgresResource,
                     mlflow: MlflowResource) -> MaterializeResult:
    from rl_lifecycle.models.service import registered_spec, training_data
    from rl_lifecycle.promotion.service import contenders
    from rl_lifecycle.research.ablation import (
        ABLATION_HEADERS,
        ablation_json,
        ablation_png,
        ablation_table,
        log_ablation,
        run_ablation,
    )

    market, window = parse_partition_key(context.partition_key)
    registry = mlflow.registry()
    with user_errors_fail_the_step(), database.connect() as conn:
        version = (contenders(conn, registry, market, window)["challenger"] if config.model_version is None
                   else registry.version(market, config.model_version))
        spec = registered_spec(registry, version)
        horizon = training_data(conn, market, window).dataset.spec.forward_return_horizon
        result = run_ablation(
            conn, market, window, spec, fold_config(config, horizon), workdir=load_settings().home / "evaluations",
            groups=config.feature_groups, workers=config.workers, strict=settings_in_force(conn).strict_backtest,
            starting_balance=config.starting_balance, fold_timeout_s=config.fold_timeout_s,
            permutation_block=config.permutation_block, permutation_repeats=config.permutation_repeats,
            permutation_seed=config.permutation_seed, log=context.log.info)
    png = ablation_png(result)
    log_ablation(registry, version.run_id, result, png)
    return MaterializeResult(metadata={
        "ablation_table": markdown_table(ABLATION_HEADERS, ablation_table(result)),
        "ablation_plot": png_markdown(png, "Δ Sharpe per feature group: removed and retrained, or permuted"),
        "ablation": MetadataValue.json(ablation_json(result)),
        "detail": MetadataValue.json(result),
        "feature_set": result["feature_set"],
        "model_version": version.version,
        "n_trials": result["n_trials"],
        "trials_added": result["trials_added"],
        "most_valuable_group": next((g["group"] for g in result["groups"] if g.get("rank_ablation") == 1), None),
        "full_sharpe": rounded(result["full"]["sharpe"]),
    })
