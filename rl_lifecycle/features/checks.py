"""Pure helpers behind the feature asset checks: byte-level diffs, lookahead probes, NaN audits.

They return lists of plain dicts (JSON-friendly: non-finite floats become strings) so a Dagster
asset check can show them as metadata without knowing anything about numpy.
"""

from __future__ import annotations

import numpy as np

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.features.pipeline import FeatureFrame, compute_features
from rl_lifecycle.features.spec import FeatureSetSpec
from rl_lifecycle.windows import WindowScheme, iso


def _num(value: float) -> float | str:
    value = float(value)
    return value if np.isfinite(value) else str(value)


def _at(ts_us: int) -> dict:
    return {"ts": iso(ts_us), "ts_us": int(ts_us)}


def _bits(values: np.ndarray) -> np.ndarray:
    """float64 cells as their uint64 bit patterns: NaN == NaN when the bits match, and -0.0 != 0.0,
    exactly like the stored bytes. A same-itemsize view is valid for any layout or strides, and the
    comparisons below are elementwise, so row- and column-major frames compare by content alone."""
    return values.view(np.uint64)


def _row_differences(expected: FeatureFrame, e_rows: np.ndarray, actual: FeatureFrame, a_rows: np.ndarray) -> list[dict]:
    """Cell and warm-flag differences between aligned rows, in row order then column order."""
    cells = (_bits(expected.values[e_rows]) != _bits(actual.values[a_rows])) | (
        expected.missing[e_rows] != actual.missing[a_rows]
    )
    warm = expected.is_warm[e_rows] != actual.is_warm[a_rows]
    out = []
    for i in np.flatnonzero(cells.any(axis=1) | warm):
        e, a = int(e_rows[i]), int(a_rows[i])
        if warm[i]:
            out.append({"kind": "is_warm", **_at(expected.ts[e]), "expected": bool(expected.is_warm[e]),
                        "actual": bool(actual.is_warm[a])})
        for j in np.flatnonzero(cells[i]):
            out.append({
                "kind": "value", **_at(expected.ts[e]), "feature": expected.feature_names[j],
                "expected": _num(expected.values[e, j]), "actual": _num(actual.values[a, j]),
                "expected_missing": bool(expected.missing[e, j]), "actual_missing": bool(actual.missing[a, j]),
            })
    return out


def diff_frames(expected: FeatureFrame, actual: FeatureFrame, limit: int = 20) -> list[dict]:
    """Everything that differs byte for byte; at most `limit` entries plus a `truncated` count."""
    if expected.feature_names != actual.feature_names:
        return [{"kind": "feature_names", "expected": list(expected.feature_names),
                 "actual": list(actual.feature_names)}]
    out: list[dict] = []
    if len(expected) != len(actual):
        out.append({"kind": "length", "expected": len(expected), "actual": len(actual)})
    if len(expected) == len(actual) and np.array_equal(expected.ts, actual.ts):
        rows = np.arange(len(expected))
        out += _row_differences(expected, rows, actual, rows)
    else:
        common, e_rows, a_rows = np.intersect1d(expected.ts, actual.ts, assume_unique=True, return_indices=True)
        only_e = np.setdiff1d(expected.ts, common, assume_unique=True)
        only_a = np.setdiff1d(actual.ts, common, assume_unique=True)
        out.append({
            "kind": "ts", "only_expected": int(len(only_e)), "only_actual": int(len(only_a)),
            "first_only_expected": iso(int(only_e[0])) if len(only_e) else None,
            "first_only_actual": iso(int(only_a[0])) if len(only_a) else None,
        })
        out += _row_differences(expected, e_rows, actual, a_rows)
    if len(out) > limit:
        return [*out[:limit], {"kind": "truncated", "more": len(out) - limit}]
    return out


def sample_timestamps(ts: np.ndarray, n: int, seed: int) -> list[int]:
    """`n` distinct timestamps (sorted), always including the first and the last; same seed, same sample."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) <= max(n, 2):
        return [int(t) for t in ts]
    rng = np.random.default_rng(seed)
    inner = rng.choice(np.arange(1, len(ts) - 1), size=max(n - 2, 0), replace=False)
    return [int(ts[i]) for i in sorted({0, len(ts) - 1, *inner.tolist()})]


def perturb_after(candles: CandleArrays, start: int, rng: np.random.Generator) -> CandleArrays:
    """Candles with every row from `start` on rescaled by a random factor per row (volume separately).

    One positive factor per row keeps low <= open, close <= high; different factors per row change
    the path, so any feature that reads a later candle changes too.
    """
    m = len(candles) - start
    price = np.exp(rng.normal(0.0, 0.05, m))
    volume = rng.uniform(0.25, 4.0, m)
    cols = {}
    for name in ("open", "high", "low", "close", "volume"):
        col = np.array(getattr(candles, name), dtype=np.float64)
        col[start:] *= volume if name == "volume" else price
        cols[name] = col
    return CandleArrays(ts=np.array(candles.ts, dtype=np.int64), **cols)


def lookahead_violations(
    spec: FeatureSetSpec,
    candles: CandleArrays,
    scheme: WindowScheme,
    reference: FeatureFrame,
    sample_ts: list[int],
    seed: int,
) -> list[dict]:
    """Recompute each sampled row with the future cut off, then with the future perturbed.

    `reference` must come from `compute_features` over these same candles. The row at t (values,
    missing mask, warm flag) must equal the reference bit for bit in both variants.
    """
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for t in sample_ts:
        i = int(np.searchsorted(candles.ts, t))
        r = int(np.searchsorted(reference.ts, t))
        if i >= len(candles) or candles.ts[i] != t or r >= len(reference) or reference.ts[r] != t:
            out.append({"kind": "unknown_ts", **_at(t), "detail": "not in both the candles and the reference"})
            continue
        variants = {
            "truncated": compute_features(spec, candles.slice(0, i + 1), scheme, t),
            # The segment still runs to the end of t's window, so perturbed later candles are read.
            "perturbed": compute_features(spec, perturb_after(candles, i + 1, rng), scheme, t, t + 1),
        }
        for variant, frame in variants.items():
            if len(frame) != 1 or frame.ts[0] != t:
                out.append({"kind": "lookahead", "variant": variant, **_at(t), "detail": "row not recomputed"})
                continue
            bad = (_bits(frame.values[0]) != _bits(reference.values[r])) | (
                frame.missing[0] != reference.missing[r]
            )
            if bad.any() or frame.is_warm[0] != reference.is_warm[r]:
                out.append({
                    "kind": "lookahead", "variant": variant, **_at(t),
                    "features": [reference.feature_names[j] for j in np.flatnonzero(bad)],
                    "is_warm": {"reference": bool(reference.is_warm[r]), "recomputed": bool(frame.is_warm[0])},
                })
    return out


def unflagged_nan_rows(frame: FeatureFrame, limit: int = 20) -> list[dict]:
    """Rows with a NaN/inf whose missing bit is not set, and warm rows holding a NaN/inf."""
    nonfinite = ~np.isfinite(frame.values)
    unflagged = nonfinite & ~frame.missing
    warm_bad = frame.is_warm & (nonfinite | frame.missing).any(axis=1)
    out = []
    for i in np.flatnonzero(unflagged.any(axis=1) | warm_bad)[:limit]:
        out.append({
            **_at(frame.ts[i]),
            "unflagged": [frame.feature_names[j] for j in np.flatnonzero(unflagged[i])],
            "warm_with_nan": bool(warm_bad[i]),
        })
    return out
