"""`rl_feature_snapshots`: bulk idempotent upsert and range reads straight into numpy.

Writes stage rows with one binary COPY and merge them with one `INSERT ... ON CONFLICT`; rows whose
bytes are unchanged are not touched (their `computed_at` stays). Reads are one binary COPY decoded
as a numpy structured array. A window is written in one transaction together with its
`rl_feature_windows` record, so a window is either complete or absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from rl_lifecycle.db import binary_copy as bc
from rl_lifecycle.db.binary_copy import pg_timestamp
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.pipeline import FeatureFrame
from rl_lifecycle.features.spec import PIPELINE_VERSION, TALIB_C_VERSION, FeatureSetSpec
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import Window


def _mask_bytes(n_features: int) -> int:
    return (n_features + 7) // 8


def _fields(n_features: int) -> list[bc.Field]:
    return [
        bc.timestamptz("ts"),
        bc.raw_bytes("vector", "<f8", n_features),
        bc.boolean("is_warm"),
        bc.raw_bytes("missing_mask", "u1", _mask_bytes(n_features)),
    ]


@dataclass(frozen=True)
class SnapshotWriteStats:
    inserted: int
    updated: int
    unchanged: int
    deleted: int = 0


@dataclass(frozen=True)
class WindowRecord:
    window_start: int
    window_end: int
    candle_checksum: str
    input_rows: int
    rows: int
    warm_rows: int
    content_digest: str
    input_start_us: int | None = None
    candles_write_seq: int | None = None  # the input's CandleStamp.write_seq when it was computed

    def matches(self, stamp) -> bool:
        """The window's input candles are unchanged since this record, judged by their stamp."""
        return (
            self.candles_write_seq is not None
            and (self.input_start_us, self.input_rows, self.candles_write_seq)
            == (stamp.input_start_us, stamp.rows, stamp.write_seq)
        )


def register_feature_set(conn: psycopg.Connection, spec: FeatureSetSpec) -> str:
    """Record the spec under its fingerprint (idempotent); returns the fingerprint."""
    conn.execute(
        """INSERT INTO feature_sets (fingerprint, name, version, feature_names, spec, talib_version, pipeline_version)
           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (fingerprint) DO NOTHING""",
        (spec.fingerprint, spec.name, spec.version, list(spec.feature_names),
         json.dumps(spec.model_dump(mode="json"), sort_keys=True), TALIB_C_VERSION, PIPELINE_VERSION),
    )
    return spec.fingerprint


def load_registered_feature_set(conn: psycopg.Connection, fingerprint: str) -> FeatureSetSpec:
    """The spec registered under `fingerprint`, as it was: later edits of its YAML do not matter."""
    from rl_lifecycle.features.spec import parse_feature_set

    row = conn.execute("SELECT spec FROM feature_sets WHERE fingerprint = %s", (fingerprint,)).fetchone()
    if row is None:
        raise UserInputError(f"no feature set is registered under fingerprint {fingerprint[:12]}")
    spec = parse_feature_set(row[0], source=f"feature_sets[{fingerprint[:12]}]")
    if spec.fingerprint != fingerprint:
        raise UserInputError(
            f"feature set {spec.name} ({fingerprint[:12]}) was registered under another TA-Lib or pipeline "
            f"version; it now fingerprints as {spec.fingerprint[:12]}"
        )
    return spec


def feature_set_id(conn: psycopg.Connection, fingerprint: str) -> int | None:
    """The snapshot table's key for a fingerprint; None when the feature set was never registered."""
    row = conn.execute("SELECT id FROM feature_sets WHERE fingerprint = %s", (fingerprint,)).fetchone()
    return None if row is None else row[0]


def _stage_columns(frame: FeatureFrame) -> dict[str, np.ndarray]:
    """The COPY columns of a frame's rows. Any layout: encode assigns the (n, k) matrices into the
    rows' fields element by element, so a column-major frame is staged with the same bytes as its
    row-major copy, without making that copy."""
    k = len(frame.feature_names)
    return {
        "ts": bc.us_to_pg(frame.ts),
        "vector": np.asarray(frame.values, dtype="<f8"),
        "is_warm": frame.is_warm,
        "missing_mask": np.packbits(frame.missing, axis=1, bitorder="little").reshape(len(frame), _mask_bytes(k)),
    }


