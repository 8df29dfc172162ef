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
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from rl_lifecycle.decisions.service import due_decisions
from rl_lifecycle.orchestration.jobs import paper_decisions_job
from rl_lifecycle.orchestration.partitions import PAPER_MARKET_TAG
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import iso, to_us

PAPER_DECISIONS = "paper_decisions"
DISABLED_REASON = (
    "paper decisions are off: set RL_PAPER_DECISIONS_ENABLED=true where `make dev` runs (the daemon) and restart it; this "
    "schedule then makes one decision per market per interval while the market is open"
)


@schedule(
    name=PAPER_DECISIONS,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    job=paper_decisions_job,
    default_status=DefaultScheduleStatus.RUNNING if load_settings().paper_decisions_enabled else DefaultScheduleStatus.STOPPED,
    description="Every minute: one paper_decisions_job run per market whose newest bar has closed during its trading "
    "hours and has no decision yet (run key = market + bar). Needs RL_PAPER_DECISIONS_ENABLED=true.",
)
def paper_decisions(context: ScheduleEvaluationContext, database: PostgresResource):
    if not load_settings().paper_decisions_enabled:
        return SkipReason(DISABLED_REASON)
    at = context.scheduled_execution_time
    now_us = to_us(at) if at is not None else None
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
