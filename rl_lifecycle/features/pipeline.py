"""The pure feature pipeline: TA-Lib over candle segments, normalisation, the canonical rule.

`vector(t) = pipeline(candles[anchor(t) - warmup, ..., t])`: every window is computed as one
segment that starts `warmup` rows before the window's first candle. TA-Lib is causal for a
fixed segment start, so a whole window, a half-finished window and any range computation
agree bit for bit on every row they share. Determinism rules followed here: only elementwise
numpy ufuncs on contiguous arrays (no reductions whose order could depend on length or
alignment), the same operations in the same order for every row, no threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import talib
from numpy.lib.stride_tricks import sliding_window_view

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.features.spec import FeatureSetSpec, Normalise
from rl_lifecycle.windows import WindowScheme


@dataclass(frozen=True, eq=False)
class FeatureFrame:
    """Feature rows in declared column order; arrays are read-only."""

    ts: np.ndarray  # int64[n], epoch microseconds (candle open time)
    values: np.ndarray  # float64[n, k], C-contiguous; NaN/inf where undefined
    is_warm: np.ndarray  # bool[n]: past the warmup and no feature missing
    missing: np.ndarray  # bool[n, k]: the value is NaN or infinite
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
            if arr.dtype != dtype or arr.shape != shape or not arr.flags.c_contiguous:
                raise ValueError(f"FeatureFrame.{name}: expected C-contiguous {np.dtype(dtype)}{list(shape)}, "
                                 f"got {arr.dtype}{list(arr.shape)}")
            arr.flags.writeable = False

    def __len__(self) -> int:
        return len(self.ts)

    def digest(self) -> str:
        """sha256 over the raw bytes of ts, values, is_warm, missing (fixed dtypes, C order)."""
        h = hashlib.sha256()
        for arr in (self.ts, self.values, self.is_warm, self.missing):
            h.update(memoryview(arr))
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
    out = np.full(len(close), np.nan)
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


def _talib_runner(name: str, inputs: tuple[str, ...], params: dict) -> Callable[[Series], tuple[np.ndarray, ...]]:
    func = getattr(talib, name)

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
    for name in spec.talib_functions:
        try:
            unstable = talib.get_unstable_period(name)
        except KeyError:  # the function has no unstable period
            continue
        if unstable != 0:
            raise RuntimeError(f"TA-Lib unstable period of {name} is {unstable}, not 0; features would drift")


def _compile(spec: FeatureSetSpec) -> list[_Step]:
    _check_talib_state(spec)
    steps = []
    for ind in spec.indicators:
        info = ind.info
        make = _native_runner if info.native else _talib_runner
        outputs = tuple((info.outputs.index(o.output), o.normalise) for o in ind.outputs)
        steps.append(_Step(make(ind.function, ind.inputs, dict(ind.params)), outputs))
    return steps


def _normalise(x: np.ndarray, norm: Normalise, close: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Write rows lo:hi of the normalised series into `out` (x covers the whole segment)."""
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
        np.subtract(x[start:hi], x[start - period : hi - period], out=out[start - lo :])
    else:  # zscore: TA-Lib's SMA/STDDEV are causal for a fixed start, like the indicators themselves
        period = int(norm.period or 0)
        sma = talib.SMA(x, timeperiod=period)
        std = talib.STDDEV(x, timeperiod=period, nbdev=1.0)[lo:hi]
        np.subtract(x[lo:hi], sma[lo:hi], out=out)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(out, std, out=out)
        flat = std == 0  # a flat stretch has no scale: its z-score is 0, not inf/NaN
        if flat.any():
            out[flat] = 0.0


def _fill(steps: list[_Step], candles: CandleArrays, lo: int, hi: int, block: np.ndarray) -> None:
    """Run every step over the whole segment; write rows lo:hi column-major into block[k, hi - lo].

    Column-major keeps every write contiguous; the one transpose into the row-major frame happens
    while the block is still in cache.
    """
    series = {s: np.ascontiguousarray(getattr(candles, s), dtype=np.float64)
              for s in ("open", "high", "low", "close", "volume")}
    close = series["close"]
    col = 0
    for step in steps:
        results = step.run(series)
        for index, norm in step.outputs:
            _normalise(results[index], norm, close, lo, hi, block[col])
            col += 1


def _emit(block: np.ndarray, finite: np.ndarray, aged: np.ndarray, values: np.ndarray, missing: np.ndarray,
          is_warm: np.ndarray) -> None:
    """Transpose a column-major block into frame rows; derive warm flags and the missing mask.

    `finite` is scratch shaped like `block`. Every pass here is contiguous except the one transpose.
    """
    np.isfinite(block, out=finite)
    np.logical_and.reduce(finite, axis=0, out=is_warm)  # elementwise across the k feature rows
    is_warm &= aged
    values[...] = block.T
    np.isfinite(values, out=missing)
    np.logical_not(missing, out=missing)


def compute_segment(spec: FeatureSetSpec, candles: CandleArrays, first_output: int) -> FeatureFrame:
    """Indicators over the whole segment, rows from `first_output` on; row i is warm iff i >= warmup."""
    n = len(candles)
    lo = min(max(int(first_output), 0), n)
    frame = _allocate(candles.ts[lo:], spec)
    if n > lo:
        block = np.empty((len(spec.feature_names), n - lo))
        _fill(_compile(spec), candles, lo, n, block)
        _emit(block, np.empty(block.shape, np.bool_), np.arange(lo, n) >= spec.warmup, frame.values,
              frame.missing, frame.is_warm)
    return _frozen(frame)


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
    ts = np.asarray(candles.ts, dtype=np.int64)
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
    frame = _allocate(ts[first:last], spec)
    if pieces:
        steps = _compile(spec)
        # Scratch reused by every window; sliced per window so each stays C-contiguous.
        shape = (len(spec.feature_names), max(hi - lo for _, _, lo, hi in pieces))
        block, finite = np.empty(shape), np.empty(shape, np.bool_)
        for seg_lo, seg_hi, out_lo, out_hi in pieces:
            rows, dst = out_hi - out_lo, slice(out_lo - first, out_hi - first)
            flat_block = block.reshape(-1)[: shape[0] * rows].reshape(shape[0], rows)
            flat_finite = finite.reshape(-1)[: shape[0] * rows].reshape(shape[0], rows)
            _fill(steps, candles.slice(seg_lo, seg_hi), out_lo - seg_lo, out_hi - seg_lo, flat_block)
            aged = np.arange(out_lo - seg_lo, out_hi - seg_lo) >= spec.warmup
            _emit(flat_block, flat_finite, aged, frame.values[dst], frame.missing[dst], frame.is_warm[dst])
    return _frozen(frame)


@dataclass
class _Buffers:
    ts: np.ndarray
    values: np.ndarray
    is_warm: np.ndarray
    missing: np.ndarray
    feature_names: tuple[str, ...]


def _allocate(ts: np.ndarray, spec: FeatureSetSpec) -> _Buffers:
    n, k = len(ts), len(spec.feature_names)
    return _Buffers(np.array(ts, dtype=np.int64), np.empty((n, k)), np.empty(n, np.bool_), np.empty((n, k), np.bool_),
                    spec.feature_names)


def _frozen(b: _Buffers) -> FeatureFrame:
    return FeatureFrame(b.ts, b.values, b.is_warm, b.missing, b.feature_names)
