"""Decision thresholds (YAML, validated).

`load_decision_config()` reads `RL_DECISION_CONFIG` (a YAML file) or the shipped `decisions.yaml`.
The paper-decisions switch is `Settings.paper_decisions_enabled` (RL_PAPER_DECISIONS_ENABLED).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from rl_lifecycle.config_files import read_yaml, validated
from rl_lifecycle.errors import UserInputError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("decisions.yaml")


class DecisionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ood_max_abs_z: float = Field(default=8.0, gt=0)
    ood_max_mahalanobis: float = Field(default=25.0, gt=0)
    stale_after_bars: StrictInt = Field(default=2, ge=0)
    critical_features: tuple[StrictStr, ...] | None = None

    def critical_for(self, feature_names: tuple[str, ...], marked: tuple[str, ...]) -> tuple[str, ...]:
        """The critical features of a set: the configured list, else those the set marks, else all of them."""
        if self.critical_features is None:
            return marked or feature_names
        unknown = [name for name in self.critical_features if name not in feature_names]
        if unknown:
            raise UserInputError(
                f"decision config critical_features: {unknown} are not features of the active set "
                f"(its features: {', '.join(feature_names)})"
            )
        return tuple(self.critical_features)


def parse_decision_config(data: Any, source: str = "<dict>") -> DecisionConfig:
    return validated(DecisionConfig, {} if data is None else data, "decision config", source)


def load_decision_config(path: str | Path | None = None) -> DecisionConfig:
    """`path`, else RL_DECISION_CONFIG, else the shipped defaults (parsed again only when the file changes)."""
    from rl_lifecycle.settings import load_settings

    path = Path(path or load_settings().decision_config or DEFAULT_CONFIG_PATH).expanduser()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise UserInputError(f"decision config {path} cannot be read: {exc.strerror or exc}") from exc
    return _load(str(path), stamp)


@lru_cache(maxsize=8)
def _load(name: str, _stamp: int) -> DecisionConfig:
    return parse_decision_config(read_yaml(Path(name), "decision config"), name)
