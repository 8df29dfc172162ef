"""The long-lived paper decider: one decision per live market per closed bar, from one process.

`rl-lifecycle paper run` runs `run_decider`. Unlike a Dagster run per decision (the `paper_decisions`
schedule), it keeps the champions and each market's open-window candles loaded between decisions, so a
1m market's decision reads one new candle instead of the month (docs/benchmarks.md). Both deciders wait
for a bar the same way (`is_ready`) and decide through `decide_if_due`: a per-market lock under which
a closed bar's slot gets one decision, whichever decider comes first.

A bar is ready once its candle is stored, or a grace period after it closed whether the candle arrived or
not (the decision then acts on the newest candle there is, and holds with STALE_FEATURES when that is too
old). The grace is capped at half the market's interval, so a late feed still gets its decision in the
same interval. A market whose decision fails is retried with backoff and never stops the others; a lost
database is reconnected with backoff (and the candle cache starts over).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from rl_lifecycle.candles.input_cache import CandleInputCache
from rl_lifecycle.candles.store import newest_candle_ts
from rl_lifecycle.decisions.service import (
    ChampionCache,
    Decision,
    DueDecision,
    decide,
    due_decisions,
)
from rl_lifecycle.decisions.store import last_decision_as_of
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.switches import off_reason, switch_state
from rl_lifecycle.windows import newest_closed_bar, utc_now_us

PAPER_DECISIONS = "paper_decisions"  # the rollout switch the decider and the schedule follow
logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 20.0
MAX_RETRY_SECONDS = 300.0


def decide_if_due(conn: psycopg.Connection, due: DueDecision, **decide_options) -> Decision | None:
    """Decide on `due.market` now unless a decision was made since `due.bar_ts_us` closed (by any decider).

    A per-market advisory lock held until the decision is committed makes the check and the append atomic.
    """
    market = Market.parse(due.market)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"paper_decision:{market.key}",))
        last = last_decision_as_of(conn, market.key)
        if last is not None and last >= due.bar_ts_us + market.interval_us:
            return None
        return decide(conn, market, **decide_options)


def grace_us(market: Market, grace_seconds: float) -> int:
    """The wait for a closed bar's candle: at most half an interval, so it always expires within the bar's slot."""
    return int(min(grace_seconds * 1_000_000, market.interval_us // 2))


def is_ready(conn: psycopg.Connection, due: DueDecision, now_us: int, grace_seconds: float) -> bool:
    """The bar's candle is stored, or the grace after its close is over."""
    market = Market.parse(due.market)
    if now_us >= due.bar_ts_us + market.interval_us + grace_us(market, grace_seconds):
        return True
    newest = newest_candle_ts(conn, market, closed_by_us=now_us)
    return newest is not None and newest >= due.bar_ts_us


def wait_until_ready(conn: psycopg.Connection, due: DueDecision, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                     poll_seconds: float = 0.5) -> None:
    """Block until `is_ready` (at most the grace): how a schedule run waits for the bar it was started for."""
    while not is_ready(conn, due, utc_now_us(), grace_seconds):
        time.sleep(poll_seconds)


def decide_bar(conn: psycopg.Connection, market: Market, bar_ts_us: int | None = None,
               grace_seconds: float = DEFAULT_GRACE_SECONDS, **decide_options) -> tuple[DueDecision, Decision | None]:
    """What one schedule run does: wait for the bar it was started for (default: the bar closed last) as
    `paper run` waits, then decide unless another decider took its slot (None)."""
    if bar_ts_us is None:
        bar_ts_us = newest_closed_bar(utc_now_us(), market.interval_us)
    due = DueDecision(market.key, bar_ts_us)
    wait_until_ready(conn, due, grace_seconds)
    return due, decide_if_due(conn, due, **decide_options)


def ready_decisions(conn: psycopg.Connection, now_us: int, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                    markets: set[str] | None = None) -> list[DueDecision]:
    """The (selected) markets owed a decision whose bar is ready."""
    return [due for due in due_decisions(conn, now_us)
            if (markets is None or due.market in markets) and is_ready(conn, due, now_us, grace_seconds)]


