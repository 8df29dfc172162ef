"""Metadata people would rather look at than read: small plots and markdown tables."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from dagster import MetadataValue

from rl_lifecycle.windows import iso


def line_plot(ts_us: np.ndarray, values: np.ndarray, title: str, max_points: int = 2000) -> MetadataValue:
    """A small PNG line plot embedded in markdown (renders in the Dagster UI's metadata panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, len(ts_us) // max_points)
    times = np.asarray(ts_us[::step], dtype="datetime64[us]")
    fig, ax = plt.subplots(figsize=(6, 2.2), dpi=90)
    ax.plot(times, values[::step], linewidth=0.8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def ts_or_none(ts_us: int | None) -> str:
    return iso(ts_us) if ts_us is not None else "-"
