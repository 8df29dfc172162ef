"""Dataset use cases for the shell: the spec of a partition, and the two dataset gates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from rl_lifecycle.candles.store import load_candles
from rl_lifecycle.datasets.builder import (
    dataset_hash,
    file_held_here,
    local_dataset_file,
    read_dataset,
    rebuild_hash,
)
from rl_lifecycle.datasets.spec import DEFAULT_SPAN_WINDOWS, DatasetSpec
from rl_lifecycle.db.binary_copy import pg_timestamp
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import FeatureSetSpec
from rl_lifecycle.features.store import load_registered_feature_set
from rl_lifecycle.features.vectors import load_vectors
from rl_lifecycle.markets.calendars import get_calendar
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import check_span_windows, registered_calendar, registered_span_windows
from rl_lifecycle.windows import Window, WindowScheme


def spec_ending_at(
    market: Market, window: Window, scheme: WindowScheme, feature_set: str, span_windows: int, **labels
) -> DatasetSpec:
    """The dataset of `span_windows` windows that ends with `window`."""
    first = window
    for _ in range(span_windows - 1):
        first = scheme.previous(first)
    return DatasetSpec.create(
        market=market.key, first_window=first.key, last_window=window.key, feature_set=feature_set,
        window_cadence=scheme.cadence, **labels,
    )


def market_span_windows(conn: psycopg.Connection, market: Market, requested: int | None = None) -> int:
    """The windows a dataset of `market` spans: `requested` (a run's `--span-windows`) if given, else the
    market's own default (`market add ... --span-windows N`), else DEFAULT_SPAN_WINDOWS."""
    if requested is not None:
        return check_span_windows(requested)
    registered = registered_span_windows(conn, market)
    return DEFAULT_SPAN_WINDOWS if registered is None else registered


@dataclass(frozen=True)
class SpanBars:
    """How many bars the span of `span_windows` windows ending at a window holds: stored candles, and the
    bars its market's calendar expects there."""

    first_window: Window
    last_window: Window
    span_windows: int
    stored: int
    expected: int
    calendar: str

    def describe(self, market: Market) -> str:
        return (f"a span of {self.span_windows} window(s) ({self.first_window.key} .. {self.last_window.key}) holds "
                f"{self.stored} stored bar(s) of {market.key} ({self.expected} expected by its calendar "
                f"{self.calendar})")


def span_bars(conn: psycopg.Connection, market: Market, window: Window, scheme: WindowScheme,
              span_windows: int) -> SpanBars:
    """The bars of the span of `span_windows` windows ending at `window` (for refusals that say so)."""
    first = window
    for _ in range(span_windows - 1):
        first = scheme.previous(first)
    calendar = get_calendar(registered_calendar(conn, market))
    stored = len(load_candles(conn, market, first.start, window.end))
    expected = len(calendar.expected_bar_opens(first.start, window.end, market.interval_us))
    return SpanBars(first, window, span_windows, stored, expected, calendar.name)


@dataclass(frozen=True)
class DatasetCheck:
    passed: bool
    summary: str


@dataclass(frozen=True)
class DatasetVersion:
    dataset_hash: str
    storage_uri: str
    rows: int
    spec: DatasetSpec
    fingerprint: str


def latest_version(conn: psycopg.Connection, market: Market, window: Window) -> DatasetVersion | None:
    """The dataset built (or reused) most recently for the span ending at `window`: the run's own build."""
    row = conn.execute(
        sql.SQL(
            """SELECT dataset_hash, storage_uri, rows, spec, fingerprint FROM dataset_versions
               WHERE pair = %s AND interval = %s AND span_end = {end}
               ORDER BY last_built_at DESC LIMIT 1"""
        ).format(end=pg_timestamp(window.end)),
        (market.pair, market.interval),
    ).fetchone()
    return None if row is None else DatasetVersion(row[0], row[1], row[2], DatasetSpec.create(**row[3]), row[4])


def on_this_machine(conn: psycopg.Connection, version: DatasetVersion, features: FeatureSetSpec) -> DatasetVersion:
    """`version` with `storage_uri` a file this machine holds: the stored file, or a copy rebuilt and verified
    here (`builder.local_dataset_file`) when it was built on a machine this one shares no disk with."""
    from dataclasses import replace

    from rl_lifecycle.settings import load_settings

    path = local_dataset_file(conn, version.dataset_hash, version.storage_uri, version.spec, features,
                              load_settings().datasets_dir)
    return version if str(path) == version.storage_uri else replace(version, storage_uri=str(path))


def check_reproducible(conn: psycopg.Connection, market: Market, window: Window) -> DatasetCheck:
    """Rebuild from stored snapshots and candles, and re-hash the stored file: both must equal the recorded hash.
    On a machine that holds no copy of the file (it was built on another), the rebuild alone is verified."""
    version = latest_version(conn, market, window)
    if version is None:
        return DatasetCheck(False, f"no dataset recorded for {market.key} ending at {window.key}")
    recorded, uri, spec = version.dataset_hash, version.storage_uri, version.spec
    features = load_registered_feature_set(conn, version.fingerprint)
    rebuilt = rebuild_hash(conn, spec, features)
    if rebuilt != recorded:
        return DatasetCheck(False, f"rebuilt hash {rebuilt[:12]} differs from the recorded {recorded[:12]}")
    from rl_lifecycle.settings import load_settings

    held = file_held_here(recorded, uri, spec, load_settings().datasets_dir)
    if held is None:
        return DatasetCheck(True, f"rebuild hashes to {recorded[:12]}; the stored file ({uri}) is not on this machine, "
                            "which rebuilds it when it needs it")
    from_file = dataset_hash(features.fingerprint, spec, read_dataset(held, spec, features.feature_names))
    if from_file != recorded:
        return DatasetCheck(False, f"stored file {held} hashes to {from_file[:12]}, not the recorded {recorded[:12]}")
    return DatasetCheck(True, f"rebuild and stored file both hash to {recorded[:12]}")


def check_no_unwarm_rows(conn: psycopg.Connection, market: Market, window: Window) -> DatasetCheck:
    """Every dataset row is a warm snapshot row with no missing feature."""
    version = latest_version(conn, market, window)
    if version is None:
        return DatasetCheck(False, f"no stored dataset for {market.key} ending at {window.key}")
    spec = version.spec
    features = load_registered_feature_set(conn, version.fingerprint)
    try:
        version = on_this_machine(conn, version, features)
    except UserInputError as exc:
        return DatasetCheck(False, str(exc))
    content = read_dataset(version.storage_uri, spec, features.feature_names)
    windows = spec.windows()
    snapshots = load_vectors(conn, spec.parsed_market, features, windows[0].start, windows[-1].end, scheme=spec.scheme).frame
    warm_ts = snapshots.ts[snapshots.is_warm]
    not_warm = np.setdiff1d(content.ts, warm_ts)
    nan_rows = int((~np.isfinite(content.values)).any(axis=1).sum())
    if len(not_warm) or nan_rows:
        return DatasetCheck(False, f"{len(not_warm)} rows are not warm snapshots; {nan_rows} rows hold NaN or infinite features")
    return DatasetCheck(True, f"all {len(content)} rows are warm with every feature defined")