def _stage(conn: psycopg.Connection, frame: FeatureFrame) -> None:
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS snapshots_stage
           (ts timestamptz, vector bytea, is_warm boolean, missing_mask bytea) ON COMMIT DELETE ROWS"""
    )
    conn.execute("TRUNCATE snapshots_stage")  # empty even when the caller's transaction spans several writes
    bc.copy_in(conn, "snapshots_stage", _fields(len(frame.feature_names)), _stage_columns(frame))


def _lock_snapshots(conn: psycopg.Connection, market: Market, fingerprint: str) -> None:
    """Serialise writers of one market and feature set for the current transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"features:{market.key}:{fingerprint}",))


def upsert_snapshots(conn: psycopg.Connection, market: Market, fingerprint: str, frame: FeatureFrame) -> SnapshotWriteStats:
    """Stage with COPY, merge with one INSERT ... ON CONFLICT; identical rows stay untouched.

    When nothing is stored yet in the frame's time range (a first write, the common case), the
    staged rows cannot conflict, so a plain INSERT skips ON CONFLICT's per-row speculative
    insertion (about 2x faster). The writers' lock makes that check hold until commit.
    """
    set_id = feature_set_id(conn, fingerprint)
    if set_id is None:
        raise ValueError(f"feature set {fingerprint[:12]} is not registered; call register_feature_set first")
    key = (market.pair, market.interval, set_id)
    with conn.transaction():
        _lock_snapshots(conn, market, fingerprint)
        _stage(conn, frame)  # even when empty: write_window deletes what the stage does not hold
        if len(frame) and _range_is_empty(conn, key, int(frame.ts[0]), int(frame.ts[-1])):
            try:
                with conn.transaction():  # a savepoint: a writer bypassing the lock only costs the fast path
                    inserted = conn.execute(
                        """INSERT INTO rl_feature_snapshots (pair, interval, feature_set_id, ts, vector, is_warm, missing_mask)
                           SELECT %s, %s, %s, ts, vector, is_warm, missing_mask FROM snapshots_stage""",
                        key,
                    ).rowcount
                return SnapshotWriteStats(inserted, 0, len(frame) - inserted)
            except psycopg.errors.UniqueViolation:
                pass
        inserted, written = conn.execute(
            """WITH merged AS (
                 INSERT INTO rl_feature_snapshots AS s (pair, interval, feature_set_id, ts, vector, is_warm, missing_mask)
                 SELECT %s, %s, %s, ts, vector, is_warm, missing_mask FROM snapshots_stage
                 ON CONFLICT (pair, interval, feature_set_id, ts) DO UPDATE
                   SET vector = EXCLUDED.vector, is_warm = EXCLUDED.is_warm,
                       missing_mask = EXCLUDED.missing_mask, computed_at = now()
                   WHERE (s.vector, s.is_warm, s.missing_mask)
                         IS DISTINCT FROM (EXCLUDED.vector, EXCLUDED.is_warm, EXCLUDED.missing_mask)
                 RETURNING (xmax = 0) AS inserted)
               SELECT count(*) FILTER (WHERE inserted), count(*) FROM merged""",
            key,
        ).fetchone()
    return SnapshotWriteStats(inserted, written - inserted, len(frame) - written)


def _range_is_empty(conn: psycopg.Connection, key: tuple, first_us: int, last_us: int) -> bool:
    query = sql.SQL(
        "SELECT NOT EXISTS (SELECT 1 FROM rl_feature_snapshots WHERE pair = %s AND interval = %s "
        "AND feature_set_id = %s AND ts >= {} AND ts <= {})"
    ).format(pg_timestamp(first_us), pg_timestamp(last_us))
    return conn.execute(query, key).fetchone()[0]


