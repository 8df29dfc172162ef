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
    # The object API without pyplot or a tight bounding box: about half the time per plot, which
    # counts when a backfill run draws one per window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    step = max(1, len(x) // max_points)
    xs = np.asarray(x[::step], dtype="datetime64[us]") if time_axis else np.asarray(x[::step])
    fig = Figure(figsize=size, dpi=90)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.32 if time_axis else 0.12)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, values in series.items():
        ax.plot(xs, np.asarray(values)[::step], linewidth=0.8, label=label)
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if time_axis:
        fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def moving_average(values: Sequence[float], width: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < width or width <= 1:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")
