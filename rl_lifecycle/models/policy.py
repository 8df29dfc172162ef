"""The one inference function: `Policy.act(vectors, positions) -> target positions`, batched over rows.

A policy is saved as a directory (`model.zip` from stable-baselines3 plus `policy.json` naming the
spec, the feature fingerprint and the feature order) and loaded back from a registered MLflow
version. It refuses vectors of another fingerprint: a model only ever sees the features it was
trained on. The env's evaluation, the backtest strategy and live decisions all act through it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.models.env import observations
from rl_lifecycle.models.spec import ModelSpec, feature_columns
from rl_lifecycle.trading import ACTION_POSITIONS, rollout

MODEL_FILE = "model.zip"
META_FILE = "policy.json"


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Reductions in one fixed order: the same bits for the same inputs, whatever the machine's cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _algorithm_class(name: str):
    import stable_baselines3

    return getattr(stable_baselines3, name)


class Policy:
    def __init__(self, model, spec: ModelSpec, fingerprint: str, feature_names: tuple[str, ...], version: int | None = None):
        self.model, self.spec, self.fingerprint = model, spec, fingerprint
        self.feature_names, self.version = tuple(feature_names), version
        self.positions: tuple[int, ...] = ACTION_POSITIONS[spec.action_set]
        self._position_of = np.asarray(self.positions, dtype=np.int8)
        # the columns of the set's vectors the model observes (`ModelSpec.features`); None: all of them
        self._columns = feature_columns(spec, self.feature_names)

    @property
    def observed_features(self) -> tuple[str, ...]:
        """The features the model sees, in its observation's order (the position follows them)."""
        return self.feature_names if self._columns is None else tuple(self.feature_names[i] for i in self._columns)

    def act(self, vectors: np.ndarray, positions: np.ndarray, *, fingerprint: str) -> np.ndarray:
        """Target positions (int8) for canonical float64 vectors of `fingerprint`, held at `positions`. The
        vectors are the set's whole vectors; a spec that observes some features only (`ModelSpec.features`)
        has its columns selected here, as the trainer selected them."""
        if fingerprint != self.fingerprint:
            raise UserInputError(
                f"vectors of feature fingerprint {fingerprint[:12]} given to a policy trained on {self.fingerprint[:12]} "
                f"({self.spec.feature_set}); use the vectors of the feature set the model was trained on"
            )
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != len(self.feature_names):
            raise ValueError(f"expected vectors of shape (n, {len(self.feature_names)}), got {vectors.shape}")
        if len(vectors) == 0:
            return np.empty(0, dtype=np.int8)
        import torch

        if self._columns is not None:
            vectors = vectors[:, self._columns]
        with one_torch_thread(), torch.no_grad():
            actions, _ = self.model.predict(observations(vectors, positions), deterministic=True)
        return self._position_of[np.asarray(actions, dtype=np.int64)]

    def on(self, fingerprint: str) -> BoundPolicy:
        """This policy for vectors of `fingerprint` (refused now if it is not the model's)."""
        self.act(np.empty((0, len(self.feature_names))), np.empty(0, dtype=np.int8), fingerprint=fingerprint)
        return BoundPolicy(self, fingerprint)

    def rollout(self, vectors: np.ndarray, *, fingerprint: str, initial_position: int = 0) -> np.ndarray:
        """The positions taken bar after bar over `vectors` (exact, batched)."""
        return rollout(self.on(fingerprint), vectors, initial_position)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_FILE)
        meta = {"spec": json.loads(self.spec.canonical_json()), "fingerprint": self.fingerprint,
                "feature_names": list(self.feature_names)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path, version: int | None = None) -> Policy:
        meta = json.loads((directory / META_FILE).read_text())
        spec = ModelSpec.model_validate(meta["spec"])
        model = _algorithm_class(spec.algorithm).load(directory / MODEL_FILE, device="cpu")
        return cls(model, spec, meta["fingerprint"], tuple(meta["feature_names"]), version)


@dataclass(frozen=True)
class BoundPolicy:
    """A policy checked against one fingerprint: the `ActsOnVectors` the backtest and rollouts take."""

    policy: Policy
    fingerprint: str

    @property
    def positions(self) -> tuple[int, ...]:
        return self.policy.positions

    def act(self, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.policy.act(vectors, positions, fingerprint=self.fingerprint)


def actions_digest(positions: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(positions, dtype=np.int8).tobytes()).hexdigest()


def load_registered_policy(registry, market, version: int | str) -> Policy:
    """A registered version (number or alias) of the market's model, downloaded and loaded."""
    info = registry.version(market, version)
    with tempfile.TemporaryDirectory(prefix="rl-policy-") as tmp:
        directory = registry.download(info, Path(tmp))
        return Policy.load(directory, info.version)
