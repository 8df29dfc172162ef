"""`rl_decisions`: the append-only record of paper decisions (sql/0008.decisions.sql refuses UPDATE/DELETE/TRUNCATE)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from rl_lifecycle.windows import from_us, to_us

ACTIONS = ("flat", "long", "short", "hold")
POSITION_OF_ACTION = {"flat": 0, "long": 1, "short": -1, "hold": 0}


@dataclass(frozen=True)
class DecisionRecord:
    market: str
    as_of_us: int
    bar_ts_us: int | None
    action: str
    position: int
    champion_version: int | None
    fingerprint: str | None
    vector_sha256: str | None
    reason_codes: tuple[str, ...]
    latency_ms: float
    details: dict = field(default_factory=dict, compare=False)
    id: int | None = field(default=None, compare=False)
    created_at: datetime | None = field(default=None, compare=False)


_COLUMNS = ("market", "as_of", "bar_ts", "action", "position", "champion_version", "fingerprint", "vector_sha256",
            "reason_codes", "latency_ms", "details")
_SELECT = f"SELECT {', '.join(_COLUMNS)}, id, created_at FROM rl_decisions"


def append_decision(conn: psycopg.Connection, record: DecisionRecord) -> DecisionRecord:
    """Insert one decision; returns it with its id and time."""
    if record.action not in ACTIONS:
        raise ValueError(f"decision action {record.action!r} is invalid; expected one of {', '.join(ACTIONS)}")
    values = (record.market, from_us(record.as_of_us), None if record.bar_ts_us is None else from_us(record.bar_ts_us),
              record.action, int(record.position), record.champion_version, record.fingerprint, record.vector_sha256,
              list(record.reason_codes), float(record.latency_ms), Jsonb(record.details))
    row = conn.execute(
        f"INSERT INTO rl_decisions ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
        "RETURNING id, created_at",
        values,
    ).fetchone()
    return replace(record, id=int(row[0]), created_at=row[1])


def _record(row) -> DecisionRecord:
    (market, as_of, bar_ts, action, position, version, fingerprint, sha, reasons, latency, details, id_, created) = row
    return DecisionRecord(market, to_us(as_of), None if bar_ts is None else to_us(bar_ts), action, int(position),
                          version, fingerprint, sha, tuple(reasons or ()), float(latency), dict(details or {}),
                          int(id_), created)


def decision_history(conn: psycopg.Connection, market: str, limit: int | None = None) -> list[DecisionRecord]:
    """The market's decisions, newest first."""
    query, params = _SELECT + " WHERE market = %s ORDER BY id DESC", [market]
    if limit is not None:
        query += " LIMIT %s"
        params.append(int(limit))
    return [_record(r) for r in conn.execute(query, params).fetchall()]


def reign_decisions(conn: psycopg.Connection, market: str, champion_version: int) -> list[DecisionRecord]:
    """The market's newest run of decisions made by `champion_version` (since the last decision by any other
    champion, or by none), oldest first: the champion in force's reign, for the drift measures."""
    rows = conn.execute(
        _SELECT + """ WHERE market = %(m)s AND id > coalesce((SELECT max(id) FROM rl_decisions WHERE market = %(m)s
                      AND champion_version IS DISTINCT FROM %(v)s), 0) ORDER BY id""",
        {"m": market, "v": int(champion_version)},
    ).fetchall()
    return [_record(r) for r in rows]


def paper_position(conn: psycopg.Connection, market: str, as_of_us: int) -> int:
    """The paper position held going into a decision at `as_of`: the latest earlier decision's (flat when none)."""
    row = conn.execute(
        "SELECT position FROM rl_decisions WHERE market = %s AND as_of <= %s ORDER BY as_of DESC, id DESC LIMIT 1",
        (market, from_us(as_of_us)),
    ).fetchone()
    return 0 if row is None else int(row[0])


def last_decision_as_of(conn: psycopg.Connection, market: str) -> int | None:
    """When the market's latest decision was made (epoch us), None before its first: the schedule's dedupe."""
    row = conn.execute("SELECT max(as_of) FROM rl_decisions WHERE market = %s", (market,)).fetchone()
    return None if row is None or row[0] is None else to_us(row[0])
