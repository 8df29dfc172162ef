"""The one read path for feature vectors: datasets, training, backtests and live decisions call it.

`load_vectors(conn, market, spec, start, end)` returns the canonical vectors of every bar in
[start, end): the stored snapshots of each window whose input candles are unchanged since they
were computed, and for a window whose snapshots are missing or stale (its candles changed) the
canonical pipeline's output, written back first. The still-open window is no exception: its closed
candles are its input, and its record goes stale as soon as a new candle lands.

A window is current when its record's input stamp equals the stamp of the candles stored now (one
query, no candle read), or else when the checksum of its input candles equals the record's. Every
window's rows are verified against the digest its record carries, so a concurrent rewrite cannot
slip mixed bytes into one read. Nothing outside `rl_lifecycle.features` reads `rl_feature_snapshots`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import psycopg

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.input_cache import CandleInputCache
from rl_lifecycle.candles.store import CandleStamp, load_candles_with_warmup, window_input_stamps
from rl_lifecycle.features.pipeline import FeatureFrame, compute_features
from rl_lifecycle.features.spec import FeatureSetSpec
from rl_lifecycle.features.store import (
    WindowRecord,
    read_snapshots,
    register_feature_set,
    restamp_window,
    window_records,
    write_window,
)
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import Window, WindowScheme


@dataclass(frozen=True)
class WindowSource:
    """Where one window's vectors came from, and what they are made of."""

    window: Window
    origin: str  # "cache": stored snapshots; "computed": pipeline + write-back; "empty": no candles in the window
    candle_checksum: str
    content_digest: str
    rows: int


class VectorRead:
    """The outcome of `load_vectors`: every window made current; vectors and candles read on first use.

    Callers that only need to know what the windows hold (a dataset whose version already exists)
    never pay for reading the rows.
    """

    def __init__(self, conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, start_us: int, end_us: int,
                 windows: list[WindowSource], candles: SpanCandles):
        self._conn, self._market, self._spec, self._range = conn, market, spec, (start_us, end_us)
        self.windows = windows
        self._candles = candles

    @cached_property
    def frame(self) -> FeatureFrame:
        """Rows with start <= ts < end: the bytes stored in rl_feature_snapshots, verified per window."""
        span_start, span_end = self.windows[0].window.start, self.windows[-1].window.end
        stored = read_snapshots(self._conn, self._market, self._spec, span_start, span_end)
        for source in self.windows:
            if stored.slice_ts(source.window.start, source.window.end).digest() != source.content_digest:
                raise RuntimeError(
                    f"snapshots of {self._market.key} window {source.window.key} changed while they were being read; "
                    "read again"
                )
        return stored if (span_start, span_end) == self._range else stored.slice_ts(*self._range)

    def candles(self) -> CandleArrays:
        """The span's candles (warmup first); read from the database on first use only."""
        return self._candles.get()

    def _keys(self, origin: str) -> list[str]:
        return [s.window.key for s in self.windows if s.origin == origin]

    @property
    def cached_windows(self) -> list[str]:
        return self._keys("cache")

    @property
    def computed_windows(self) -> list[str]:
        return self._keys("computed")

    @property
    def empty_windows(self) -> list[str]:
        """Windows without a single candle of their own: nothing to learn from or act on."""
        return self._keys("empty")

    def sources(self) -> dict[str, dict]:
        """Per window key: the checksum of its input candles and the digest of its vectors."""
        return {s.window.key: {"candle_checksum": s.candle_checksum, "content_digest": s.content_digest}
                for s in self.windows}


class SpanCandles:
    """The candles of a span of windows with the warmup before it, read once and only if needed."""

    def __init__(self, conn: psycopg.Connection, market: Market, start_us: int, end_us: int, warmup: int):
        self._conn, self._market, self._range, self._warmup = conn, market, (start_us, end_us), warmup
        self._candles: CandleArrays | None = None

    def get(self) -> CandleArrays:
        if self._candles is None:
            self._candles = load_candles_with_warmup(self._conn, self._market, *self._range, self._warmup)
        return self._candles

    def window_input(self, window: Window) -> CandleArrays:
        """The canonical input of `window`: `warmup` candles before it, then its own."""
        candles = self.get()
        lo, hi = (int(i) for i in np.searchsorted(candles.ts, [window.start, window.end]))
        return candles.slice(max(0, lo - self._warmup), hi)


