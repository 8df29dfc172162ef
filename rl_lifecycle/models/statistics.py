"""Training feature statistics stored with every model version: what an OOD gate compares live vectors to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
STATS_FILE = "feature_stats.npz"
SUMMARY_FILE = "feature_stats.json"


@dataclass(frozen=True)
class FeatureStatistics:
    feature_names: tuple[str, ...]
    rows: int
    mean: np.ndarray  # [k]
    std: np.ndarray  # [k]
    minimum: np.ndarray  # [k]
    maximum: np.ndarray  # [k]
    quantiles: np.ndarray  # [len(QUANTILES), k]
    covariance: np.ndarray  # [k, k]

    @classmethod
    def of(cls, values: np.ndarray, feature_names: tuple[str, ...]) -> FeatureStatistics:
        values = np.asarray(values, dtype=np.float64)
        if len(values) < 2 or not np.isfinite(values).all():
            raise ValueError(f"feature statistics need at least 2 rows of finite values, got {values.shape}")
        return cls(
            feature_names=tuple(feature_names), rows=len(values), mean=values.mean(axis=0), std=values.std(axis=0),
            minimum=values.min(axis=0), maximum=values.max(axis=0),
            quantiles=np.quantile(values, QUANTILES, axis=0), covariance=np.atleast_2d(np.cov(values, rowvar=False)),
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / STATS_FILE, feature_names=np.array(self.feature_names), rows=self.rows, mean=self.mean,
                 std=self.std, minimum=self.minimum, maximum=self.maximum, quantile_levels=np.array(QUANTILES),
                 quantiles=self.quantiles, covariance=self.covariance)
        (directory / SUMMARY_FILE).write_text(json.dumps(self.table(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> FeatureStatistics:
        with np.load(directory / STATS_FILE) as data:
            return cls(tuple(str(n) for n in data["feature_names"]), int(data["rows"]), data["mean"], data["std"],
                       data["minimum"], data["maximum"], data["quantiles"], data["covariance"])

    def table(self) -> list[dict]:
        """One row per feature, for people (MLflow artifact, UI tables)."""
        q = {level: self.quantiles[i] for i, level in enumerate(QUANTILES)}
        return [
            {"feature": name, "mean": float(self.mean[j]), "std": float(self.std[j]), "min": float(self.minimum[j]),
             "p01": float(q[0.01][j]), "p50": float(q[0.5][j]), "p99": float(q[0.99][j]), "max": float(self.maximum[j])}
            for j, name in enumerate(self.feature_names)
        ]
