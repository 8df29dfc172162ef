"""The open window's canonical input kept in memory by a long-lived decider, checked against the database on every read.

A decision on a 1m market needs every candle from its window's anchor minus warmup: ~45k rows at the end
of a month, which PostgreSQL takes ~30 ms to hand over whichever way they are read. A process that
decides again and again (`rl-lifecycle paper run`, a benchmark) keeps them here and, per read, makes one
pass over the input's index range that returns its stamp (first ts, rows, highest write_seq) and only the
candles written since the last read. Every candle write takes a new write_seq (sql/0004), so inserts and
corrections arrive as changes; a deletion or a shifted warmup shows as a stamp the merged rows do not
match, and the input is then read whole. The result is always equal to `load_candles_with_warmup`,
given what the whole project keeps to: every candle write goes through `upsert_candles` (it holds the
market's write lock, so sequence numbers are committed in order), and a database dropped and recreated
under the same name is met with a fresh cache (the long-lived decider starts one per connection).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import psycopg

from rl_lifecycle.candles.frame import VALUE_COLUMNS, CandleArrays
from rl_lifecycle.candles.store import CandleStamp, candle_input_changes
from rl_lifecycle.markets.keys import Market

_COLUMNS = ("ts", *VALUE_COLUMNS)


@dataclass(frozen=True)
class _Input:
    start_us: int  # the window's anchor
    end_us: int  # the window's end: the input held covers the whole window, reads take a prefix
    candles: CandleArrays
    write_seq: int | None


def merge_changes(held: CandleArrays, changed: CandleArrays) -> CandleArrays:
    """`held` with `changed` rows replacing those of the same ts and added where new, sorted by ts."""
    if len(changed) == 0:
        return held
    keep = ~np.isin(held.ts, changed.ts, assume_unique=True)
    merged = {c: np.concatenate([getattr(held, c)[keep], getattr(changed, c)]) for c in _COLUMNS}
    if len(merged["ts"]) > 1 and not np.all(merged["ts"][1:] > merged["ts"][:-1]):
        order = np.argsort(merged["ts"], kind="stable")
        merged = {c: values[order] for c, values in merged.items()}
    return CandleArrays(**merged)


def _matches(candles: CandleArrays, stamp: CandleStamp, held_seq: int | None) -> bool:
    if len(candles) != stamp.rows or (held_seq is not None and (stamp.write_seq or 0) < held_seq):
        return False  # a row went away, or the stamps come from another sequence (another database)
    return stamp.rows == 0 or int(candles.ts[0]) == stamp.input_start_us


class CandleInputCache:
    """Per database and market, the canonical input of one window (the last one read); thread-safe."""

    def __init__(self) -> None:
        self._held: dict[str, _Input] = {}
        self._lock = threading.Lock()
        self.full_reads = 0  # reads that fetched the whole input (first read, new window, deletion)

    def read(self, conn: psycopg.Connection, market: Market, window_start_us: int, window_end_us: int,
             end_us: int, warmup_rows: int) -> CandleArrays:
        """Equal to `load_candles_with_warmup(conn, market, window_start_us, end_us, warmup_rows)`, for an
        `end_us` inside the window [window_start_us, window_end_us]."""
        if not window_start_us <= end_us <= window_end_us:
            raise ValueError(f"end {end_us} is outside the window [{window_start_us}, {window_end_us}]")
        info = conn.info
        key = f"{info.host}:{info.port}/{info.dbname}|{market.key}|{warmup_rows}"
        with self._lock:
            held = self._held.get(key)
            if held is not None and (held.start_us, held.end_us) != (window_start_us, window_end_us):
                held = None  # another window: its input shares nothing worth keeping
            candles, seq = self._refresh(conn, market, window_start_us, window_end_us, warmup_rows, held)
            self._held[key] = _Input(window_start_us, window_end_us, candles, seq)
        return candles.slice(0, int(np.searchsorted(candles.ts, end_us, side="left")))

    def _refresh(self, conn, market, start_us, end_us, warmup_rows, held: _Input | None):
        if held is not None:
            changes = candle_input_changes(conn, market, start_us, end_us, warmup_rows, held.write_seq)
            merged = merge_changes(held.candles, changes.changed)
            if _matches(merged, changes.stamp, held.write_seq):
                return merged, changes.stamp.write_seq
        self.full_reads += 1
        changes = candle_input_changes(conn, market, start_us, end_us, warmup_rows, None)
        return changes.changed, changes.stamp.write_seq

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
