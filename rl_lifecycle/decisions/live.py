"""The long-lived paper decider: one decision per live market per closed bar, from one process.

`rl-lifecycle paper run` runs `run_decider`. Unlike a Dagster run per decision (the `paper_decisions`
schedule), it keeps the champions and each market's open-window candles loaded between decisions, so a
1m market's decision reads one new candle instead of the month (docs/benchmarks.md). Both deciders may
run at once: `decide_if_due` serialises them per market and never decides a bar twice.

A bar is decided once its candle is stored, or `grace_seconds` after it closed whether it arrived or not
(the decision then holds with STALE_FEATURES when the data is late enough). One market failing is logged
and retried at the next poll; it never stops the others, and a lost database is reconnected with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from rl_lifecycle.decisions.service import (
    CHAMPIONS,
    ChampionCache,
    Decision,
    DueDecision,
    decide,
    due_decisions,
    newest_candle_ts,
)
from rl_lifecycle.decisions.store import last_decision_as_of
from rl_lifecycle.markets import Market

logger = logging.getLogger(__name__)


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


@dataclass
class DeciderState:
    """What the loop carries between polls."""

    champions: ChampionCache = field(default_factory=lambda: CHAMPIONS)
    decisions: int = 0
    failures: int = 0


def _ready(conn: psycopg.Connection, due: DueDecision, now_us: int, grace_us: int) -> bool:
    """The bar's candle is stored, or the grace period after its close is over."""
    market = Market.parse(due.market)
    if now_us >= due.bar_ts_us + market.interval_us + grace_us:
        return True
    newest = newest_candle_ts(conn, market, now_us)
    return newest is not None and newest >= due.bar_ts_us


def decide_due_once(
    conn: psycopg.Connection,
    registry: Callable[[], object],
    *,
    markets: set[str] | None = None,
    grace_seconds: float = 20.0,
    now_us: int | None = None,
    on_decision: Callable[[Decision], None] = lambda _: None,
    state: DeciderState | None = None,
) -> list[Decision]:
    """One poll: decide every (selected) market owed a decision whose bar is ready."""
    state = state or DeciderState()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    made = []
    for due in due_decisions(conn, now_us):
        if markets is not None and due.market not in markets:
            continue
        try:
            if not _ready(conn, due, now_us, int(grace_seconds * 1_000_000)):
                continue
            decision = decide_if_due(conn, due, registry=registry, champions=state.champions, at_us=now_us)
        except psycopg.OperationalError:
            raise  # the connection is gone: the caller reconnects
        except Exception as exc:  # noqa: BLE001 - one market's failure must not stop the others
            state.failures += 1
            logger.error("paper decision for %s failed: %s: %s", due.market, type(exc).__name__, exc)
            continue
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
    grace_seconds: float = 20.0,
    on_decision: Callable[[Decision], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> DeciderState:
    """Poll every `poll_seconds` until `stop` is set; returns the counts."""
    stop = stop or threading.Event()
    selected = None if markets is None else {Market.parse(m).key for m in markets}
    state, backoff = DeciderState(), poll_seconds
    while not stop.is_set():
        try:
            with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
                backoff = poll_seconds
                while not stop.is_set():
                    decide_due_once(conn, registry, markets=selected, grace_seconds=grace_seconds,
                                    on_decision=on_decision, state=state)
                    stop.wait(poll_seconds)
        except psycopg.OperationalError as exc:
            logger.error("paper decider lost the database (%s); retrying in %.0f s", exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)
    return state
