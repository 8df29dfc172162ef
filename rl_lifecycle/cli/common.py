"""What the command groups share: the partition options and keys, run outcomes, the audit actor, version
labels and the text tables.

Light on purpose (typer and the core's small modules): the orchestration package is imported inside the
functions that need it, so `rl-lifecycle --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market, partition_key, split_partition_key
from rl_lifecycle.settings import load_settings

CALENDAR_HELP = "trading calendar: crypto (24/7), fx (24/5, New York 17:00) or an exchange code such as XNYS"

# The partitions a command acts on: --partition (repeatable), or --market with --windows FIRST..LAST.
SpanWindowsOption = Annotated[int | None, typer.Option(
    help="windows the training dataset spans, ending at the partition's (1..120; builds or reuses that dataset "
         "first) [default: the market's `market add --span-windows`, else 3]")]


def dataset_span_config(span_windows: int | None) -> dict:
    """The run config that builds `training_dataset` with `span_windows` windows ({} for the default span)."""
    if span_windows is None:
        return {}
    from rl_lifecycle.markets.table import check_span_windows

    check_span_windows(span_windows)
    return {"training_dataset": {"config": {"span_windows": span_windows}}}


def span_to_build(url: str, market: Market, window, span_windows: int | None) -> int | None:
    """The windows of the `training_dataset` a `train` or `evaluate` run builds (or reuses) first: the
    `--span-windows` given; the market's own span when the partition has no dataset yet (a new market's first
    run needs no separate `materialize`); None when the run uses the stored dataset. An unregistered market
    is refused by name."""
    from rl_lifecycle.datasets.service import latest_version, market_span_windows
    from rl_lifecycle.db.connection import connect
    from rl_lifecycle.markets.table import get_market

    with connect(url) as conn:
        get_market(conn, market)
        if span_windows is None and latest_version(conn, market, window) is not None:
            return None
        return market_span_windows(conn, market, span_windows)


def say_dataset_built_first(key: str, span: int | None, span_windows: int | None) -> None:
    if span is not None and span_windows is None:
        typer.echo(f"{key}: no training dataset yet: the run builds it first, over the market's span of {span} "
                   "window(s)")


PartitionOption = Annotated[list[str] | None, typer.Option(
    help="'MARKET|WINDOW', e.g. 'BTCUSDT-1h|2024-03-01' (repeatable)")]
RangeMarketOption = Annotated[str | None, typer.Option(help="market key for a range of windows")]
WindowsOption = Annotated[str | None, typer.Option(help="FIRST..LAST window keys, e.g. 2024-01-01..2024-06-01")]


def partition_keys(partition: list[str] | None, market: str | None, windows: str | None) -> list[str]:
    """The `MARKET|WINDOW` keys of --partition and of --market with --windows, each window checked to exist."""
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME, parse_partition_key

    keys: list[str] = []
    for key in partition or []:
        m, w = parse_partition_key(key)
        keys.append(partition_key(m, w))
    if market or windows:
        if not (market and windows):
            raise UserInputError("--market and --windows go together, e.g. --market BTCUSDT-1h --windows 2024-01-01..2024-06-01")
        first, sep, last = windows.partition("..")
        if not sep:
            raise UserInputError(f"--windows {windows!r} is invalid; expected FIRST..LAST such as 2024-01-01..2024-06-01")
        m = Market.parse(market)
        keys += [partition_key(m, w) for w in WINDOW_SCHEME.range(first, last)]
    if not keys:
        raise UserInputError("give --partition 'MARKET|WINDOW' or --market M --windows A..B")
    check_windows_exist(keys)
    return keys


def check_windows_exist(keys: Sequence[str]) -> None:
    """Refuse windows outside the `window` partitions (before RL_WINDOW_START, or after the current
    window) before anything runs: Dagster would only fail the run with DagsterUnknownPartitionError."""
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME, window_partitions

    windows = sorted({split_partition_key(key)[1] for key in keys})
    first, last = window_partitions.get_first_partition_key(), window_partitions.get_last_partition_key()
    early = [w for w in windows if first is None or w < first]
    late = [w for w in windows if last is None or w > last]
    if early:
        shown = early[0] if len(early) == 1 else f"{early[0]}..{early[-1]} ({len(early)} windows)"
        raise UserInputError(
            f"window {shown} is before the first window partition {first} "
            f"(RL_WINDOW_START={load_settings().window_start}); nothing was run. To use this history, set "
            f"RL_WINDOW_START={WINDOW_SCHEME.parse(early[0]).key} (the first window of your data) wherever "
            "rl-lifecycle and `make dev` run, and restart `make dev`."
        )
    if late:
        shown = late[0] if len(late) == 1 else f"{late[0]}..{late[-1]} ({len(late)} windows)"
        raise UserInputError(
            f"window {shown} is after the current window {last}: windows exist from {first} "
            f"(RL_WINDOW_START) up to the current one; nothing was run."
        )


def check_range(option: str, value: int, low: int, high: int, what: str) -> int:
    """Refuse an integer option outside low..high before anything runs, naming the option and the value
    (typer would pass any Python int on: a negative LIMIT or a bigint overflow in SQL, a socket error)."""
    if not low <= value <= high:
        raise UserInputError(f"{option} {value} is invalid: {what} must be {low}..{high}")
    return value


def check_port(option: str, value: int, *, free_port: bool = False) -> int:
    """A TCP port: 1..65535, or 0 (the system picks a free one) where `free_port`."""
    return check_range(option, value, 0 if free_port else 1, 65535, "a TCP port" + (" (0: a free one)" if free_port else ""))


def exit_on_failure(runs, verb: str) -> None:
    """`N/M partitions VERB`; exit 1 when a run failed."""
    failed = [r for r in runs if not r.ok]
    typer.echo(f"{len(runs) - len(failed)}/{len(runs)} partitions {verb}")
    if failed:
        raise typer.Exit(1)


def actor() -> str:
    """Who acts, for the promotion audit: `cli:<user>`."""
    import getpass

    return f"cli:{getpass.getuser()}"


def v(version: int | None) -> str:
    """A model version as `v3`, or `-` for none."""
    return "-" if version is None else f"v{version}"


def print_table(headers: Sequence, rows: Sequence[Sequence], indent: str = "  ") -> None:
    """An aligned text table: each column as wide as its widest cell, left-aligned, two spaces apart."""
    rows = [list(row) for row in rows]
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        typer.echo(indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
