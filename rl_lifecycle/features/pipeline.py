"""The pure feature pipeline: TA-Lib over candle segments, normalisation, the canonical rule.

`vector(t) = pipeline(candles[anchor(t) - warmup, ..., t])`: every window is computed as one
segment that starts `warmup` rows before the window's first candle. TA-Lib is causal for a
fixed segment start, so a whole window, a half-finished window and any range computation
agree bit for bit on every row they share. Determinism rules followed here: TA-Lib and
elementwise numpy ufuncs only (no numpy reductions, whose summation order can depend on length
or alignment), the same operations in the same order for every row, no threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import talib
from numpy.lib.stride_tricks import sliding_window_view

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import SERIES, FeatureSetSpec, Normalise
from rl_lifecycle.windows import WindowScheme


def _layout_ok(arr: np.ndarray) -> bool:
    """Row-major, or column-major with every column contiguous (a Fortran-ordered matrix or a row
    slice of one, as `slice_ts` returns)."""
    if arr.flags.c_contiguous:
        return True
    n, size = arr.shape[0], arr.itemsize
    return arr.ndim == 2 and arr.strides[0] == size and arr.strides[1] >= n * size


_DIGEST_ROWS = 1 << 16  # rows hashed per chunk: bounds the row-major copy of a column-major frame


@dataclass(frozen=True, eq=False)
class FeatureFrame:
    """Feature rows in declared column order. The constructor makes the arrays it is given read-only.

    `values` and `missing` are (n, k) and either row-major (C order, e.g. read back from the
    store) or column-major (each column contiguous, as the pipeline writes them). The layout is
    not part of the content: `digest()` and the check helpers see the same row-major bytes either way.
    """

    ts: np.ndarray  # int64[n], epoch microseconds (candle open time)
    values: np.ndarray  # float64[n, k], C-contiguous or column-major; NaN/inf where undefined
    is_warm: np.ndarray  # bool[n]: past the warmup and no feature missing
    missing: np.ndarray  # bool[n, k]: the value is NaN or infinite; same layout rules as values
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n, k = len(self.ts), len(self.feature_names)
        expected = {
            "ts": (np.int64, (n,)),
            "values": (np.float64, (n, k)),
            "is_warm": (np.bool_, (n,)),
            "missing": (np.bool_, (n, k)),
        }
        for name, (dtype, shape) in expected.items():
            arr = getattr(self, name)
            if arr.dtype != dtype or arr.shape != shape or not _layout_ok(arr):
                raise ValueError(f"FeatureFrame.{name}: expected row- or column-major {np.dtype(dtype)}{list(shape)}, "
                                 f"got {arr.dtype}{list(arr.shape)} with strides {arr.strides}")
            arr.flags.writeable = False

    def __len__(self) -> int:
        return len(self.ts)

    def digest(self) -> str:
        """sha256 over the raw row-major (C order) bytes of ts, values, is_warm, missing (fixed dtypes).

        Independent of the memory layout: a column-major frame hashes exactly like its row-major copy.
        """
        h = hashlib.sha256()
        for arr in (self.ts, self.values, self.is_warm, self.missing):
            for lo in range(0, len(arr), _DIGEST_ROWS):  # sha256 is streamed: chunking changes nothing
                h.update(memoryview(np.ascontiguousarray(arr[lo : lo + _DIGEST_ROWS])))
        return h.hexdigest()

    def slice_ts(self, start_us: int, end_us: int) -> FeatureFrame:
        """Rows with start_us <= ts < end_us (views, no copy)."""
        lo, hi = np.searchsorted(self.ts, [start_us, end_us], side="left")
        return FeatureFrame(self.ts[lo:hi], self.values[lo:hi], self.is_warm[lo:hi], self.missing[lo:hi],
                            self.feature_names)

    @classmethod
    def empty(cls, feature_names: Sequence[str]) -> FeatureFrame:
        k = len(feature_names)
        return cls(np.empty(0, np.int64), np.empty((0, k)), np.empty(0, np.bool_), np.empty((0, k), np.bool_),
                   tuple(feature_names))

    @classmethod
    def concat(cls, frames: Sequence[FeatureFrame]) -> FeatureFrame:
        if not frames:
            raise ValueError("FeatureFrame.concat needs at least one frame (use FeatureFrame.empty)")
        names = frames[0].feature_names
        if any(f.feature_names != names for f in frames):
            raise ValueError("FeatureFrame.concat: frames have different feature names")
        return cls(*(np.concatenate([getattr(f, a) for f in frames]) for a in ("ts", "values", "is_warm", "missing")),
                   feature_names=names)


# -- indicators ----------------------------------------------------------------

Series = dict[str, np.ndarray]


def _logret(close: np.ndarray, period: int) -> np.ndarray:
    out = np.empty(len(close))
    out[:period] = np.nan  # every row is written once: NaN where there is no close[t - period]
    if len(close) > period:
        np.divide(close[period:], close[:-period], out=out[period:])
        np.log(out[period:], out=out[period:])
    return out


def _rvol(close: np.ndarray, period: int) -> np.ndarray:
    """Population std of the last `period` one-bar log returns, summed in a fixed order per row."""
    out = np.full(len(close), np.nan)
    if len(close) <= period:
        return out
    returns = np.log(close[1:] / close[:-1])  # returns[i] is the return into row i + 1
    windows = sliding_window_view(returns, period)  # row j covers rows j+1 .. j+period -> lands on row j+period
    total = windows[:, 0].copy()
    for j in range(1, period):
        total += windows[:, j]
    mean = total / period
    acc = np.zeros_like(mean)
    dev = np.empty_like(mean)
    for j in range(period):
        np.subtract(windows[:, j], mean, out=dev)
        np.multiply(dev, dev, out=dev)
        acc += dev
    acc /= period
    np.sqrt(acc, out=out[period:])
    return out


def _logrange(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    out = np.divide(high, low)
    return np.log(out, out=out)


@dataclass(frozen=True)
class _Step:
    run: Callable[[Series], tuple[np.ndarray, ...]]
    outputs: tuple[tuple[int, Normalise], ...]  # (index into run's outputs, normalisation)


def talib_function(name: str) -> Callable[..., np.ndarray | tuple[np.ndarray, ...]]:
    """TA-Lib's compiled function `name`, without the pandas/polars shim `talib` wraps it in when
    either is installed. The shim only converts Series (we pass numpy arrays) and calls this very
    function, so results are the same; it costs ~2 us a call, and a windowed pipeline makes
    hundreds of calls."""
    func = getattr(talib, name)
    return getattr(func, "__wrapped__", func)


_SMA, _STDDEV = talib_function("SMA"), talib_function("STDDEV")


def _talib_runner(name: str, inputs: tuple[str, ...], params: dict) -> Callable[[Series], tuple[np.ndarray, ...]]:
    func = talib_function(name)

    def run(series: Series) -> tuple[np.ndarray, ...]:
        result = func(*(series[s] for s in inputs), **params)
        outs = result if isinstance(result, tuple) else (result,)
        return tuple(np.asarray(o, dtype=np.float64) for o in outs)  # pattern functions return ints

    return run


def _native_runner(name: str, inputs: tuple[str, ...], params: dict) -> Callable[[Series], tuple[np.ndarray, ...]]:
    if name == "LOGRET":
        return lambda s: (_logret(s[inputs[0]], int(params["period"])),)
    if name == "RVOL":
        return lambda s: (_rvol(s[inputs[0]], int(params["period"])),)
    return lambda s: (_logrange(s[inputs[0]], s[inputs[1]]),)


def _check_talib_state(spec: FeatureSetSpec) -> None:
    # Global TA-Lib settings change outputs without changing the spec: refuse rather than drift.
    if talib.get_compatibility() != 0:
        raise RuntimeError("TA-Lib compatibility mode was changed from the default (0); features would drift")
    for ind in spec.indicators:
        if ind.info.unstable and talib.get_unstable_period(ind.function) != 0:
            raise RuntimeError(
                f"TA-Lib unstable period of {ind.function} is {talib.get_unstable_period(ind.function)}, "
                "not 0; features would drift"
            )


def _compile(spec: FeatureSetSpec) -> list[_Step]:
    _check_talib_state(spec)
    steps = []
    for ind in spec.indicators:
        info = ind.info
        make = _native_runner if info.native else _talib_runner
        outputs = tuple((info.outputs.index(o.output), o.normalise) for o in ind.outputs)
        steps.append(_Step(make(ind.function, ind.inputs, dict(ind.params)), outputs))
    return steps


def _normalise(
    x: np.ndarray, norm: Normalise, close: np.ndarray, lo: int, hi: int, out: np.ndarray, flags: np.ndarray
) -> None:
    """Write rows lo:hi of the normalised series into `out` (x covers the whole segment).

    `flags` is bool scratch of out's length, free to overwrite."""
    kind = norm.kind
    if kind == "none":
        np.copyto(out, x[lo:hi])
    elif kind in ("relative_to_close", "log_ratio"):
        np.divide(x[lo:hi], close[lo:hi], out=out)
        if kind == "log_ratio":
            np.log(out, out=out)
    elif kind == "difference":
        period = int(norm.period or 0)
        start = max(lo, period)  # rows before `period` have no x[t - period]
        out[: start - lo] = np.nan
        if start < hi:
            np.subtract(x[start:hi], x[start - period : hi - period], out=out[start - lo :])
    else:  # zscore: TA-Lib's SMA/STDDEV are causal for a fixed start, like the indicators themselves
        period = int(norm.period or 0)
        sma = _SMA(x, timeperiod=period)
        std = _STDDEV(x, timeperiod=period, nbdev=1.0)[lo:hi]
        np.subtract(x[lo:hi], sma[lo:hi], out=out)
        np.divide(out, std, out=out)
        flat = np.equal(std, 0.0, out=flags)  # a flat stretch has no scale: its z-score is 0, not inf/NaN
        if flat.any():
            out[flat] = 0.0


