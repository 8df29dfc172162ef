"""`paper_decisions`: one paper decision per market per interval while the market is live (a Dagster schedule).

The schedule ticks every minute and asks the core which markets are owed a decision (`due_decisions`:
a bar their calendar expects has closed and nothing was decided since); each gets one run of
`paper_decisions_job`, run key = market + bar. The run waits for the bar's candle (at most the grace
of `rl_lifecycle.decisions.live`), then decides as of that moment through `decide_if_due`, which skips
a bar slot the long-lived decider (`rl-lifecycle paper run`) already took: one decision per closed bar.

Off by default: the schedule starts STOPPED, and it only requests runs while RL_PAPER_DECISIONS_ENABLED
is true (set it where the daemon runs; with it set the schedule also starts RUNNING). Paper only.
"""


from dagster import (
    Config,
    DefaultScheduleStatus,
    OpExecutionContext,
    Output,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    job,
    op,
    schedule,
)

from rl_lifecycle.decisions.config import ENABLED_ENV
from rl_lifecycle.resources import MlflowResource, PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import iso

PAPER_DECISIONS = "paper_decisions"
PAPER_MARKET_TAG = "paper_decisions/market"
DISABLED_REASON = (
    f"paper decisions are off: set {ENABLED_ENV}=true where `make dev` runs (the daemon) and restart it; this "
    "schedule then makes one decision per market per interval while the market is open"
)


class PaperDecisionConfig(Config):
    market: str  # market key, e.g. BTCUSDT-1m
    bar_ts: str | None = None  # the closed bar owed a decision (ISO); skipped if another decider took it
    grace_seconds: float = 20.0  # wait this long at most for the bar's candle (capped at half an interval)


@op(name="paper_decision", description="One paper decision for a market as of now (`rl-lifecycle decide`).")
def paper_decision(context: OpExecutionContext, config: PaperDecisionConfig, database: PostgresResource,
                   mlflow: MlflowResource):
    from rl_lifecycle.decisions.live import decide_bar
    from rl_lifecycle.markets import Market
    from rl_lifecycle.windows import to_us

    market = Market.parse(config.market)
    with database.connect() as conn:
        due, decision = decide_bar(conn, market, to_us(config.bar_ts) if config.bar_ts else None,
                                   config.grace_seconds, registry=mlflow.registry)
    if decision is None:
        bar = iso(due.bar_ts_us)
        context.log.info(f"{market.key}: the bar opened at {bar} was already decided (e.g. by `rl-lifecycle paper run`)")
        yield Output(None, metadata={"market": market.key, "bar_ts": bar, "skipped": True})
        return
    out = decision.to_json()
    context.log.info(f"{config.market}: {out['action']} {', '.join(out['reason_codes']) or '(acted freely)'} "
                     f"in {out['latency_ms']} ms")
    yield Output(out, metadata={
        "market": config.market, "action": out["action"], "reason_codes": ", ".join(out["reason_codes"]) or "-",
        "champion_version": out["champion_version"] if out["champion_version"] is not None else "-",
        "bar_ts": out["bar_ts"] or "-", "latency_ms": float(out["latency_ms"]), "decision_id": out["decision_id"],
    })


@job(name="paper_decisions_job", description="One paper decision for one market (requested by `paper_decisions`).")
def paper_decisions_job():
    paper_decision()


@schedule(
    name=PAPER_DECISIONS,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    job=paper_decisions_job,
    default_status=DefaultScheduleStatus.RUNNING if load_settings().paper_decisions_enabled else DefaultScheduleStatus.STOPPED,
    description="Every minute: one paper_decisions_job run per market whose newest bar has closed during its trading "
    f"hours and has no decision yet (run key = market + bar). Needs {ENABLED_ENV}=true.",
)
def paper_decisions(context: ScheduleEvaluationContext, database: PostgresResource):
    from rl_lifecycle.decisions.service import due_decisions

    if not load_settings().paper_decisions_enabled:
        return SkipReason(DISABLED_REASON)
    at = context.scheduled_execution_time
    now_us = int(at.timestamp() * 1_000_000) if at is not None else None
    with database.connect() as conn:
        due = due_decisions(conn, now_us)
    if not due:
        return SkipReason("no market is owed a decision: no new bar closed in trading hours since the last ones")
    return [
        RunRequest(run_key=d.run_key,
                   run_config={"ops": {"paper_decision": {"config": {"market": d.market, "bar_ts": iso(d.bar_ts_us)}}}},
                   tags={PAPER_MARKET_TAG: d.market})
        for d in due
    ]
