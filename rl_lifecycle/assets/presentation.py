"""Metadata people would rather look at than read: small plots and markdown tables."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
from dagster import MetadataValue

from rl_lifecycle.plots import line_png
from rl_lifecycle.windows import iso


def line_plot(ts_us: np.ndarray, values: np.ndarray, title: str, max_points: int = 2000) -> MetadataValue:
    """A small PNG line plot embedded in markdown (renders in the Dagster UI's metadata panel)."""
    return png_markdown(line_png(ts_us, {title: values}, title, max_points=max_points, time_axis=True), title)


def png_markdown(png: bytes, title: str) -> MetadataValue:
    return MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def ts_or_none(ts_us: int | None) -> str:
    return iso(ts_us) if ts_us is not None else "-"