def write_window(
    conn: psycopg.Connection,
    market: Market,
    spec: FeatureSetSpec,
    window: Window,
    frame: FeatureFrame,
    candle_checksum: str,
    input_rows: int,
    stamp=None,
) -> SnapshotWriteStats:
    """Make the stored window equal `frame`, and record it (with the input's stamp), all-or-nothing.

    `stamp` must be taken before the input candles were read, so a later change always moves it.
    """
    fingerprint = spec.fingerprint
    with conn.transaction():
        _lock_snapshots(conn, market, fingerprint)
        register_feature_set(conn, spec)
        stats = upsert_snapshots(conn, market, fingerprint, frame)
        # Rows whose candles disappeared from the window must not survive the rewrite; the staged
        # rows (still there until commit) are exactly the window's rows now.
        deleted = conn.execute(
            sql.SQL(
                "DELETE FROM rl_feature_snapshots s WHERE pair = %s AND interval = %s AND feature_set_id = %s "
                "AND ts >= {s} AND ts < {e} AND NOT EXISTS (SELECT 1 FROM snapshots_stage st WHERE st.ts = s.ts)"
            ).format(s=pg_timestamp(window.start), e=pg_timestamp(window.end)),
            (market.pair, market.interval, feature_set_id(conn, fingerprint)),
        ).rowcount
        conn.execute(
            sql.SQL(
                """INSERT INTO rl_feature_windows (pair, interval, fingerprint, window_start, window_end,
                        candle_checksum, input_rows, rows, warm_rows, content_digest, input_start, candles_write_seq)
                   VALUES (%s, %s, %s, {s}, {e}, %s, %s, %s, %s, %s,
                           to_timestamp(0) + %s * interval '1 microsecond', %s)
                   ON CONFLICT (pair, interval, fingerprint, window_start) DO UPDATE
                     SET window_end = EXCLUDED.window_end, candle_checksum = EXCLUDED.candle_checksum,
                         input_rows = EXCLUDED.input_rows, rows = EXCLUDED.rows, warm_rows = EXCLUDED.warm_rows,
                         content_digest = EXCLUDED.content_digest, input_start = EXCLUDED.input_start,
                         candles_write_seq = EXCLUDED.candles_write_seq, computed_at = now()"""
            ).format(s=pg_timestamp(window.start), e=pg_timestamp(window.end)),
            (market.pair, market.interval, fingerprint, candle_checksum, input_rows, len(frame),
             int(frame.is_warm.sum()), frame.digest(),
             stamp.input_start_us if stamp else None, stamp.write_seq if stamp else None),
        )
    return SnapshotWriteStats(stats.inserted, stats.updated, stats.unchanged, deleted)


def read_snapshots(
    conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, start_us: int, end_us: int
) -> FeatureFrame:
    """Snapshots with start <= ts < end as (ts, float64 matrix, flags): the exact bytes written.

    The frame is row-major (the rows' layout on the wire); its content and digest equal those of the
    column-major frame the pipeline computed."""
    k = len(spec.feature_names)
    query = sql.SQL(
        "SELECT ts, vector, is_warm, missing_mask FROM rl_feature_snapshots "
        "WHERE pair = {p} AND interval = {i} AND feature_set_id = {f} AND ts >= {s} AND ts < {e} ORDER BY ts"
    ).format(p=market.pair, i=market.interval, f=feature_set_id(conn, spec.fingerprint) or -1,
             s=pg_timestamp(start_us), e=pg_timestamp(end_us))
    rows = bc.copy_out(conn, query, _fields(k))
    missing = np.unpackbits(rows["missing_mask"].reshape(len(rows), _mask_bytes(k)), axis=1, count=k, bitorder="little")
    return FeatureFrame(
        ts=bc.pg_to_us(rows["ts"].astype(np.int64)),
        values=np.ascontiguousarray(rows["vector"].reshape(len(rows), k), dtype=np.float64),
        is_warm=rows["is_warm"].astype(bool),
        missing=missing.astype(bool),
        feature_names=tuple(spec.feature_names),
    )


