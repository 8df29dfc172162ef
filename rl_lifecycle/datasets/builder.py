"""Training datasets: labels, assembly, hashing and Parquet over the feature read path.

Vectors come from `features.vectors.load_vectors` (stored snapshots where current, the canonical
pipeline plus write-back where missing or stale). A build reads one feature set fingerprint only,
keeps warm rows only, and refuses a span with a window that holds no candles.

`dataset_hash` = sha256(fingerprint, canonical spec JSON, content), content being the timestamps,
vector bytes, flags, close prices and labels. A hash that exists already is reused, not rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from rl_lifecycle.candles.frame import CandleArrays
from rl_lifecycle.datasets.spec import DatasetSpec
from rl_lifecycle.db.binary_copy import pg_timestamp
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.pipeline import FeatureFrame
from rl_lifecycle.features.spec import FeatureSetSpec, load_feature_set
from rl_lifecycle.features.vectors import load_vectors


@dataclass(frozen=True)
class DatasetContent:
    """The rows of a dataset: warm snapshot rows with the close price and the forward-return label."""

    ts: np.ndarray  # int64 epoch us
    values: np.ndarray  # float64 [n, k]
    is_warm: np.ndarray  # bool [n], all True
    missing: np.ndarray  # bool [n, k], all False for warm rows
    close: np.ndarray  # float64 [n]
    forward_return: np.ndarray  # float64 [n], NaN where t + horizon lies past the span
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class DatasetBuild:
    dataset_hash: str
    spec: DatasetSpec
    fingerprint: str
    rows: int
    storage_uri: str
    cached_windows: list[str]
    computed_windows: list[str]
    reused: bool  # an identical dataset version existed already
    source_windows: dict[str, dict] = field(repr=False)
    empty_windows: list[str] = field(default_factory=list)  # windows of the span without a single candle


def dataset_hash(fingerprint: str, spec: DatasetSpec, content: DatasetContent) -> str:
    digest = hashlib.sha256()
    digest.update(fingerprint.encode())
    digest.update(spec.canonical_json().encode())
    for array, dtype in (
        (content.ts, "<i8"), (content.values, "<f8"), (content.is_warm, "?"), (content.missing, "?"),
        (content.close, "<f8"), (content.forward_return, "<f8"),
    ):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


def _label_candles(candles: CandleArrays, ts: np.ndarray, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Close at t and log(close[t + h bars] / close[t]); NaN when that bar is not stored inside the span."""
    interval_us = spec.parsed_market.interval_us
    at = np.searchsorted(candles.ts, ts)
    if len(ts) and (at.max() >= len(candles) or not np.array_equal(candles.ts[at], ts)):
        raise RuntimeError("snapshot rows without a stored candle: the candles changed during the build; build it again")
    close = candles.close[at]
    span_end = spec.windows()[-1].end
    target = ts + spec.forward_return_horizon * interval_us
    ahead = np.minimum(np.searchsorted(candles.ts, target), len(candles) - 1)
    found = (candles.ts[ahead] == target) & (target < span_end)
    forward = np.full(len(ts), np.nan)
    forward[found] = np.log(candles.close[ahead[found]] / close[found])
    return close, forward


def assemble(snapshots: FeatureFrame, candles: CandleArrays, spec: DatasetSpec) -> DatasetContent:
    warm = snapshots.is_warm
    ts = snapshots.ts[warm]
    close, forward = _label_candles(candles, ts, spec)
    return DatasetContent(
        ts=ts, values=np.ascontiguousarray(snapshots.values[warm]), is_warm=warm[warm],
        missing=np.ascontiguousarray(snapshots.missing[warm]), close=close, forward_return=forward,
        feature_names=snapshots.feature_names,
    )


