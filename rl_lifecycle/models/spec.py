"""Model specs: YAML files validated into frozen pydantic models; unknown keys are refused by name."""

from __future__ import annotations

import collections.abc
import hashlib
import inspect
import json
import math
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rl_lifecycle.config_files import read_yaml, validated
from rl_lifecycle.errors import UserInputError

SPECS_DIR = Path(__file__).with_name("specs")
Algorithm = Literal["PPO", "A2C", "DQN"]
# Constructor arguments the trainer sets itself: a spec may not override them.
_CONTROLLED = frozenset({"policy", "env", "seed", "device", "verbose", "policy_kwargs", "tensorboard_log",
                         "_init_setup_model", "stats_window_size", "monitor_wrapper", "replay_buffer_class",
                         "replay_buffer_kwargs", "rollout_buffer_class", "rollout_buffer_kwargs"})


@cache
def algorithm_parameters(algorithm: str) -> dict[str, inspect.Parameter]:
    """The hyperparameters an SB3 algorithm's constructor takes (annotation and default)."""
    import stable_baselines3

    signature = inspect.signature(getattr(stable_baselines3, algorithm).__init__, eval_str=True)
    return {name: p for name, p in signature.parameters.items() if name != "self" and name not in _CONTROLLED}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _accepted(annotation: Any) -> list[tuple[str, Callable[[Any], bool]]]:
    """What a YAML value may be for a constructor annotation: (description, test) per accepted form.

    Callables (schedules) and classes cannot come from YAML and are left out; an annotation this
    does not know is accepted as is and left to SB3.
    """
    if annotation is bool:
        return [("true or false", lambda v: isinstance(v, bool))]
    if annotation is int:
        return [("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))]
    if annotation is float:
        return [("a number", _is_number)]
    if annotation is str:
        return [("a string", lambda v: isinstance(v, str))]
    if annotation is type(None):
        return [("null", lambda v: v is None)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return [form for arg in args for form in _accepted(arg)]
    if origin is tuple and args and Ellipsis not in args:
        members = [_accepted(arg) for arg in args]
        described = ", ".join(" or ".join(d for d, _ in forms) or "?" for forms in members)
        return [(f"a list [{described}]", lambda v: isinstance(v, list | tuple) and len(v) == len(members)
                 and all(any(test(item) for _, test in forms) for item, forms in zip(v, members, strict=True)))]
    if origin in (collections.abc.Callable, type) or annotation is type:
        return []
    return [("anything", lambda v: True)]


def _train_freq_ok(value: Any) -> bool:
    frequency, unit = (value[0], value[1]) if isinstance(value, list | tuple) else (value, "step")
    return frequency >= 1 and unit in ("step", "episode")


# What each SB3 hyperparameter means, as the values that mean something: (test, allowed values, meaning).
# Outside them SB3 asserts (n_steps * n_envs > 1, clip_range_vf > 0, gSDE with discrete actions, a
# zero train_freq), divides by zero (exploration_fraction 0), trains into NaN (gamma > 1, a negative
# learning rate) or does not train at all (n_epochs 0). null (target_kl, clip_range_vf) means "off".
_MEANINGS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "learning_rate": (lambda v: v > 0, "> 0", "the optimizer's step size"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]", "the discount factor"),
    "gae_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]", "the GAE bias/variance trade-off"),
    "n_steps": (lambda v: v >= 1, ">= 1", "steps per rollout; DQN: the length of its n-step returns"),
    "batch_size": (lambda v: v >= 1, ">= 1", "transitions per gradient step"),
    "n_epochs": (lambda v: v >= 1, ">= 1", "passes over each rollout"),
    "clip_range": (lambda v: v > 0, "> 0", "PPO's policy clipping"),
    "clip_range_vf": (lambda v: v > 0, "> 0 or null", "PPO's value clipping"),
    "target_kl": (lambda v: v > 0, "> 0 or null", "the KL divergence that stops an update early"),
    "ent_coef": (lambda v: v >= 0, ">= 0", "the entropy bonus weight"),
    "vf_coef": (lambda v: v >= 0, ">= 0", "the value loss weight"),
    "max_grad_norm": (lambda v: v > 0, "> 0", "the gradient clipping norm"),
    "rms_prop_eps": (lambda v: v > 0, "> 0", "RMSprop's epsilon"),
    "use_sde": (lambda v: v is False, "false", "gSDE, which needs continuous actions; the market env's are discrete"),
    "buffer_size": (lambda v: v >= 1, ">= 1", "the replay buffer's transitions"),
    "learning_starts": (lambda v: v >= 0, ">= 0", "steps collected before learning starts"),
    "tau": (lambda v: 0 < v <= 1, "in (0, 1]", "the target network's soft update coefficient"),
    "train_freq": (_train_freq_ok, ">= 1 (or [>= 1, step|episode])", "how often the model is updated"),
    "gradient_steps": (lambda v: v >= 1 or v == -1, ">= 1, or -1", "gradient steps per update (-1: one per step collected)"),
    "target_update_interval": (lambda v: v >= 1, ">= 1", "steps between target network updates"),
    "exploration_fraction": (lambda v: 0 < v <= 1, "in (0, 1]", "the share of training over which epsilon decays"),
    "exploration_initial_eps": (lambda v: 0 <= v <= 1, "in [0, 1]", "the first exploration probability"),
    "exploration_final_eps": (lambda v: 0 <= v <= 1, "in [0, 1]", "the last exploration probability"),
    "optimize_memory_usage": (lambda v: v is False, "false", "a replay buffer mode SB3 refuses with the timeout "
                              "handling the trainer keeps on"),
}
# The trainer trains on one MarketEnv (SB3 wraps it in a DummyVecEnv of 1): a rollout is n_steps x 1 steps.
N_ENVS = 1


def _check_hyperparameter(algorithm: str, key: str, value: Any) -> None:
    allowed = algorithm_parameters(algorithm)
    if key in _CONTROLLED:
        raise ValueError(f"hyperparameters.{key} is set by the trainer and cannot be given in a spec")
    if key not in allowed:
        raise ValueError(f"hyperparameters.{key} is not a {algorithm} parameter; allowed: {', '.join(sorted(allowed))}")
    forms = _accepted(allowed[key].annotation)
    if forms and not any(test(value) for _, test in forms):
        raise ValueError(f"hyperparameters.{key}={value!r} must be {' or '.join(d for d, _ in forms)}")
    if key in _MEANINGS and value is not None:
        test, bound, meaning = _MEANINGS[key]
        if not test(value):
            raise ValueError(f"hyperparameters.{key}={value!r} must be {bound} ({meaning})")


def _check_together(algorithm: str, given: dict[str, Any]) -> None:
    """The hyperparameters that bound each other, each as given or SB3's default."""
    defaults = algorithm_parameters(algorithm)

    def value(key: str) -> tuple[Any, str]:
        """The value and how to name it: `key=value`, marked when it is SB3's default."""
        v = given[key] if key in given else defaults[key].default
        return v, f"{key}={v!r}" + ("" if key in given else " (SB3's default)")

    if algorithm in ("PPO", "A2C"):
        (n_steps, steps), (normalize, normalizing) = value("n_steps"), value("normalize_advantage")
        rollout = n_steps * N_ENVS
        if normalize and rollout < 2:  # one advantage has no spread to normalise by: NaN (PPO asserts)
            raise ValueError(f"hyperparameters.{steps}: the rollout n_steps x n_envs = {n_steps} x {N_ENVS} must be "
                             f">= 2 steps with {normalizing}")
    if algorithm == "PPO":
        batch, batch_named = value("batch_size")
        if batch > rollout:
            raise ValueError(f"hyperparameters.{batch_named} must be at most the rollout size n_steps x n_envs = "
                             f"{rollout} with {steps} and n_envs={N_ENVS}: PPO cuts its minibatches from each rollout")
        if normalize and batch < 2:  # SB3 asserts
            raise ValueError(f"hyperparameters.{batch_named} must be >= 2 with {normalizing}, which normalises "
                             "each minibatch's advantages")
    if algorithm == "DQN":
        (batch, batch_named), (buffer, buffer_named) = value("batch_size"), value("buffer_size")
        if batch > buffer:
            raise ValueError(f"hyperparameters.{batch_named} must be at most the replay buffer's size {buffer_named}")


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
    # The feature columns the policy observes, by name (None: every feature of the set; []: none, the
    # position alone). The vectors every path hands the policy stay the set's full canonical vectors;
    # the trainer and `Policy.act` select these columns (`feature_columns`), so a feature removed from a
    # spec is removed alike in the env, the backtest, the accountant's replays and paper decisions.
    features: tuple[str, ...] | None = Field(default=None, max_length=4096)

    @field_validator("features")
    @classmethod
    def _distinct_features(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            repeated = sorted({name for name in value if value.count(name) > 1})
            if repeated:
                raise ValueError(f"features: {', '.join(repeated)} listed more than once")
        return value

    @model_validator(mode="after")
    def _known_hyperparameters(self) -> ModelSpec:
        for key, value in self.hyperparameters.items():
            _check_hyperparameter(self.algorithm, key, value)
        _check_together(self.algorithm, self.hyperparameters)
        return self

    def canonical_json(self) -> str:
        # `features` only when given: the specs written before it existed keep their hash
        dumped = self.model_dump(mode="json", exclude={"features"} if self.features is None else None)
        return json.dumps(dumped, sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def parse_model_spec(data: Any, source: str) -> ModelSpec:
    return validated(ModelSpec, data, "model spec", source)


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A spec by name (`rl_lifecycle/models/specs/<name>.yaml`) or by YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
        raise UserInputError(f"model spec {name_or_path!r} not found: give a YAML file or one of {known}")
    return parse_model_spec(read_yaml(path, "model spec"), str(path))


def feature_columns(spec: ModelSpec, feature_names: tuple[str, ...] | list[str]) -> np.ndarray | None:
    """The column indices of `spec.features` in vectors of `feature_names` (the spec's order); None when
    the spec observes every feature. A feature the vectors do not hold is refused by name."""
    if spec.features is None:
        return None
    index = {name: i for i, name in enumerate(feature_names)}
    unknown = [name for name in spec.features if name not in index]
    if unknown:
        raise UserInputError(f"model spec {spec.name!r}: features {', '.join(unknown)} are not features of "
                             f"feature set {spec.feature_set} ({', '.join(feature_names)})")
    return np.array([index[name] for name in spec.features], dtype=np.int64)


def observed(spec: ModelSpec, feature_names: tuple[str, ...] | list[str], vectors: np.ndarray) -> np.ndarray:
    """The columns of canonical `vectors` (of `feature_names`) the spec's policy observes: the one
    selection the trainer's env and `Policy.act` both apply."""
    columns = feature_columns(spec, feature_names)
    vectors = np.asarray(vectors)
    return vectors if columns is None else vectors[:, columns]


def check_dataset_compatible(
    spec: ModelSpec, dataset_feature_set: str, dataset_fingerprint: str,
    current_fingerprint: Callable[[str], str], *, dataset: str = "the dataset",
) -> None:
    """Refuse, before training, a spec whose feature set is not the one the dataset's vectors come from.

    `current_fingerprint(name)` is the fingerprint the named feature set computes with today; it is
    asked only once the names agree, and must equal the dataset's: a set whose definition (or TA-Lib)
    changed since the dataset was built would train on vectors inference no longer produces.
    """
    if spec.feature_set != dataset_feature_set:
        raise UserInputError(
            f"model spec {spec.name!r} wants feature set {spec.feature_set!r}, but {dataset} "
            f"holds {dataset_feature_set!r} vectors"
        )
    current = current_fingerprint(spec.feature_set)
    if current != dataset_fingerprint:
        raise UserInputError(
            f"model spec {spec.name!r}: feature set {spec.feature_set} now fingerprints as {current[:12]}, "
            f"{dataset} was built with {dataset_fingerprint[:12]}; rebuild the dataset first"
        )