def window_records(
    conn: psycopg.Connection, market: Market, fingerprint: str, start_us: int, end_us: int
) -> dict[int, WindowRecord]:
    """Stored window records keyed by window start, for windows starting in [start, end)."""
    rows = conn.execute(
        sql.SQL(
            """SELECT (extract(epoch FROM window_start) * 1000000)::bigint, (extract(epoch FROM window_end) * 1000000)::bigint,
                      candle_checksum, input_rows, rows, warm_rows, content_digest,
                      (extract(epoch FROM input_start) * 1000000)::bigint, candles_write_seq
               FROM rl_feature_windows
               WHERE pair = %s AND interval = %s AND fingerprint = %s AND window_start >= {s} AND window_start < {e}"""
        ).format(s=pg_timestamp(start_us), e=pg_timestamp(end_us)),
        (market.pair, market.interval, fingerprint),
    ).fetchall()
    return {int(r[0]): WindowRecord(int(r[0]), int(r[1]), *r[2:7], None if r[7] is None else int(r[7]), r[8])
            for r in rows}


def restamp_window(conn: psycopg.Connection, market: Market, fingerprint: str, window: Window, stamp) -> None:
    """The input's candles were rewritten with identical values (checksum unchanged): record the new stamp."""
    conn.execute(
        sql.SQL(
            """UPDATE rl_feature_windows
               SET input_start = to_timestamp(0) + %s * interval '1 microsecond', candles_write_seq = %s
               WHERE pair = %s AND interval = %s AND fingerprint = %s AND window_start = {s}"""
        ).format(s=pg_timestamp(window.start)),
        (stamp.input_start_us, stamp.write_seq, market.pair, market.interval, fingerprint),
    )


# -- figures for monitoring (metrics, status): about the stored rows, never their vectors ----------
def newest_snapshot_ts(conn: psycopg.Connection, market: Market, feature_set_id: int) -> int | None:
    """Open time (epoch us) of the newest stored snapshot of a market and feature set, or None."""
    newest = conn.execute(
        "SELECT (extract(epoch FROM max(ts)) * 1000000)::bigint FROM rl_feature_snapshots "
        "WHERE pair = %s AND interval = %s AND feature_set_id = %s",
        (market.pair, market.interval, feature_set_id),
    ).fetchone()[0]
    return None if newest is None else int(newest)


def feature_sets_with_snapshots(conn: psycopg.Connection, market: Market) -> list[tuple[int, str, list[str]]]:
    """(feature_set_id, label, feature names) of the feature sets with stored windows for the market."""
    rows = conn.execute(
        """SELECT fs.id, fs.name, fs.version, fs.feature_names, fs.fingerprint FROM feature_sets fs
           WHERE fs.fingerprint IN (SELECT DISTINCT fingerprint FROM rl_feature_windows WHERE pair = %s AND interval = %s)
           ORDER BY fs.name, fs.version, fs.registered_at""",
        (market.pair, market.interval),
    ).fetchall()
    names_seen: dict[str, int] = {}
    for _, name, *_rest in rows:
        names_seen[name] = names_seen.get(name, 0) + 1
    # a name registered under two fingerprints (a changed spec) is told apart by the fingerprint
    return [(int(i), name if names_seen[name] == 1 else f"{name}@{fp[:12]}", list(names))
            for i, name, _version, names, fp in rows]


def recent_missing_ratios(conn: psycopg.Connection, market: Market, feature_set_id: int, feature_names: list[str],
                          rows: int) -> dict[str, float]:
    """Per feature: the share of the newest `rows` snapshots whose missing bit is set."""
    masks = conn.execute(
        "SELECT missing_mask FROM rl_feature_snapshots WHERE pair = %s AND interval = %s AND feature_set_id = %s "
        "ORDER BY ts DESC LIMIT %s",
        (market.pair, market.interval, feature_set_id, int(rows)),
    ).fetchall()
    k = len(feature_names)
    if not masks or k == 0:
        return {}
    raw = np.frombuffer(b"".join(bytes(m[0]) for m in masks), dtype=np.uint8).reshape(len(masks), -1)
    bits = np.unpackbits(raw, axis=1, count=k, bitorder="little").astype(bool)
    return {name: float(v) for name, v in zip(feature_names, bits.mean(axis=0), strict=True)}