def _to_frame(content: DatasetContent, horizon: int) -> pl.DataFrame:
    columns = {"ts": pl.Series(content.ts, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")}
    columns.update({name: content.values[:, i] for i, name in enumerate(content.feature_names)})
    columns["close"] = content.close
    columns[f"forward_return_{horizon}"] = content.forward_return
    return pl.DataFrame(columns)


def read_dataset(path: str | Path, spec: DatasetSpec, feature_names: tuple[str, ...]) -> DatasetContent:
    """Load a stored dataset back into the exact arrays its hash was computed over."""
    frame = pl.read_parquet(path)
    values = np.ascontiguousarray(frame.select(feature_names).to_numpy(), dtype=np.float64)
    return DatasetContent(
        ts=frame["ts"].dt.epoch("us").to_numpy().astype(np.int64),
        values=values,
        is_warm=np.ones(frame.height, dtype=bool),
        missing=np.zeros(values.shape, dtype=bool),
        close=frame["close"].to_numpy().astype(np.float64),
        forward_return=frame[f"forward_return_{spec.forward_return_horizon}"].to_numpy().astype(np.float64),
        feature_names=feature_names,
    )


def _write_parquet_atomically(frame: pl.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".parquet.tmp")
    os.close(handle)
    try:
        frame.write_parquet(tmp, statistics=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing_version(conn: psycopg.Connection, spec: DatasetSpec, fingerprint: str, sources: dict) -> tuple[str, str, int] | None:
    """A stored version built from exactly these window contents: its content, hence its hash, is ours."""
    row = conn.execute(
        """SELECT dataset_hash, storage_uri, rows FROM dataset_versions
           WHERE fingerprint = %s AND spec = %s::jsonb AND source_windows = %s::jsonb
           ORDER BY last_built_at DESC LIMIT 1""",
        (fingerprint, spec.canonical_json(), json.dumps(sources, sort_keys=True)),
    ).fetchone()
    if row is None or not Path(row[1]).exists():
        return None
    return row


def resolve_features(spec: DatasetSpec, features: FeatureSetSpec | None) -> FeatureSetSpec:
    """The feature set a dataset is built from: the one given (the active set), else loaded by name."""
    features = features or load_feature_set(spec.feature_set, anchor=spec.window_cadence)
    if (features.name, features.anchor) != (spec.feature_set, spec.window_cadence):
        raise ValueError(
            f"dataset spec wants {spec.feature_set} on {spec.window_cadence} windows, "
            f"got {features.name} anchored on {features.anchor}"
        )
    return features


def build_dataset(
    conn: psycopg.Connection, spec: DatasetSpec, datasets_dir: Path, features: FeatureSetSpec | None = None
) -> DatasetBuild:
    features = resolve_features(spec, features)
    fingerprint = features.fingerprint
    market, windows = spec.parsed_market, spec.windows()
    read = load_vectors(conn, market, features, windows[0].start, windows[-1].end, scheme=spec.scheme)
    if len(read.empty_windows) == len(windows):
        raise UserInputError(
            f"dataset {market.key} {spec.first_window}..{spec.last_window} would be built from nothing: no window "
            "of the span holds a candle; ingest or materialize `candles` for it first"
        )
    sources, cached, computed, empty = read.sources(), read.cached_windows, read.computed_windows, read.empty_windows
    existing = _existing_version(conn, spec, fingerprint, sources)
    if existing is not None:
        digest, uri, rows = existing
        _touch_version(conn, digest, uri, sources)
        return DatasetBuild(digest, spec, fingerprint, rows, uri, cached, computed, True, sources, empty)

    content = assemble(read.frame, read.candles(), spec)
    if len(content) == 0:
        raise UserInputError(
            f"dataset {market.key} {spec.first_window}..{spec.last_window} has no warm rows: "
            f"ingest candles for the span (and {features.warmup} bars of warmup before it)"
        )
    digest = dataset_hash(fingerprint, spec, content)
    stored = conn.execute("SELECT storage_uri FROM dataset_versions WHERE dataset_hash = %s", (digest,)).fetchone()
    if stored is not None and Path(stored[0]).exists():
        _touch_version(conn, digest, stored[0], sources)
        return DatasetBuild(digest, spec, fingerprint, len(content), stored[0], cached, computed, True, sources, empty)
    target = datasets_dir / market.key / f"{digest}.parquet"
    _write_parquet_atomically(_to_frame(content, spec.forward_return_horizon), target)
    conn.execute(
        sql.SQL(
            """INSERT INTO dataset_versions (dataset_hash, pair, interval, fingerprint, feature_set, span_start, span_end,
                                             spec, rows, storage_uri, source_windows)
               VALUES (%s, %s, %s, %s, %s, {start}, {end}, %s::jsonb, %s, %s, %s::jsonb)
               ON CONFLICT (dataset_hash) DO UPDATE
                 SET storage_uri = EXCLUDED.storage_uri, source_windows = EXCLUDED.source_windows, last_built_at = now()"""
        ).format(start=pg_timestamp(windows[0].start), end=pg_timestamp(windows[-1].end)),
        (digest, market.pair, market.interval, fingerprint, features.name, spec.canonical_json(), len(content),
         str(target), json.dumps(sources, sort_keys=True)),
    )
    return DatasetBuild(digest, spec, fingerprint, len(content), str(target), cached, computed, False, sources, empty)


def _touch_version(conn: psycopg.Connection, digest: str, uri: str, sources: dict) -> None:
    """A reused version becomes the latest build of its span (what the dataset checks verify)."""
    conn.execute(
        "UPDATE dataset_versions SET last_built_at = now(), storage_uri = %s, source_windows = %s::jsonb WHERE dataset_hash = %s",
        (uri, json.dumps(sources, sort_keys=True), digest),
    )


def rebuild_hash(conn: psycopg.Connection, spec: DatasetSpec, features: FeatureSetSpec) -> str:
    """The dataset hash recomputed from the vector read path and the candles, with no reuse of a version."""
    windows = spec.windows()
    read = load_vectors(conn, spec.parsed_market, features, windows[0].start, windows[-1].end, scheme=spec.scheme)
    return dataset_hash(features.fingerprint, spec, assemble(read.frame, read.candles(), spec))


def file_held_here(digest: str, stored_uri: str, spec: DatasetSpec, datasets_dir: Path) -> Path | None:
    """The file of dataset `digest` this machine holds (the stored one, or a copy rebuilt here), or None."""
    for path in (Path(stored_uri), datasets_dir / spec.parsed_market.key / f"{digest}.parquet"):
        if path.is_file():
            return path
    return None


def local_dataset_file(conn: psycopg.Connection, digest: str, stored_uri: str, spec: DatasetSpec,
                       features: FeatureSetSpec, datasets_dir: Path) -> Path:
    """The Parquet file of dataset `digest` on this machine: the stored one when this machine holds it, else a
    copy rebuilt here from the stored snapshots and candles. Datasets are content-addressed, so a worker that
    shares no disk with the one that built it (issue 19) rebuilds the same rows; a rebuild that hashes to
    anything else is refused (the snapshots or candles of its span changed since) and nothing is written."""
    held = file_held_here(digest, stored_uri, spec, datasets_dir)
    if held is not None:
        return held
    local = datasets_dir / spec.parsed_market.key / f"{digest}.parquet"
    windows = spec.windows()
    read = load_vectors(conn, spec.parsed_market, features, windows[0].start, windows[-1].end, scheme=spec.scheme)
    content = assemble(read.frame, read.candles(), spec)
    rebuilt = dataset_hash(features.fingerprint, spec, content)
    if rebuilt != digest:
        raise UserInputError(
            f"dataset {digest[:12]} is not on this machine ({stored_uri}) and rebuilding it from the stored snapshots "
            f"and candles gives {rebuilt[:12]}: its span changed since it was built; materialize `training_dataset` again")
    _write_parquet_atomically(_to_frame(content, spec.forward_return_horizon), local)
    return local
