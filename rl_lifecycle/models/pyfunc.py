"""A registered policy as an MLflow pyfunc model: `Policy.act` behind MLflow's own loader and server.

Every version `ModelRegistry.register` creates from a policy directory is a logged MLflow model
(`mlflow.pyfunc.log_model`): its artifacts are the policy files (`artifacts/policy/model.zip` and
`policy.json`, loaded with `Policy.load`), its signature names the feature columns in the model's
order plus the held `position`, its requirements are pinned from `requirements.lock`. So

    mlflow.pyfunc.load_model("models:/rl-BTCUSDT-1h@champion").predict(frame)

and `mlflow models serve -m models:/rl-BTCUSDT-1h@champion --env-manager local` give the target
positions `Policy.act` gives for the same rows. The wrapper itself lives in this package, so a
process that loads the model needs `rl_lifecycle` importable (the project's environment).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from rl_lifecycle.models.policy import Policy

MODEL_NAME = "model"  # the logged model's name in its run (not `policy`: the run's raw policy directory keeps that)
POLICY_KEY = "policy"  # the pyfunc artifact holding the policy files: <model>/artifacts/policy/
POSITION_COLUMN = "position"  # input: the position held at the row (one of the policy's positions)
TARGET_COLUMN = "target_position"  # output: the position the policy takes
# What loading and calling the model imports (the wrapper, Policy.load, SB3's zip), pinned from requirements.lock.
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "torch", "stable_baselines3", "gymnasium",
                      "pydantic", "PyYAML")
LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"
# The models-from-code file `log_model` is given (copied into each model): it builds a `PolicyModel`, no pickle.
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(lock_file: Path = LOCK_FILE) -> list[str]:
    """`name==version` for each of MODEL_REQUIREMENTS, as `requirements.lock` pins it (the installed
    version when the lock file is not there, e.g. a wheel install)."""
    wanted = {_normalized(n): n for n in MODEL_REQUIREMENTS}
    pins: dict[str, str] = {}
    if lock_file.exists():
        for line in lock_file.read_text().splitlines():
            name, sep, version = line.strip().partition("==")
            if sep and _normalized(name) in wanted:
                pins[_normalized(name)] = f"{name}=={version.split(';')[0].strip()}"
    for key, name in wanted.items():
        if key not in pins:
            pins[key] = f"{name}=={metadata.version(name)}"
    return [pins[_normalized(n)] for n in MODEL_REQUIREMENTS]


class PolicyModel(mlflow.pyfunc.PythonModel):
    """`Policy.act` as a pyfunc: a frame of feature columns (by name) and `position` in, `target_position` out."""

    def load_context(self, context) -> None:
        self.policy = Policy.load(Path(context.artifacts[POLICY_KEY]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return _predict(self.policy, model_input)


def _predict(policy: Policy, model_input):
    """The policy's target positions for a frame's feature columns (taken by name) held at its `position`s."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in (*policy.feature_names, POSITION_COLUMN) if c not in frame.columns]
    if missing:
        raise ValueError(f"input lacks the column(s) {missing}: the model reads {len(policy.feature_names)} "
                         f"feature columns and {POSITION_COLUMN!r}")
    vectors = frame[list(policy.feature_names)].to_numpy(dtype=np.float64)
    held = frame[POSITION_COLUMN].to_numpy()
    if not np.isin(held, policy.positions).all():
        raise ValueError(f"{POSITION_COLUMN!r} must be one of {list(policy.positions)} (the {policy.spec.action_set} "
                         f"action set), got {sorted(set(held.tolist()) - set(policy.positions))}")
    actions = policy.act(vectors, held.astype(np.int8), fingerprint=policy.fingerprint)
    return pd.DataFrame({TARGET_COLUMN: actions.astype(np.int64)})


def signature(feature_names: tuple[str, ...]):
    """Feature columns (double, in the model's order), then `position` (long); out: `target_position` (long)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("double", name) for name in feature_names] + [ColSpec("long", POSITION_COLUMN)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("long", TARGET_COLUMN)]))


def input_example(policy: Policy, vectors: np.ndarray | None = None, rows: int = 3):
    """A few rows of `vectors` (zeros when none are given), held at each of the policy's positions in turn."""
    if vectors is None or len(vectors) == 0:
        vectors = np.zeros((rows, len(policy.feature_names)))
    vectors = np.asarray(vectors, dtype=np.float64)[:rows]
    frame = pd.DataFrame(vectors, columns=list(policy.feature_names))
    frame[POSITION_COLUMN] = np.resize(np.asarray(policy.positions, dtype=np.int64), len(frame))
    return frame


def log_policy_model(policy_dir: Path, example_vectors: np.ndarray | None = None,
                     metadata: dict[str, str] | None = None):
    """Log the policy saved in `policy_dir` as a pyfunc model of the active run; returns MLflow's `ModelInfo`."""
    policy = Policy.load(policy_dir)
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(MODEL_CODE),
        artifacts={POLICY_KEY: str(policy_dir)},
        signature=signature(policy.feature_names),
        input_example=input_example(policy, example_vectors),
        pip_requirements=pinned_requirements(),
        metadata={"fingerprint": policy.fingerprint, "feature_set": policy.spec.feature_set,
                  "action_set": policy.spec.action_set, **(metadata or {})},
    )

