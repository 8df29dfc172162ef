"""Model specs: YAML files validated into frozen pydantic models; unknown keys are refused by name."""

from __future__ import annotations

import hashlib
import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rl_lifecycle.errors import UserInputError

SPECS_DIR = Path(__file__).with_name("specs")
Algorithm = Literal["PPO", "A2C", "DQN"]
# Constructor arguments the trainer sets itself: a spec may not override them.
_CONTROLLED = frozenset({"policy", "env", "seed", "device", "verbose", "policy_kwargs", "tensorboard_log",
                         "_init_setup_model", "stats_window_size", "monitor_wrapper", "replay_buffer_class",
                         "replay_buffer_kwargs", "rollout_buffer_class", "rollout_buffer_kwargs"})


@cache
def algorithm_parameters(algorithm: str) -> dict[str, Any]:
    """The hyperparameters an SB3 algorithm's constructor takes, with their defaults."""
    import stable_baselines3

    signature = inspect.signature(getattr(stable_baselines3, algorithm).__init__)
    return {name: p.default for name, p in signature.parameters.items() if name != "self" and name not in _CONTROLLED}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyNetwork(_Frozen):
    net_arch: list[int] = Field(default_factory=lambda: [64, 64], min_length=1, max_length=8)
    activation: Literal["tanh", "relu"] = "tanh"

    @field_validator("net_arch")
    @classmethod
    def _positive_layers(cls, value: list[int]) -> list[int]:
        if any(size < 1 or size > 4096 for size in value):
            raise ValueError(f"layer sizes must be 1..4096, got {value}")
        return value


class ModelSpec(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    algorithm: Algorithm = "PPO"
    policy: PolicyNetwork = Field(default_factory=PolicyNetwork)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    total_timesteps: int = Field(ge=1, le=100_000_000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    action_set: Literal["long_flat", "long_short"] = "long_flat"
    cost_bps: float = Field(default=10.0, ge=0.0, le=1_000.0)
    episode_length: int | None = Field(default=None, ge=2, le=10_000_000, description="bars; None = a whole segment")
    feature_set: str = Field(min_length=1)

    @model_validator(mode="after")
    def _known_hyperparameters(self) -> ModelSpec:
        allowed = algorithm_parameters(self.algorithm)
        for key, value in self.hyperparameters.items():
            if key in _CONTROLLED:
                raise ValueError(f"hyperparameters.{key} is set by the trainer and cannot be given in a spec")
            if key not in allowed:
                raise ValueError(
                    f"hyperparameters.{key} is not a {self.algorithm} parameter; allowed: {', '.join(sorted(allowed))}"
                )
            default = allowed[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"hyperparameters.{key}={value!r} must be true or false")
            if isinstance(default, int | float) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"hyperparameters.{key}={value!r} must be a number")
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def parse_model_spec(data: Any, source: str) -> ModelSpec:
    if not isinstance(data, dict):
        raise UserInputError(f"model spec {source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "spec"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            else:
                value = error.get("input")
                shown = "" if isinstance(value, dict) else f" (got {value!r})"
                problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}{shown}")
        raise UserInputError(f"invalid model spec {source}: " + "; ".join(problems)) from None


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A spec by name (`rl_lifecycle/models/specs/<name>.yaml`) or by YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
        raise UserInputError(f"model spec {name_or_path!r} not found: give a YAML file or one of {known}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserInputError(f"model spec {path} is not valid YAML: {exc}") from None
    return parse_model_spec(data, str(path))
