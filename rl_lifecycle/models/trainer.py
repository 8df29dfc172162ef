"""The trainer: a dataset's vectors + a model spec -> a trained stable-baselines3 policy, deterministically.

Same dataset, spec and seed give the same weights hash on CPU: python, numpy and torch are seeded,
torch runs deterministic algorithms on one thread (a reduction split over threads can change the
last bits), and the env is seeded. What breaks it is in docs/training.md.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from rl_lifecycle.models.env import MarketEnv
from rl_lifecycle.models.policy import one_torch_thread
from rl_lifecycle.models.spec import ModelSpec, observed

Progress = Callable[[int, int], None]
MetricSink = Callable[[int, dict[str, float]], None]


@dataclass
class TrainedModel:
    model: object  # the SB3 algorithm instance
    weights_hash: str
    timesteps: int
    wall_seconds: float
    curve: dict[str, list[float]] = field(default_factory=dict)  # timesteps, episode_reward

    @property
    def fps(self) -> float:
        return self.timesteps / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def weights_hash(model) -> str:
    """sha256 over the policy network's tensors in key order, as little-endian bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.policy.state_dict().items()):
        array = tensor.detach().cpu().numpy()
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """One thread and deterministic kernels while training; the caller's settings come back after."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with one_torch_thread():
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)


def build_model(spec: ModelSpec, env):
    import stable_baselines3
    import torch

    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[spec.policy.activation]
    from stable_baselines3.common.logger import Logger

    algorithm = getattr(stable_baselines3, spec.algorithm)
    model = algorithm(
        "MlpPolicy", env, seed=spec.seed, device="cpu", verbose=0,
        policy_kwargs={"net_arch": list(spec.policy.net_arch), "activation_fn": activation},
        # YAML gives lists where SB3 wants tuples (DQN's train_freq: [1, episode])
        **{key: tuple(value) if isinstance(value, list) else value for key, value in spec.hyperparameters.items()},
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger makes a /tmp folder per run
    return model


@dataclass(frozen=True)
class _Observed:
    """A dataset's rows with only the columns the spec observes (what the env reads: values and close)."""

    values: np.ndarray
    close: np.ndarray


def train_policy(
    content, continues: np.ndarray, spec: ModelSpec, *, progress: Progress | None = None,
    log_metrics: MetricSink | None = None, feature_names: tuple[str, ...] | None = None,
    opens: np.ndarray | None = None,
) -> TrainedModel:
    """Train `spec` on a dataset's rows (`DatasetContent`); `continues[i]`: row i+1 is the bar after row i.
    `opens`: the rows' opens under the `next_open` fill convention (`TrainingData.open`), None under `close`.
    `feature_names`: the columns of `content.values`, needed when the spec observes some of them only
    (`ModelSpec.features`): the env then sees those columns, selected as `Policy.act` selects them."""
    from stable_baselines3.common.utils import set_random_seed

    if spec.features is not None:
        if feature_names is None:
            raise ValueError(f"model spec {spec.name!r} observes features {list(spec.features)}: give the "
                             "feature_names of the vectors")
        content = _Observed(observed(spec, feature_names, content.values), content.close)
    with deterministic_torch():
        set_random_seed(spec.seed)
        env = MarketEnv.from_dataset(content, continues, spec, opens=opens)
        model = build_model(spec, env)
        reporter = _Reporter(spec.total_timesteps, progress, log_metrics)
        if log_metrics is not None:
            model.set_logger(_metrics_logger(log_metrics))
        started = time.perf_counter()
        model.learn(total_timesteps=spec.total_timesteps, callback=reporter, progress_bar=False)
        wall = time.perf_counter() - started
        return TrainedModel(model, weights_hash(model), int(model.num_timesteps), wall,
                            {"timesteps": reporter.steps, "episode_reward": reporter.rewards})


def _reporter_base():
    from stable_baselines3.common.callbacks import BaseCallback

    return BaseCallback


class _Reporter(_reporter_base()):
    """Episode rewards into the curve and the metric sink; progress about every 2% of the timesteps."""

    def __init__(self, total: int, progress: Progress | None, log_metrics: MetricSink | None):
        super().__init__()
        self.total, self.progress, self.log_metrics = total, progress, log_metrics
        self.every = max(1, total // 50)
        self.reported = 0
        self.steps: list[float] = []
        self.rewards: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.steps.append(float(self.num_timesteps))
                self.rewards.append(float(episode["r"]))
                if self.log_metrics is not None:
                    self.log_metrics(self.num_timesteps, {"episode_reward": float(episode["r"]),
                                                          "episode_length": float(episode["l"])})
        if self.progress is not None and self.num_timesteps - self.reported >= self.every:
            self.reported = self.num_timesteps
            self.progress(self.num_timesteps, self.total)
        return True

    def _on_training_end(self) -> None:
        if self.progress is not None and self.reported != self.num_timesteps:
            self.progress(self.num_timesteps, self.total)


def _metrics_logger(sink: MetricSink):
    """An SB3 logger whose only output is the sink: losses, entropy, fps per logging step (no folder)."""
    from stable_baselines3.common.logger import KVWriter, Logger

    class SinkWriter(KVWriter):
        def write(self, key_values, key_excluded, step: int = 0) -> None:
            numeric = {k: float(v) for k, v in key_values.items()
                       if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)}
            if numeric:
                sink(step, numeric)

        def close(self) -> None:
            pass

    return Logger(folder=None, output_formats=[SinkWriter()])
