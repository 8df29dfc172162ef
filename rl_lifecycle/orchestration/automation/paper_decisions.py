"""`paper_decisions`: one paper decision per market per interval while the market is live (a Dagster schedule).

The schedule ticks every minute and asks the core which markets are owed a decision (`due_decisions`:
a bar their calendar expects has closed and nothing was decided since); each gets one run of
`paper_decisions_job`, run key = market + bar. The run waits for the bar's candle (at most the grace
of `rl_lifecycle.decisions.live`), then decides as of that moment through `decide_if_due`, which skips
a bar slot the long-lived decider (`rl-lifecycle paper run`) already took: one decision per closed bar.

Off by default: it only requests runs while the rollout switch `paper_decisions` is on (stored with
`rl-lifecycle switch set paper_decisions true`, else RL_PAPER_DECISIONS_ENABLED, default false;
`rl_lifecycle.switches`). The schedule itself starts RUNNING so that it reads the switch on every tick:
a stored change takes effect without a click or a restart, and each tick says why it skipped. Paper only.
"""


from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from rl_lifecycle.decisions.live import PAPER_DECISIONS  # the switch, and this schedule's name
from rl_lifecycle.decisions.service import due_decisions
from rl_lifecycle.orchestration.jobs import paper_decisions_job
from rl_lifecycle.orchestration.partitions import PAPER_MARKET_TAG
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.switches import off_reason, switch_state
from rl_lifecycle.windows import iso, to_us

WHEN_ON = "this schedule then makes one decision per market per interval while the market is open"


@schedule(
    name=PAPER_DECISIONS,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    job=paper_decisions_job,
    # running by default: it reads the rollout switch on every tick (a stored change needs no click)
    default_status=DefaultScheduleStatus.RUNNING,
    description="Gated by the rollout switch paper_decisions (default off): `rl-lifecycle switch set "
    "paper_decisions true` turns it on for the daemon and the CLI alike (`rl-lifecycle switch list` shows it; "
    "RL_PAPER_DECISIONS_ENABLED is the value while nothing is stored). Running here means only that it ticks: "
    "while the switch is off every tick skips, naming the switch, its value and where it comes from. When on, "
    "every minute: one paper_decisions_job run per market whose newest bar has closed during its trading hours "
    "and has no decision yet (run key = market + bar).",
)
def paper_decisions(context: ScheduleEvaluationContext, database: PostgresResource):
    with database.connect() as conn:
        switch = switch_state(conn, PAPER_DECISIONS)
        if not switch.enabled:
            return SkipReason(off_reason(switch, "paper decisions are off", WHEN_ON))
        at = context.scheduled_execution_time
        due = due_decisions(conn, to_us(at) if at is not None else None)
    if not due:
        return SkipReason("no market is owed a decision: no new bar closed in trading hours since the last ones")
    return [
        RunRequest(run_key=d.run_key,
                   run_config={"ops": {"paper_decision": {"config": {"market": d.market, "bar_ts": iso(d.bar_ts_us)}}}},
                   tags={PAPER_MARKET_TAG: d.market})
        for d in due
    ]