def windows_covering(scheme: WindowScheme, start_us: int, end_us: int) -> list[Window]:
    if end_us <= start_us:
        raise ValueError(f"empty range: end {end_us} is not after start {start_us}")
    windows = [scheme.containing(start_us)]
    while windows[-1].end < end_us:
        windows.append(scheme.next(windows[-1]))
    return windows


def load_vectors(
    conn: psycopg.Connection,
    market: Market,
    spec: FeatureSetSpec,
    start_us: int,
    end_us: int,
    *,
    scheme: WindowScheme | None = None,
) -> VectorRead:
    """The canonical vectors of `market` for start <= ts < end under feature set `spec`."""
    scheme = scheme or WindowScheme(spec.anchor)
    windows = windows_covering(scheme, start_us, end_us)
    register_feature_set(conn, spec)
    candles = SpanCandles(conn, market, windows[0].start, windows[-1].end, spec.warmup)
    sources = _refresh_windows(conn, market, spec, scheme, windows, candles)
    return VectorRead(conn, market, spec, start_us, end_us, sources, candles)


def _refresh_windows(
    conn: psycopg.Connection,
    market: Market,
    spec: FeatureSetSpec,
    scheme: WindowScheme,
    windows: list[Window],
    candles: SpanCandles,
) -> list[WindowSource]:
    """Make every window current in the snapshot store; candles are read only for windows whose stamp moved."""
    stamps = window_input_stamps(conn, market, [(w.start, w.end) for w in windows], spec.warmup)
    records = window_records(conn, market, spec.fingerprint, windows[0].start, windows[-1].end)
    return [
        _refresh_window(conn, market, spec, scheme, window, stamp, records.get(window.start), candles)
        for window, stamp in zip(windows, stamps, strict=True)
    ]


def _refresh_window(
    conn: psycopg.Connection,
    market: Market,
    spec: FeatureSetSpec,
    scheme: WindowScheme,
    window: Window,
    stamp: CandleStamp,
    record: WindowRecord | None,
    candles: SpanCandles,
) -> WindowSource:
    if record is not None and record.matches(stamp):
        origin = "cache" if record.rows else "empty"
        return WindowSource(window, origin, record.candle_checksum, record.content_digest, record.rows)
    window_candles = candles.window_input(window)
    checksum = window_candles.checksum()
    if record is not None and record.candle_checksum == checksum:
        restamp_window(conn, market, spec.fingerprint, window, stamp)
        return WindowSource(window, "cache" if record.rows else "empty", checksum, record.content_digest, record.rows)
    frame = compute_features(spec, window_candles, scheme, window.start)
    write_window(conn, market, spec, window, frame, checksum, len(window_candles), stamp)
    return WindowSource(window, "computed" if len(frame) else "empty", checksum, frame.digest(), len(frame))


def vectors_from_candles(
    conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, start_us: int, end_us: int,
    *, scheme: WindowScheme | None = None, cache: CandleInputCache | None = None,
) -> FeatureFrame:
    """The canonical vectors for start <= ts < end computed from the candles alone: no snapshot read or written.

    The live path for the newest bars: one candle read (the anchor's warmup, then the candles up to
    `end`) and the pipeline over it; the same rule gives the same bytes as the stored snapshots. With a
    `cache` (a long-lived decider's), the read fetches only the candles written since its last one;
    start and end must then lie in one window.
    """
    scheme = scheme or WindowScheme(spec.anchor)
    window = scheme.containing(start_us)
    if cache is None:
        candles = load_candles_with_warmup(conn, market, window.start, end_us, spec.warmup)
    else:
        candles = cache.read(conn, market, window.start, window.end, end_us, spec.warmup)
    return compute_features(spec, candles, scheme, start_us, end_us)
