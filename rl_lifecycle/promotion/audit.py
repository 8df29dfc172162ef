"""`promotion_audit`: the append-only record of promotion decisions, manual promotions and rollbacks.

The audit decides who is champion. Champion-moving actions (promote, manual_promote, rollback)
form a chain: a promotion pushes its version, a rollback returns to an earlier link (dropping the
champions after it, so a rolled-back model is not restored by the next rollback) or, when named
outside the chain, pushes that version. The top of the chain is the champion, the link under it the
previous champion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from rl_lifecycle.errors import UserInputError

PROMOTE, REJECT, PENDING, MANUAL_PROMOTE, ROLLBACK = "promote", "reject", "pending", "manual_promote", "rollback"
ACTIONS = (PROMOTE, REJECT, PENDING, MANUAL_PROMOTE, ROLLBACK)
CHAMPION_MOVES = (PROMOTE, MANUAL_PROMOTE, ROLLBACK)
GATE_DECISIONS = (PROMOTE, REJECT, PENDING)  # actions that ran the gates
AUTO_ROLLBACK_ACTOR = "auto-rollback"  # the actor of a rollback the paper watch made (sql/0015: event auto_rollback)


@dataclass(frozen=True)
class AuditRecord:
    market: str
    action: str
    actor: str
    reason_codes: tuple[str, ...] = ()
    gates: Sequence[dict] = ()
    challenger_version: int | None = None
    champion_version: int | None = None
    resulting_champion_version: int | None = None
    dataset_hash: str | None = None
    evaluation_report_id: int | None = None
    feature_set: str | None = None
    fingerprint: str | None = None
    override: bool = False
    note: str | None = None
    # the figures an automatic action acted on (an auto rollback: its breach, `breach_key` once per breach)
    details: dict | None = field(default=None, compare=False)
    id: int | None = field(default=None, compare=False)
    created_at: datetime | None = field(default=None, compare=False)

    @property
    def gates_failed(self) -> bool:
        return any(not g.get("passed", False) for g in self.gates)


_COLUMNS = ("market", "action", "actor", "reason_codes", "gates", "challenger_version", "champion_version",
            "resulting_champion_version", "dataset_hash", "evaluation_report_id", "feature_set", "fingerprint",
            "override", "note", "details")
_SELECT = f"SELECT {', '.join(_COLUMNS)}, id, created_at FROM promotion_audit"


def append(conn: psycopg.Connection, record: AuditRecord) -> AuditRecord:
    """Insert one record; returns it with its id and time."""
    if record.action not in ACTIONS:
        raise UserInputError(f"audit action {record.action!r} is invalid; expected one of {', '.join(ACTIONS)}")
    if not record.actor or not record.actor.strip():
        raise UserInputError("audit actor is empty: say who (a user name or the job) took the action")
    if record.action in CHAMPION_MOVES and record.resulting_champion_version is None:
        raise UserInputError(f"audit action {record.action!r} needs resulting_champion_version")
    values = [getattr(record, c) for c in _COLUMNS]
    values[_COLUMNS.index("reason_codes")] = list(record.reason_codes)
    values[_COLUMNS.index("gates")] = Jsonb(list(record.gates))
    values[_COLUMNS.index("details")] = None if record.details is None else Jsonb(record.details)
    row = conn.execute(
        f"INSERT INTO promotion_audit ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
        "RETURNING id, created_at",
        values,
    ).fetchone()
    # the same shapes a read returns
    return replace(record, id=int(row[0]), created_at=row[1], reason_codes=tuple(record.reason_codes),
                   gates=tuple(record.gates))


def _record(row) -> AuditRecord:
    values = dict(zip(_COLUMNS, row[: len(_COLUMNS)], strict=True))
    values["reason_codes"] = tuple(values["reason_codes"] or ())
    values["gates"] = tuple(values["gates"] or ())
    return AuditRecord(**values, id=int(row[-2]), created_at=row[-1])


def history(conn: psycopg.Connection, market: str, limit: int | None = None) -> list[AuditRecord]:
    """The market's records, newest first."""
    query = _SELECT + " WHERE market = %s ORDER BY id DESC"
    params: tuple = (market,)
    if limit is not None:
        query += " LIMIT %s"
        params += (int(limit),)
    return [_record(r) for r in conn.execute(query, params).fetchall()]


