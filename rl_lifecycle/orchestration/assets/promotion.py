"""`promotion_decision`: the challenger of a market x window against the champion, through the gates."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rl_lifecycle.evaluation.report import json_safe
from rl_lifecycle.orchestration.assets.presentation import markdown_table, rounded
from rl_lifecycle.orchestration.failures import user_errors_fail_the_step
from rl_lifecycle.orchestration.partitions import (
    ONE_WINDOW_PER_RUN,
    market_window_partitions,
    parse_partition_key,
)
from rl_lifecycle.orchestration.resources import MlflowResource, PostgresResource
from rl_lifecycle.promotion.gates import (
    DSR_BELOW_MIN,
    GATE_TABLE_HEADERS,
    PAIRED_TEST_NOT_SIGNIFICANT,
    PBO_ABOVE_MAX,
    gate_rows,
)
from rl_lifecycle.switches import settings_in_force


class PromotionDecisionConfig(Config):
    policy: str | None = Field(default=None, description="gate policy YAML path; default rl_lifecycle/promotion/policy.yaml")


@asset(
    partitions_def=market_window_partitions,
    backfill_policy=ONE_WINDOW_PER_RUN,
    deps=["fold_report"],
    group_name="lifecycle",
    kinds={"mlflow", "postgres"},
    description="Paired delta gates (challenger minus champion on the same folds) and absolute gates; outcome "
    "promoted, rejected or pending_manual (the auto_promotion switch off, or STABILITY_WINDOW_NOT_MET: the market "
    "has not run RL_STABILITY_DAYS at the current rollout stage without an alert, failed check or breach), appended to promotion_audit; a promotion "
    "moves the MLflow aliases champion and previous_champion.",
)
def promotion_decision(
    context: AssetExecutionContext, config: PromotionDecisionConfig, database: PostgresResource, mlflow: MlflowResource
) -> MaterializeResult:
    from rl_lifecycle.ops.stability import market_stability
    from rl_lifecycle.promotion.policy import load_policy
    from rl_lifecycle.promotion.service import decide, partition_reports

    market, window = parse_partition_key(context.partition_key)
    registry = mlflow.registry()
    with user_errors_fail_the_step():
        policy = load_policy(config.policy)
        with database.connect() as conn:
            settings = settings_in_force(conn)  # the auto_promotion switch as stored, else RL_AUTO_PROMOTION
            reports = partition_reports(conn, registry, market, window)
            # with auto promotion, a market with a champion rolls forward only once stable (RL_STABILITY_DAYS)
            stability = market_stability(conn, market, settings) if settings.auto_promotion else None
            result = decide(
                conn, registry, market, reports.challenger_version, reports.challenger_report, reports.champion_report,
                policy, settings.auto_promotion, actor=f"dagster run {context.run_id}",
                evaluated_champion_version=reports.champion_version, stability=stability,
            )
    decision, record = result.decision, result.record
    if decision is None:  # the partition's challenger is the champion already: nothing to decide
        return _already_champion(context, reports, result)
    context.log.info(
        f"{context.partition_key}: {decision.outcome} v{reports.challenger_version}"
        f"{' (' + ', '.join(decision.reason_codes) + ')' if decision.reason_codes else ''}; champion "
        f"{_version(reports.champion_version)} -> {_version(result.champion)}"
    )
    return MaterializeResult(metadata={
        "outcome": decision.outcome,
        "reason_codes": ", ".join(decision.reason_codes) or "-",
        "gates": markdown_table(GATE_TABLE_HEADERS, gate_rows(decision.gates_json())),
        "gate_values": MetadataValue.json(decision.gates_json()),
        "bootstrap": decision.bootstrap,
        "auto_promotion": settings.auto_promotion,
        "stability_window": "-" if stability is None else stability.describe(),
        "challenger_version": reports.challenger_version,
        "champion_before": _version(reports.champion_version),
        "champion_after": _version(result.champion),
        "evaluation_report_id": reports.challenger_report.id,
        "champion_report_id": reports.champion_report.id if reports.champion_report is not None else "-",
        "audit_id": record.id,
        **_statistics_metadata(decision),
    })


def _already_champion(context: AssetExecutionContext, reports, result) -> MaterializeResult:
    moved = ", ".join(f"{alias} {_version(b)} -> {_version(a)}" for alias, (b, a) in result.alias_changes.items())
    context.log.info(
        f"{context.partition_key}: v{reports.challenger_version} is already the champion (audit "
        f"#{result.record.id}); nothing to decide; aliases {'moved: ' + moved if moved else 'in agreement'}"
    )
    return MaterializeResult(metadata={
        "outcome": "already_champion",
        "reason_codes": "-",
        "challenger_version": reports.challenger_version,
        "champion_before": _version(reports.champion_version),
        "champion_after": _version(result.champion),
        "evaluation_report_id": reports.challenger_report.id,
        "audit_id": result.record.id,
        "aliases_completed": moved or "-",
    })


def _version(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def _statistics_metadata(decision) -> dict:
    """The paired test (statistic, p-values: when a champion existed), the DSR with its N and V, and the
    PBO with its trials, as the decision computed them."""
    gates = {g.code: g for g in decision.gates}
    out = {}
    if (paired := gates.get(PAIRED_TEST_NOT_SIGNIFICANT)) is not None and paired.details:
        out |= {"paired_test": MetadataValue.json(dict(paired.details)), "paired_p_value": rounded(paired.value)}
    if (dsr := gates.get(DSR_BELOW_MIN)) is not None:
        details = dict(dsr.details or {})
        out |= {"dsr": rounded(dsr.value), "dsr_n_trials": details.get("n_trials"),  # full precision: gate_values
                "dsr_trial_sharpe_variance": rounded(details.get("trial_sharpe_variance"))}
    if (pbo := gates.get(PBO_ABOVE_MAX)) is not None:
        out |= {"pbo": rounded(json_safe(pbo.value)), "pbo_detail": MetadataValue.json(json_safe(dict(pbo.details or {})))}
    return out