@dataclass
class DeciderState:
    """What the loop carries between polls: its caches, counts and the markets waiting to be retried."""

    champions: ChampionCache = field(default_factory=ChampionCache)
    candle_inputs: CandleInputCache = field(default_factory=CandleInputCache)
    decisions: int = 0
    failures: int = 0
    retry_at_us: dict[str, int] = field(default_factory=dict)
    failed_in_a_row: dict[str, int] = field(default_factory=dict)
    paused: bool = False  # the rollout switch paper_decisions is off: polls decide nothing until it is on again

    def failed(self, market: str, now_us: int, poll_seconds: float) -> float:
        """Count a failure; returns the seconds until the market is tried again (doubling, capped)."""
        self.failures += 1
        n = self.failed_in_a_row[market] = self.failed_in_a_row.get(market, 0) + 1
        wait = min(max(poll_seconds, 1.0) * 2 ** (n - 1), MAX_RETRY_SECONDS)
        self.retry_at_us[market] = now_us + int(wait * 1_000_000)
        return wait

    def succeeded(self, market: str) -> None:
        self.failed_in_a_row.pop(market, None)
        self.retry_at_us.pop(market, None)


def _connection_lost(conn: psycopg.Connection) -> bool:
    return conn.closed or conn.broken


def decide_due_once(
    conn: psycopg.Connection,
    registry: Callable[[], object],
    *,
    markets: set[str] | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now_us: int | None = None,
    on_decision: Callable[[Decision], None] = lambda _: None,
    state: DeciderState | None = None,
    poll_seconds: float = 1.0,
) -> list[Decision]:
    """One poll: decide every (selected) market owed a decision whose bar is ready."""
    state = state or DeciderState()
    now_us = utc_now_us() if now_us is None else now_us
    made = []
    for due in ready_decisions(conn, now_us, grace_seconds, markets):
        if state.retry_at_us.get(due.market, 0) > now_us:
            continue
        try:
            decision = decide_if_due(conn, due, registry=registry, champions=state.champions,
                                     candle_inputs=state.candle_inputs, at_us=now_us)
        except Exception as exc:  # noqa: BLE001 - one market's failure must not stop the others
            if isinstance(exc, psycopg.Error) and _connection_lost(conn):
                raise  # the caller reconnects
            wait = state.failed(due.market, now_us, poll_seconds)
            logger.error("paper decision for %s failed (retry in %.0f s): %s: %s", due.market, wait,
                         type(exc).__name__, exc)
            continue
        state.succeeded(due.market)
        if decision is not None:
            state.decisions += 1
            made.append(decision)
            on_decision(decision)
    return made


def run_decider(
    database_url: str,
    registry: Callable[[], object],
    *,
    markets: Iterable[str] | None = None,
    poll_seconds: float = 1.0,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    on_decision: Callable[[Decision], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> DeciderState:
    """Poll every `poll_seconds` until `stop` is set; returns the counts. Each poll reads the rollout switch
    `paper_decisions` as the schedule does: switched off (`rl-lifecycle switch set paper_decisions false`), the
    decider pauses, deciding nothing, and resumes when it is on again, without a restart."""
    stop = stop or threading.Event()
    selected = None if markets is None else {Market.parse(m).key for m in markets}
    state, backoff = DeciderState(), poll_seconds
    while not stop.is_set():
        try:
            with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
                backoff = poll_seconds
                while not stop.is_set():
                    try:
                        if not _in_force(conn, state):
                            stop.wait(poll_seconds)
                            continue
                        decide_due_once(conn, registry, markets=selected, grace_seconds=grace_seconds,
                                        on_decision=on_decision, state=state, poll_seconds=poll_seconds)
                    except Exception as exc:  # noqa: BLE001 - a poll that fails (not one market) is retried
                        if isinstance(exc, psycopg.Error) and _connection_lost(conn):
                            raise
                        logger.exception("paper decider poll failed; retrying in %.0f s", backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, 60.0)
                        continue
                    backoff = poll_seconds
                    stop.wait(poll_seconds)
        except psycopg.Error as exc:
            # A new connection may reach another database under the same name: start the candles over.
            state.candle_inputs.clear()
            logger.error("paper decider lost the database (%s); retrying in %.0f s", exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)
    return state


def _in_force(conn: psycopg.Connection, state: DeciderState) -> bool:
    """Whether paper decisions are on now; logs each change between on and off once."""
    switch = switch_state(conn, PAPER_DECISIONS)
    if switch.enabled == state.paused:
        state.paused = not switch.enabled
        if state.paused:
            logger.warning("%s", off_reason(switch, "paper decisions are off", "the decider pauses until then"))
        else:
            logger.info("paper decisions are on again (%s): deciding", switch.origin_text())
    return switch.enabled