class _Writer:
    """Fills preallocated column-major frame arrays, feature column by feature column.

    Segments are registered first, then every indicator runs over every segment in turn (one TA-Lib
    call per segment, as always; the order of the calls changes no result). So each feature column
    of `values` (Fortran order) is written top to bottom, in its final place: no transpose, and each
    freshly faulted page of the output is filled while it is still in cache. A column's missing bits
    and its share of the warm flags are computed right after it is written, while it is hot too.
    """

    def __init__(self, spec: FeatureSetSpec, n_rows: int) -> None:
        self.spec, self.steps, k = spec, _compile(spec), len(spec.feature_names)
        self.values = np.empty((n_rows, k), order="F")
        self.missing = np.empty((n_rows, k), np.bool_, order="F")
        self.is_warm = np.empty(n_rows, np.bool_)
        self._segments: list[tuple[Series, int, int, int]] = []

    def add_segment(self, candles: CandleArrays, lo: int, hi: int, dst: int) -> None:
        """Segment `candles` gets the indicators run over all of it; its rows lo:hi go to frame rows dst on."""
        rows = hi - lo
        aged = min(max(self.spec.warmup - lo, 0), rows)  # row i of a segment is aged iff i >= warmup
        self.is_warm[dst : dst + aged], self.is_warm[dst + aged : dst + rows] = False, True
        series = {s: np.ascontiguousarray(getattr(candles, s), dtype=np.float64) for s in SERIES}
        self._segments.append((series, lo, hi, dst))

    def frame(self, ts: np.ndarray) -> FeatureFrame:
        col = 0
        with np.errstate(divide="ignore", invalid="ignore"):  # undefined values are flagged, not warned about
            for step in self.steps:
                for series, lo, hi, dst in self._segments:
                    rows = hi - lo
                    warm = self.is_warm[dst : dst + rows]
                    results = step.run(series)
                    for j, (index, norm) in enumerate(step.outputs):
                        out = self.values[dst : dst + rows, col + j]  # contiguous: column-major
                        mask = self.missing[dst : dst + rows, col + j]  # scratch for _normalise until isfinite
                        _normalise(results[index], norm, series["close"], lo, hi, out, mask)
                        np.isfinite(out, out=mask)
                        np.logical_and(warm, mask, out=warm)
                        np.logical_not(mask, out=mask)
                col += len(step.outputs)
        self._segments.clear()
        return FeatureFrame(np.array(ts, dtype=np.int64), self.values, self.is_warm, self.missing,
                            self.spec.feature_names)


