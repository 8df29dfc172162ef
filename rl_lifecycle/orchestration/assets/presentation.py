"""Metadata people would rather look at than read: small plots and markdown tables."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
from dagster import AssetCheckResult, MetadataValue

from rl_lifecycle.plots import line_png
from rl_lifecycle.windows import iso


def line_plot(ts_us: np.ndarray, values: np.ndarray, title: str, max_points: int = 2000) -> MetadataValue:
    """A small PNG line plot embedded in markdown (renders in the Dagster UI's metadata panel)."""
    return png_markdown(line_png(ts_us, {title: values}, title, max_points=max_points, time_axis=True), title)


def png_markdown(png: bytes, title: str) -> MetadataValue:
    """A PNG (`rl_lifecycle.plots`: 1200 px wide, readable in the metadata panel's markdown view) with its title."""
    return MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def rounded(value, digits: int = 4):
    """A float metadata figure to `digits` significant digits, for people (the JSON metadata beside it keeps
    full precision); anything else unchanged."""
    return float(f"{value:.{digits}g}") if isinstance(value, float) and value == value else value


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def ts_or_none(ts_us: int | None) -> str:
    return iso(ts_us) if ts_us is not None else "-"


def range_metadata(partition_keys: Sequence[str]) -> dict:
    """What every partition of a backfill run over a range shares (nothing for a one-partition run);
    each partition's own figures are added per partition key."""
    if len(partition_keys) <= 1:
        return {}
    return {"run_range": f"{min(partition_keys)} .. {max(partition_keys)}", "windows_in_run": len(partition_keys)}


def partition_check_result(outcomes: Sequence[tuple[str, object]]) -> AssetCheckResult:
    """One check evaluation over a run's partitions, from (partition key, report with `passed`,
    `summary` and optionally `details`) pairs. A one-partition run reads as before; a backfill
    run over a range passes only if every window passed, and names the windows that did not
    (Dagster records one evaluation per check and run)."""
    failed = [(key, r) for key, r in outcomes if not r.passed]
    if len(outcomes) == 1:
        summary = outcomes[0][1].summary
    elif failed:
        summary = f"{len(failed)}/{len(outcomes)} windows failed: " + "; ".join(f"{k}: {r.summary}" for k, r in failed[:3])
    else:
        summary = f"all {len(outcomes)} windows passed ({min(k for k, _ in outcomes)} .. {max(k for k, _ in outcomes)})"
    metadata: dict = {"summary": summary}
    if len(outcomes) > 1:
        metadata["windows"] = markdown_table(
            ["partition", "passed", "summary"], [(k, "yes" if r.passed else "NO", r.summary) for k, r in outcomes]
        )
    details = [{"partition": k, **d} for k, r in failed for d in getattr(r, "details", [])]
    if details:
        headers = sorted({h for d in details for h in d})
        metadata["differences"] = markdown_table(headers, [[d.get(h, "") for h in headers] for d in details[:50]])
        metadata["details"] = MetadataValue.json(details[:200])
    return AssetCheckResult(passed=not failed, description=summary, metadata=metadata)


def log_window(context, partition_count: int, message: str) -> None:
    """A per-window log line, in one-window runs only: in a backfill run over a range each line would
    be one more stored event per window, and each window's metadata says the same."""
    if partition_count == 1:
        context.log.info(message)


def log_range(context, partition_keys, what: str) -> None:
    if len(partition_keys) > 1:
        context.log.info(f"{what}: {len(partition_keys)} windows, {min(partition_keys)} .. {max(partition_keys)}")