def champion_chain(conn: psycopg.Connection, market: str) -> list[int]:
    """The champions in force, oldest first: the last is the champion, the one before it the previous."""
    chain: list[int] = []
    for action, version in conn.execute(
        """SELECT action, resulting_champion_version FROM promotion_audit
           WHERE market = %s AND action = ANY(%s) ORDER BY id""",
        (market, list(CHAMPION_MOVES)),
    ).fetchall():
        if action == ROLLBACK and version in chain:
            del chain[chain.index(version) + 1 :]
        else:
            if version in chain:  # promoted again: it moves to the top, once
                chain.remove(version)
            chain.append(int(version))
    return chain


def markets(conn: psycopg.Connection) -> list[str]:
    """Every market with at least one audit record."""
    return [r[0] for r in conn.execute("SELECT DISTINCT market FROM promotion_audit ORDER BY market").fetchall()]


def current_champion(conn: psycopg.Connection, market: str) -> int | None:
    chain = champion_chain(conn, market)
    return chain[-1] if chain else None


def previous_champion(conn: psycopg.Connection, market: str) -> int | None:
    chain = champion_chain(conn, market)
    return chain[-2] if len(chain) > 1 else None


def last_champion_move(conn: psycopg.Connection, market: str) -> AuditRecord | None:
    row = conn.execute(
        _SELECT + " WHERE market = %s AND action = ANY(%s) ORDER BY id DESC LIMIT 1",
        (market, list(CHAMPION_MOVES)),
    ).fetchone()
    return None if row is None else _record(row)


def last_gate_decision(conn: psycopg.Connection, market: str, version: int) -> AuditRecord | None:
    """The latest gate decision (promote, reject, pending) on `version` of the market's model."""
    row = conn.execute(
        _SELECT + " WHERE market = %s AND challenger_version = %s AND action = ANY(%s) ORDER BY id DESC LIMIT 1",
        (market, int(version), list(GATE_DECISIONS)),
    ).fetchone()
    return None if row is None else _record(row)


def auto_rollback_of(conn: psycopg.Connection, market: str, breach_key: str) -> AuditRecord | None:
    """The automatic rollback made for the breach `breach_key`, if any (there is at most one: sql/0016)."""
    row = conn.execute(
        _SELECT + " WHERE market = %s AND action = %s AND details ->> 'breach_key' = %s ORDER BY id LIMIT 1",
        (market, ROLLBACK, breach_key),
    ).fetchone()
    return None if row is None else _record(row)


def lock_key(market: str) -> int:
    """A stable signed 64-bit advisory-lock key for the market's promotion decisions (Python's hash is salted)."""
    digest = hashlib.sha256(f"rl_lifecycle.promotion:{market}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def market_decision_lock(conn: psycopg.Connection, market: str) -> Iterator[None]:
    """Hold the market's promotion lock (a session-level advisory lock) until the block ends; waits for a holder.

    Needs an autocommit connection: a write made under the lock must be committed before the lock is
    released, or the next holder would decide on a stale audit.
    """
    if not conn.autocommit:
        raise ValueError("market_decision_lock needs an autocommit connection (writes must commit inside the lock)")
    key = lock_key(market)
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


@contextmanager
def try_market_decision_lock(conn: psycopg.Connection, market: str) -> Iterator[bool]:
    """The market's promotion lock if it is free (yields True, held until the block ends), else yields False
    at once: for a daemon tick, which skips a market whose decision is in progress (that decision
    reconciles the aliases itself)."""
    if not conn.autocommit:
        raise ValueError("try_market_decision_lock needs an autocommit connection (writes must commit inside the lock)")
    key = lock_key(market)
    taken = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
    try:
        yield taken
    finally:
        if taken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