def compute_segment(spec: FeatureSetSpec, candles: CandleArrays, first_output: int) -> FeatureFrame:
    """Indicators over the whole segment, rows from `first_output` on; row i is warm iff i >= warmup."""
    n = len(candles)
    lo = min(max(int(first_output), 0), n)
    writer = _Writer(spec, n - lo)
    if n > lo:
        writer.add_segment(candles, lo, n, 0)
    return writer.frame(candles.ts[lo:])


def compute_features(
    spec: FeatureSetSpec,
    candles: CandleArrays,
    scheme: WindowScheme,
    output_from_us: int,
    output_before_us: int | None = None,
) -> FeatureFrame:
    """The canonical rule over every window intersecting [output_from_us, output_before_us or the last candle].

    `candles` is sorted and starts `warmup` rows before the first output window (or at the start of
    history). Per window w: segment = candles[max(0, idx(w.start) - warmup) : idx(w.end)], rows from
    max(idx(w.start), idx(output_from)) are kept.
    """
    if scheme.cadence != spec.anchor:
        raise ValueError(
            f"feature set {spec.name} is anchored on {spec.anchor} windows; computing it on {scheme.cadence} "
            "windows would give other values under the same fingerprint"
        )
    ts = np.asarray(candles.ts, dtype=np.int64)
    if len(ts) > 1 and not (ts[1:] > ts[:-1]).all():
        raise UserInputError("candles must be sorted by ts without duplicates for the canonical feature rule")
    first = int(np.searchsorted(ts, output_from_us, side="left"))
    last = len(ts) if output_before_us is None else int(np.searchsorted(ts, output_before_us, side="left"))
    last = max(last, first)
    pieces = []  # (segment start, window end, output start, output end) as row indices
    row = first
    while row < last:
        window = scheme.containing(int(ts[row]))
        w_lo, w_hi = (int(i) for i in np.searchsorted(ts, [window.start, window.end], side="left"))
        pieces.append((max(0, w_lo - spec.warmup), w_hi, row, min(w_hi, last)))
        row = w_hi
    writer = _Writer(spec, last - first)
    for seg_lo, seg_hi, out_lo, out_hi in pieces:
        writer.add_segment(candles.slice(seg_lo, seg_hi), out_lo - seg_lo, out_hi - seg_lo, out_lo - first)
    return writer.frame(ts[first:last])
