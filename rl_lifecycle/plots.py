"""PNG plots for metadata panels and MLflow artifacts (matplotlib, no display).

Sizes are in pixels people read: `PLOT_DPI` dots per inch, a plot `PLOT_WIDTH_IN` inches wide
(1200 px: about the width of the Dagster metadata panel's markdown view on a laptop screen, and full
size in MLflow's artifact viewer). Time axes use matplotlib's concise date labels, so they never
overlap however long the span."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

PLOT_DPI = 100
PLOT_WIDTH_IN = 12.0
PLOT_HEIGHT_IN = 4.0


def line_png(
    x: np.ndarray, series: dict[str, np.ndarray], title: str, *, max_points: int = 2000, time_axis: bool = False,
    size: tuple[float, float] = (PLOT_WIDTH_IN, PLOT_HEIGHT_IN),
) -> bytes:
    """One or more lines over a shared x (epoch microseconds when `time_axis`), as PNG bytes."""
    # The object API without pyplot or a tight bounding box: about half the time per plot, which
    # counts when a backfill run draws one per window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    step = max(1, len(x) // max_points)
    xs = np.asarray(x[::step], dtype="datetime64[us]") if time_axis else np.asarray(x[::step])
    fig = Figure(figsize=size, dpi=PLOT_DPI)
    fig.subplots_adjust(left=0.07, right=0.985, top=0.9, bottom=0.14)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, values in series.items():
        ax.plot(xs, np.asarray(values)[::step], linewidth=0.8, label=label)
    if len(series) > 1:
        ax.legend(fontsize=10)
    ax.set_title(title, fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    if time_axis:
        concise_dates(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def concise_dates(ax, max_ticks: int = 8) -> None:
    """Date labels on the x axis that do not overlap: at most `max_ticks`, each saying only what changed."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=max_ticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def moving_average(values: Sequence[float], width: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < width or width <= 1:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")
