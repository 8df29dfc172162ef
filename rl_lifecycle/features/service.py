"""Feature use cases: compute a window by the canonical rule, store it, verify it.

The input of window w is always `candles[anchor(w) - warmup, ..., end of w)`, read from the
database by one query, so batch snapshots, datasets and checks see the same candles.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import psycopg

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.candles.store import CandleStamp, load_candles_with_warmup, window_input_stamps
from rl_lifecycle.features.checks import (
    diff_frames,
    lookahead_violations,
    sample_timestamps,
    unflagged_nan_rows,
)
from rl_lifecycle.features.pipeline import FeatureFrame, compute_features
from rl_lifecycle.features.spec import FeatureSetSpec
from rl_lifecycle.features.store import SnapshotWriteStats, read_snapshots, write_window
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import Window, WindowScheme, iso


@dataclass(frozen=True)
class WindowFeatures:
    window: Window
    frame: FeatureFrame
    candles: CandleArrays  # the pipeline's input: warmup rows, then the window's candles
    candle_checksum: str
    stamp: CandleStamp  # taken before the candles were read


def window_input(conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, window: Window) -> CandleArrays:
    return load_candles_with_warmup(conn, market, window.start, window.end, spec.warmup)


def compute_window(
    conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, scheme: WindowScheme, window: Window
) -> WindowFeatures:
    (stamp,) = window_input_stamps(conn, market, [(window.start, window.end)], spec.warmup)
    candles = window_input(conn, market, spec, window)
    frame = compute_features(spec, candles, scheme, window.start)
    return WindowFeatures(window, frame, candles, candles.checksum(), stamp)


def materialize_window(
    conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, scheme: WindowScheme, window: Window
) -> tuple[WindowFeatures, SnapshotWriteStats]:
    """Compute the window and make the stored snapshots equal to it (all-or-nothing)."""
    computed = compute_window(conn, market, spec, scheme, window)
    stats = write_window(
        conn, market, spec, window, computed.frame, computed.candle_checksum, len(computed.candles), computed.stamp
    )
    return computed, stats


def stored_window(conn: psycopg.Connection, market: Market, spec: FeatureSetSpec, window: Window) -> FeatureFrame:
    return read_snapshots(conn, market, spec, window.start, window.end)


# -- checks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckReport:
    passed: bool
    summary: str
    details: list[dict]


def _recompute_in_child(url: str, spec: FeatureSetSpec, cadence: str, partitions: list[tuple[str, str]]) -> list[FeatureFrame]:
    scheme = WindowScheme(cadence)
    with psycopg.connect(url) as conn:
        return [compute_window(conn, Market.parse(m), spec, scheme, scheme.parse(w)).frame for m, w in partitions]


def recompute_in_fresh_process(
    url: str, spec: FeatureSetSpec, scheme: WindowScheme, partitions: list[tuple[Market, Window]]
) -> list[FeatureFrame]:
    """The windows recomputed by one newly spawned interpreter: nothing shared with this process."""
    keys = [(market.key, window.key) for market, window in partitions]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_recompute_in_child, url, spec, scheme.cadence, keys).result()


def check_deterministic(stored: FeatureFrame, recomputed: FeatureFrame) -> CheckReport:
    if stored.digest() == recomputed.digest():
        return CheckReport(True, f"{len(stored)} rows recomputed in a fresh process: identical bytes", [])
    details = diff_frames(stored, recomputed)
    return CheckReport(False, f"stored snapshots differ from a fresh recomputation at {_where(details)}", details)


def check_no_lookahead(
    spec: FeatureSetSpec, scheme: WindowScheme, candles: CandleArrays, window_start_us: int, samples: int = 8, seed: int = 0
) -> CheckReport:
    """Causality of the pipeline on these candles: no sampled row may change when the candles after
    it are cut off or perturbed.

    The reference is a fresh batch computation from `candles`, never the stored frame: stored rows
    that no longer match the candles are stale, which `check_deterministic` reports, not lookahead.
    """
    reference = compute_features(spec, candles, scheme, window_start_us)
    if len(reference) == 0:
        return CheckReport(False, f"no candles from {iso(window_start_us)} on to check", [])
    sampled = sample_timestamps(reference.ts, samples, seed)
    violations = lookahead_violations(spec, candles, scheme, reference, sampled, seed)
    if violations:
        return CheckReport(False, f"{len(violations)} sampled rows change when later candles change: {_where(violations)}", violations)
    return CheckReport(True, f"{len(sampled)} sampled timestamps unchanged by truncation and by perturbing later candles", [])


def check_warmup_flagged(stored: FeatureFrame) -> CheckReport:
    rows = unflagged_nan_rows(stored)
    if rows:
        return CheckReport(False, f"{len(rows)} rows hold NaN without being flagged: {_where(rows)}", rows)
    return CheckReport(True, f"every NaN is flagged; {int(stored.is_warm.sum())}/{len(stored)} rows warm", [])


def _where(details: list[dict], shown: int = 3) -> str:
    """The first few differences as `ts [features]`, for a check's one-line description."""
    parts = []
    for d in details[:shown]:
        features = d.get("features") or d.get("unflagged") or ([d["feature"]] if "feature" in d else [])
        parts.append(f"{d['ts']} [{', '.join(features)}]" if "ts" in d else str(d.get("kind", d)))
    more = len(details) - shown
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


# -- statistics shown in the UI -------------------------------------------------------------------
def feature_statistics(frame: FeatureFrame) -> list[dict]:
    """Per feature, over warm rows: mean, std, min, max; over all rows: missing rate."""
    warm = frame.values[frame.is_warm]
    stats = []
    for i, name in enumerate(frame.feature_names):
        column = warm[:, i] if len(warm) else np.array([np.nan])
        stats.append({
            "feature": name,
            "mean": float(np.nanmean(column)) if len(warm) else float("nan"),
            "std": float(np.nanstd(column)) if len(warm) else float("nan"),
            "min": float(np.nanmin(column)) if len(warm) else float("nan"),
            "max": float(np.nanmax(column)) if len(warm) else float("nan"),
            "missing_rate": float(frame.missing[:, i].mean()) if len(frame) else 0.0,
        })
    return stats
