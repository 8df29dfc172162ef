"""Small PNG plots for metadata panels and MLflow artifacts (matplotlib, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def line_png(
    x: np.ndarray, series: dict[str, np.ndarray], title: str, *, max_points: int = 2000, time_axis: bool = False,
    size: tuple[float, float] = (6, 2.2),
) -> bytes:
    """One or more lines over a shared x (epoch microseconds when `time_axis`), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, len(x) // max_points)
    xs = np.asarray(x[::step], dtype="datetime64[us]") if time_axis else np.asarray(x[::step])
    fig, ax = plt.subplots(figsize=size, dpi=90)
    for label, values in series.items():
        ax.plot(xs, np.asarray(values)[::step], linewidth=0.8, label=label)
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if time_axis:
        fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def moving_average(values: Sequence[float], width: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < width or width <= 1:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")
