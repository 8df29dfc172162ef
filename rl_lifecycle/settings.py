"""Environment-driven settings: one place that reads RL_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rl_lifecycle.errors import UserInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserInputError(f"{name}={raw!r} is not a boolean (use true/false)")


def _number(name: str, default: float) -> float:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UserInputError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None
    strict_backtest: bool
    online_learning_enabled: bool
    feature_set: str
    window_cadence: str
    window_start: str
    mlflow_artifacts: str | None = None  # RL_MLFLOW_ARTIFACTS: an object-store URI; unset -> $RL_HOME/mlflow
    mlflow_ui_url: str = "http://127.0.0.1:5000"  # where `rl-lifecycle mlflow ui` serves; for links in metadata
    auto_promotion: bool = False  # RL_AUTO_PROMOTION: passing decisions promote; otherwise they wait as pending_manual
    paper_decisions_enabled: bool = False  # RL_PAPER_DECISIONS_ENABLED: the paper_decisions schedule decides
    decision_config: str | None = None  # RL_DECISION_CONFIG: hold thresholds YAML; unset -> rl_lifecycle/decisions/decisions.yaml
    alert_webhook_url: str | None = None  # RL_ALERT_WEBHOOK_URL: Slack-compatible webhook; unset -> alerts are only stored and logged
    alert_webhook_timeout_s: float = 5.0  # RL_ALERT_WEBHOOK_TIMEOUT_SECONDS (capped at 30)
    dagster_ui_url: str = "http://127.0.0.1:3000"  # RL_DAGSTER_UI_URL: base of the run links in alerts

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


# First `window` partition when RL_WINDOW_START is unset: early enough for the history people import
# (daily equities and FX back to the 2000s, crypto since 2017) while market x window stays small:
# monthly from 2000 is about 320 windows per market (100 markets: ~32,000 partitions per asset, well
# under Dagster's 100,000). Shorter windows start later for the same reason (weekly ~860, daily ~2,500).
DEFAULT_WINDOW_START = {"monthly": "2000-01-01", "weekly": "2010-01-04", "daily": "2020-01-01"}


def default_window_start(cadence: str) -> str:
    return DEFAULT_WINDOW_START.get(cadence, DEFAULT_WINDOW_START["monthly"])


def load_settings() -> Settings:
    home = Path(os.environ.get("RL_HOME") or ".rl_lifecycle").expanduser().resolve()
    cadence = os.environ.get("RL_WINDOW_CADENCE") or "monthly"
    return Settings(
        home=home,
        database_url=(os.environ.get("RL_DATABASE_URL") or None),
        strict_backtest=_flag("RL_STRICT_BACKTEST", True),
        online_learning_enabled=_flag("RL_ONLINE_LEARNING_ENABLED", False),
        auto_promotion=_flag("RL_AUTO_PROMOTION", False),
        paper_decisions_enabled=_flag("RL_PAPER_DECISIONS_ENABLED", False),
        decision_config=os.environ.get("RL_DECISION_CONFIG") or None,
        alert_webhook_url=(os.environ.get("RL_ALERT_WEBHOOK_URL") or "").strip() or None,
        alert_webhook_timeout_s=_number("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS", 5.0),
        dagster_ui_url=(os.environ.get("RL_DAGSTER_UI_URL") or "").strip() or "http://127.0.0.1:3000",
        feature_set=os.environ.get("RL_FEATURE_SET") or "ta_v2",
        window_cadence=cadence,
        mlflow_artifacts=os.environ.get("RL_MLFLOW_ARTIFACTS") or None,
        mlflow_ui_url=os.environ.get("RL_MLFLOW_UI_URL") or "http://127.0.0.1:5000",
        window_start=os.environ.get("RL_WINDOW_START") or default_window_start(cadence),
    )
