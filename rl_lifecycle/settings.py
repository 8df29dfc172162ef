"""Environment-driven settings: one declarative table of the RL_* variables, and the one reader of them.

`VARIABLES` names each variable with its default, its meaning and, for the rollout switches, the
stage of the rollout (seed plan) at which it is switched on; `rl-lifecycle status` prints the switches
from this table, and `load_settings()` reads the environment through it (at each call).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rl_lifecycle.errors import UserInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # as the environment would spell it; None: unset
    meaning: str
    stage: int | None = None  # rollout stage: switch them on in this order
    switch: str | None = None  # its name among the rollout switches

    def raw(self) -> str | None:
        """The value set in the environment, stripped; None when unset or blank."""
        value = (os.environ.get(self.name) or "").strip()
        return value or None

    def value(self) -> str | None:
        return self.raw() or self.default

    @property
    def explicit(self) -> bool:
        return self.raw() is not None

    @property
    def field(self) -> str:
        """Its `Settings` field: the name without `RL_`, in lower case (`RL_AUTO_PROMOTION` -> `auto_promotion`)."""
        return self.name.removeprefix("RL_").lower()


VARIABLES: tuple[Variable, ...] = (
    Variable("RL_HOME", ".rl_lifecycle", "state dir: embedded database, Dagster home, datasets, MLflow artifacts, inbox"),
    Variable("RL_DATABASE_URL", None, "external PostgreSQL; unset: the embedded server under $RL_HOME/pgdata"),
    Variable("RL_FEATURE_SET", "ta_v2", "the selected feature set; rollback: RL_FEATURE_SET=core_v1",
             stage=2, switch="TA feature set"),
    Variable("RL_PAPER_DECISIONS_ENABLED", "false",
             "one paper decision per market per interval (never routes orders)", stage=2, switch="paper decisions"),
    Variable("RL_STRICT_BACKTEST", "true",
             "strict fold backtests for the promotion gates; keep true outside tests", stage=3, switch="walk-forward gates"),
    Variable("RL_ONLINE_LEARNING_ENABLED", "false",
             "the sensor trains, evaluates and decides on every completed window", stage=4, switch="online learning"),
    Variable("RL_AUTO_PROMOTION", "false",
             "passing decisions promote by themselves; false: they wait as pending for `rl-lifecycle promote`",
             stage=5, switch="auto promotion"),
    Variable("RL_WINDOW_CADENCE", "monthly", "the `window` partitions and the anchor of the feature rule: monthly, weekly, daily"),
    Variable("RL_WINDOW_START", None, "the first `window` partition; unset: by cadence (monthly 2000-01-01, weekly "
             "2010-01-04, daily 2020-01-01)"),
    Variable("RL_MLFLOW_ARTIFACTS", None, "MLflow artifact root (an object-store URI); unset: $RL_HOME/mlflow"),
    Variable("RL_MLFLOW_UI_URL", "http://127.0.0.1:5000", "where `rl-lifecycle mlflow ui` serves: links in metadata"),
    Variable("RL_DECISION_CONFIG", None, "hold thresholds YAML; unset: rl_lifecycle/decisions/decisions.yaml"),
    Variable("RL_ALERT_WEBHOOK_URL", None, "Slack-compatible webhook; unset: alerts are only stored and logged"),
    Variable("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS", "5", "timeout of one webhook POST (capped at 30)"),
    Variable("RL_DAGSTER_UI_URL", "http://127.0.0.1:3000", "base of the run links in alerts and backfills"),
)
_BY_NAME = {v.name: v for v in VARIABLES}

# First `window` partition when RL_WINDOW_START is unset: early enough for the history people import
# (daily equities and FX back to the 2000s, crypto since 2017) while market x window stays small:
# monthly from 2000 is about 320 windows per market (100 markets: ~32,000 partitions per asset, well
# under Dagster's 100,000). Shorter windows start later for the same reason (weekly ~860, daily ~2,500).
DEFAULT_WINDOW_START = {"monthly": "2000-01-01", "weekly": "2010-01-04", "daily": "2020-01-01"}


def variable(name: str) -> Variable:
    return _BY_NAME[name]


def _text(name: str) -> str | None:
    return _BY_NAME[name].value()


def _flag(name: str) -> bool:
    value = _text(name).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserInputError(f"{name}={os.environ.get(name)!r} is not a boolean (use true/false)")


def _number(name: str) -> float:
    value = _text(name)
    try:
        return float(value)
    except ValueError:
        raise UserInputError(f"{name}={value!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    """The settings as read now; each field is its variable's `Variable.field`."""

    home: Path
    database_url: str | None
    strict_backtest: bool
    online_learning_enabled: bool
    feature_set: str
    window_cadence: str
    window_start: str
    mlflow_artifacts: str | None
    mlflow_ui_url: str
    auto_promotion: bool
    paper_decisions_enabled: bool
    decision_config: str | None
    alert_webhook_url: str | None
    alert_webhook_timeout_seconds: float
    dagster_ui_url: str

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def mlflow_artifacts_uri(self) -> str:
        return self.mlflow_artifacts or (self.home / "mlflow").as_uri()

    @property
    def inbox_dir(self) -> Path:
        """Candle files dropped here (`<market>/`) are imported by the inbox sensor."""
        return self.home / "inbox"

    @property
    def bench_dir(self) -> Path:
        return self.home / "bench"


def default_window_start(cadence: str) -> str:
    return DEFAULT_WINDOW_START.get(cadence, DEFAULT_WINDOW_START["monthly"])


def load_settings() -> Settings:
    cadence = _text("RL_WINDOW_CADENCE")
    return Settings(
        home=Path(_text("RL_HOME")).expanduser().resolve(),
        database_url=_text("RL_DATABASE_URL"),
        strict_backtest=_flag("RL_STRICT_BACKTEST"),
        online_learning_enabled=_flag("RL_ONLINE_LEARNING_ENABLED"),
        auto_promotion=_flag("RL_AUTO_PROMOTION"),
        paper_decisions_enabled=_flag("RL_PAPER_DECISIONS_ENABLED"),
        decision_config=_text("RL_DECISION_CONFIG"),
        alert_webhook_url=_text("RL_ALERT_WEBHOOK_URL"),
        alert_webhook_timeout_seconds=_number("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS"),
        dagster_ui_url=_text("RL_DAGSTER_UI_URL"),
        feature_set=_text("RL_FEATURE_SET"),
        window_cadence=cadence,
        mlflow_artifacts=_text("RL_MLFLOW_ARTIFACTS"),
        mlflow_ui_url=_text("RL_MLFLOW_UI_URL"),
        window_start=_text("RL_WINDOW_START") or default_window_start(cadence),
    )


def rollout_switches() -> list[Variable]:
    """The variables that switch a rollout stage on, in the order the plan stages them."""
    return sorted((v for v in VARIABLES if v.stage is not None), key=lambda v: v.stage)
