"""The facts of a market's stability window, read from the database: the latest recorded rollout switch
change (`rl_lifecycle.switches`), the market's registration, and its alerts (failed checks, paper breaches,
open alerts). The rule itself is `rl_lifecycle.promotion.stability` (pure); `promotion_decision` passes the
window to `promotion.service.decide`, `rl-lifecycle status` shows how far each market is into it.

Times are when the project recorded them (`created_at`): an alert's record, a switch change, a registration.
Promotion events (`promotion_event`, recorded resolved) are no incident.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.ops.alerts import CHECK_FAILED, PAPER_BREACH, PROMOTION_EVENT
from rl_lifecycle.promotion.stability import (
    BREACH,
    FAILED_CHECK,
    OPEN_ALERT,
    Incident,
    StabilityWindow,
    stability_window,
)
from rl_lifecycle.settings import Settings
from rl_lifecycle.switches import settings_in_force, switch_history

_PROBLEMS = {CHECK_FAILED: FAILED_CHECK, PAPER_BREACH: BREACH}


def stage_change(conn: psycopg.Connection) -> tuple[datetime | None, str]:
    """When the current rollout stage began (the latest recorded switch change) and what that change was."""
    newest = switch_history(conn, limit=1)
    if not newest:
        return None, "no recorded switch change"
    change = newest[0]
    value = change.value if change.value is not None else "(unset: back to the environment)"
    return change.changed_at, f"switch {change.switch} set to {value} by {change.actor}"


def market_incidents(conn: psycopg.Connection, market: str, since: datetime) -> list[Incident]:
    """The market's failed checks and paper breaches recorded since `since`, and its open alerts (any age)."""
    rows = conn.execute(
        """SELECT kind, created_at, summary, resolved_at IS NULL FROM alerts
           WHERE market = %s AND kind <> %s AND (resolved_at IS NULL OR created_at >= %s) ORDER BY id""",
        (market, PROMOTION_EVENT, since),
    ).fetchall()
    out = []
    for kind, at, summary, is_open in rows:
        at = at.astimezone(UTC)
        if kind in _PROBLEMS and at >= since:
            out.append(Incident(_PROBLEMS[kind], at, summary or ""))
        if is_open:
            out.append(Incident(OPEN_ALERT, at, summary or ""))
    return out


def market_stability(conn: psycopg.Connection, market: Market | str, settings: Settings | None = None,
                     now: datetime | None = None) -> StabilityWindow:
    """The market's stability window as of `now` (default: the wall clock), `settings` as in force
    (RL_STABILITY_DAYS)."""
    market = market if isinstance(market, Market) else Market.parse(market)
    settings = settings or settings_in_force(conn)
    now = now or datetime.now(UTC)
    row = conn.execute("SELECT created_at FROM markets WHERE pair = %s AND interval = %s",
                       (market.pair, market.interval)).fetchone()
    if row is None:
        raise UserInputError(f"market {market.key} is not registered; add it with `rl-lifecycle market add`")
    registered = row[0].astimezone(UTC)
    started, change = stage_change(conn)
    window_start = max(registered, started) if started is not None else registered
    return stability_window(now=now, required_days=settings.stability_days, stage_start=started, stage_change=change,
                            registered_at=registered, incidents=market_incidents(conn, market.key, window_start))
