"""Benchmark: the feature pipeline against the bare TA-Lib calls it wraps (wired into `make bench`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.features.pipeline import _native_runner, compute_features, talib_function
from rl_lifecycle.features.spec import SERIES, FeatureSetSpec, load_feature_set
from rl_lifecycle.windows import WindowScheme, to_us

TARGET_RATIO = 1.3


def random_walk_candles(n: int, step_us: int = 60_000_000, start: str = "2022-01-01", seed: int = 7) -> CandleArrays:
    """Seeded geometric random walk with valid OHLCV (low <= open, close <= high; volume > 0)."""
    rng = np.random.default_rng(seed)
    ts = to_us(start) + np.arange(n, dtype=np.int64) * step_us
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))
    open_ = np.concatenate(([100.0], close[:-1]))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.0005, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.0005, n)))
    volume = rng.lognormal(3.0, 0.5, n)
    return CandleArrays(ts, open_, high, low, close, volume)


def _bare_talib(spec: FeatureSetSpec, candles: CandleArrays) -> Callable[[], None]:
    """Every TA-Lib call the feature set implies, once each on the full arrays, with nothing around them.

    That is each TA-Lib indicator, plus the `talib.SMA` and `talib.STDDEV` that a z-score
    normalisation runs over its output (TA-Lib calls on the same arrays; the pipeline makes them
    too). A z-scored native (non-TA-Lib) output is computed once up front, untimed: only the
    TA-Lib calls over it are part of the baseline.
    """
    series = {s: np.ascontiguousarray(getattr(candles, s), dtype=np.float64) for s in SERIES}
    zscores = {}  # indicator index -> [(output index, period)]
    for i, ind in enumerate(spec.indicators):
        for out in ind.outputs:
            if out.normalise.kind == "zscore":
                zscores.setdefault(i, []).append((ind.info.outputs.index(out.output), int(out.normalise.period or 0)))
    native_outputs = {i: _native_runner(ind.function, ind.inputs, dict(ind.params))(series)
                      for i, ind in enumerate(spec.indicators) if ind.info.native and i in zscores}
    functions = {i: talib_function(ind.function) for i, ind in enumerate(spec.indicators) if not ind.info.native}
    sma, stddev = talib_function("SMA"), talib_function("STDDEV")  # the pipeline's entry points, too

    def run() -> None:
        for i, ind in enumerate(spec.indicators):
            if ind.info.native:
                outs = native_outputs.get(i, ())
            else:
                result = functions[i](*(series[s] for s in ind.inputs), **dict(ind.params))
                outs = result if isinstance(result, tuple) else (result,)
            for index, period in zscores.get(i, ()):
                x = np.asarray(outs[index], dtype=np.float64)  # pattern functions return ints
                sma(x, timeperiod=period)
                stddev(x, timeperiod=period, nbdev=1.0)

    return run


def bench_pipeline_vs_talib(n_candles: int = 1_000_000, repeats: int = 5, feature_set: str = "ta_v2") -> dict:
    """Median seconds of `compute_features` (monthly windows) over median seconds of the bare TA-Lib
    baseline: every TA-Lib call the feature set implies, once each on the full arrays, i.e. the
    spec's TA-Lib indicators plus the `talib.SMA`/`talib.STDDEV` calls of its z-score
    normalisations (see `_bare_talib`). Both are timed in the same run, alternating, so drift hits
    both alike; the ratio is of the medians over `repeats` runs each."""
    spec = load_feature_set(feature_set)
    candles = random_walk_candles(n_candles)
    scheme = WindowScheme("monthly")
    start = int(candles.ts[0])

    def pipeline() -> None:
        compute_features(spec, candles, scheme, start)

    bare = _bare_talib(spec, candles)

    timings: dict[str, list[float]] = {"bare": [], "pipeline": []}
    pipeline(), bare()  # first-touch page faults and lazy imports are not what we measure
    for _ in range(repeats):
        for name, func in (("bare", bare), ("pipeline", pipeline)):
            began = time.perf_counter()
            func()
            timings[name].append(time.perf_counter() - began)
    baseline = statistics.median(timings["bare"])
    seconds = statistics.median(timings["pipeline"])
    ratio = seconds / baseline
    return {
        "value": round(ratio, 3),
        "unit": "x",
        "baseline": round(baseline, 4),
        "pipeline_seconds": round(seconds, 4),
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "n_candles": n_candles,
        "repeats": repeats,
        "feature_set": feature_set,
        "baseline_calls": "TA-Lib indicators + z-score SMA/STDDEV",
        "features": len(spec.feature_names),
    }


if __name__ == "__main__":
    print(bench_pipeline_vs_talib())
