"""The stability window before an automatic roll-forward (seed plan, rollout step 5: "enable live
auto-roll-forward only after 7-day stability"): the pure rule. The reader of its facts is
`rl_lifecycle.ops.stability`; the decision that applies it is `promotion.service.decide` (`stability=`).

A market is **stable** when it has run for `required_days` (RL_STABILITY_DAYS, default 7) at the current
rollout stage without a failed check or a paper breach, and has no open alert now:

- the window counts from the **latest** of: the start of the current rollout stage (the latest recorded
  change of any rollout switch, `switches.last_changed(conn)`: changing any switch changes the stage the
  market runs at), the market's registration, and the last failed check or paper breach of the market (a
  problem restarts the clock);
- a change made only in an environment variable leaves no record: the stage then counts from the latest
  recorded change (or, when no switch was ever changed with `rl-lifecycle switch`, from the market's
  registration). Store the switches (`rl-lifecycle switch set`) for the window to see every change;
- an open alert (any kind: a check or run failure, a rejected inbox file, a breach) blocks until it is
  resolved, however old.

With auto promotion in force a passing challenger is promoted only when the window is met; otherwise the
decision is `pending_manual` with reason code STABILITY_WINDOW_NOT_MET and the audit note says what is
missing ("auto_promotion switched on 2.0 days ago (7 needed)", "1 open alert since ..."). A market without a
champion (bootstrap) is not rolled forward and is not held by the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

STABILITY_WINDOW_NOT_MET = "STABILITY_WINDOW_NOT_MET"
FAILED_CHECK, BREACH, OPEN_ALERT = "failed check", "paper breach", "open alert"


@dataclass(frozen=True)
class Incident:
    """A failed check, a paper breach or an open alert of the market, when it happened."""

    kind: str  # FAILED_CHECK, BREACH (what restarts the clock) or OPEN_ALERT (what blocks while open)
    at: datetime
    summary: str = ""


@dataclass(frozen=True)
class StabilityWindow:
    required_days: float
    now: datetime
    counting_from: datetime  # the window's start: the latest of the stage start, the registration, the last problem
    since: str  # what that start is, for people ("auto_promotion switched on by alice", "the market's registration")
    open_alerts: tuple[Incident, ...] = ()
    missing: tuple[str, ...] = field(default=())

    @property
    def met(self) -> bool:
        return not self.missing

    @property
    def elapsed_days(self) -> float:
        return max(0.0, (self.now - self.counting_from) / timedelta(days=1))

    @property
    def remaining_days(self) -> float:
        return max(0.0, self.required_days - self.elapsed_days)

    @property
    def eligible_at(self) -> datetime:
        """When the window completes if nothing happens meanwhile (open alerts must be resolved too)."""
        return self.counting_from + timedelta(days=self.required_days)

    def describe(self) -> str:
        head = f"{self.elapsed_days:.1f} of {self.required_days:g} day(s) since {self.since} ({self.counting_from:%Y-%m-%d %H:%M %Z})"
        return head + ("; stable" if self.met else "; missing: " + "; ".join(self.missing))

    def to_json(self) -> dict:
        return {"required_days": self.required_days, "elapsed_days": round(self.elapsed_days, 4),
                "counting_from": self.counting_from.isoformat(), "since": self.since, "met": self.met,
                "eligible_at": self.eligible_at.isoformat(), "open_alerts": len(self.open_alerts),
                "missing": list(self.missing)}


def _days(delta: timedelta) -> str:
    days = delta / timedelta(days=1)
    return f"{days:.1f} days" if abs(days) >= 1 else f"{delta / timedelta(hours=1):.1f} hours"


def stability_window(*, now: datetime, required_days: float, stage_start: datetime | None, stage_change: str,
                     registered_at: datetime, incidents: list[Incident]) -> StabilityWindow:
    """The window of one market as of `now`. `stage_start`: the latest recorded switch change (None: none
    recorded), `stage_change` says which ("auto_promotion switched on by alice"); `incidents`: the market's
    failed checks and breaches (any time: those before the window's start do not count) and its open alerts."""
    starts = [(registered_at, "the market's registration")]
    if stage_start is not None:
        starts.append((stage_start, stage_change))
    problems = sorted((i for i in incidents if i.kind in (FAILED_CHECK, BREACH)), key=lambda i: i.at)
    stage_from, stage_why = max(starts, key=lambda s: s[0])
    start, since = stage_from, stage_why
    if problems and problems[-1].at > start:
        start, since = problems[-1].at, f"the last {problems[-1].kind}"
    opened = tuple(sorted((i for i in incidents if i.kind == OPEN_ALERT), key=lambda i: i.at))
    missing = []
    elapsed = now - start
    if elapsed < timedelta(days=required_days):
        missing.append(f"{since} {_days(elapsed)} ago ({required_days:g} days needed, complete at "
                       f"{start + timedelta(days=required_days):%Y-%m-%d %H:%M %Z})")
    if opened:
        missing.append(f"{len(opened)} open alert(s) since {opened[0].at:%Y-%m-%d %H:%M %Z}"
                       + (f" ({opened[0].summary[:120]})" if opened[0].summary else ""))
    return StabilityWindow(float(required_days), now, start, since, opened, tuple(missing))
