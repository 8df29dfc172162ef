"""Environment-driven settings: one declarative table of the RL_* variables, and the one reader of them.

`VARIABLES` names each variable with its default, its meaning and, for the rollout switches, the
stage of the rollout (seed plan) at which it is switched on and its switch name; `load_settings()` reads
the environment through it (at each call). A rollout switch may also be stored in the database
(`rl-lifecycle switch set`), which then wins over the environment everywhere:
`rl_lifecycle.switches.settings_in_force` gives the settings with the switches in force.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from rl_lifecycle.errors import UserInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # as the environment would spell it; None: unset
    meaning: str
    stage: int | None = None  # rollout stage (ROLLOUT_STAGES): switch them on in this order
    switch: str | None = None  # its name as a rollout switch, as people type it (`rl-lifecycle switch set NAME`)

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
    Variable("RL_FEATURE_SET", "ta_v2", "the selected feature set; rollback: point it back at core_v1",
             stage=2, switch="feature_set"),
    Variable("RL_PAPER_DECISIONS_ENABLED", "false",
             "one paper decision per market per interval (never routes orders)", stage=2, switch="paper_decisions"),
    Variable("RL_STRICT_BACKTEST", "true",
             "strict fold backtests for the promotion gates; keep true outside tests", stage=3, switch="strict_backtest"),
    Variable("RL_ONLINE_LEARNING_ENABLED", "false",
             "the sensor trains, evaluates and decides on every completed window", stage=4, switch="online_learning"),
    Variable("RL_AUTO_PROMOTION", "false",
             "passing decisions promote by themselves; false: they wait as pending for `rl-lifecycle promote`",
             stage=5, switch="auto_promotion"),
    Variable("RL_AUTO_ROLLBACK", "false",
             "a champion's paper drawdown beyond its walk-forward band rolls back to the previous champion "
             "(actor auto-rollback); false: the breach is only alerted", stage=5, switch="auto_rollback"),
    Variable("RL_STABILITY_DAYS", "7", "auto promotion waits until the market has run this many days at the current "
             "rollout stage without an open alert, failed check or paper breach (STABILITY_WINDOW_NOT_MET)"),
    Variable("RL_DRIFT_OOD_SHARE", "0.5", "drift: the share of OOD holds among the champion's last RL_DRIFT_BARS "
             "paper decisions at or above which a bar counts as drifted"),
    Variable("RL_DRIFT_BARS", "12", "drift: bars the OOD share must stay at or above RL_DRIFT_OOD_SHARE before online "
             "learning retrains the market's latest window early (the share is over a trailing window of as many bars)"),
    Variable("RL_WINDOW_CADENCE", "monthly", "the `window` partitions and the anchor of the feature rule: monthly, weekly, daily"),
    Variable("RL_WINDOW_START", None, "the first `window` partition; unset: by cadence (monthly 2000-01-01, weekly "
             "2010-01-04, daily 2020-01-01)"),
    Variable("RL_MLFLOW_ARTIFACTS", None, "MLflow artifact root (an object-store URI); unset: $RL_HOME/mlflow"),
    Variable("RL_MLFLOW_UI_URL", "http://127.0.0.1:5000", "where `rl-lifecycle mlflow ui` serves: links in metadata"),
    Variable("RL_DECISION_CONFIG", None, "hold thresholds YAML; unset: rl_lifecycle/decisions/decisions.yaml"),
    Variable("RL_ALERT_WEBHOOK_URL", None, "Slack-compatible webhook; unset: alerts are only stored and logged"),
    Variable("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS", "5", "timeout of one webhook POST (capped at 30)"),
    Variable("RL_DAGSTER_UI_URL", "http://127.0.0.1:3000", "base of the run links in alerts and backfills"),
    # Bounds on a candle file (`ingest` and the inbox), checked while it streams in: rl_lifecycle/candles/limits.py
    Variable("RL_INGEST_MAX_FILE_BYTES", "1073741824", "largest candle file taken, as stored (compressed or not)"),
    Variable("RL_INGEST_MAX_DECOMPRESSED_BYTES", "1073741824",
             "largest CSV text after decompression (.gz, .zip) and largest uncompressed Parquet candle columns"),
    Variable("RL_INGEST_MAX_COLUMNS", "64", "most columns a candle file may have"),
    Variable("RL_INGEST_MAX_LINE_BYTES", "16384", "longest line of a candle CSV, in bytes"),
    Variable("RL_INGEST_MAX_ROWS", "10000000", "most data rows of a candle file"),
    Variable("RL_INBOX_SETTLE_SECONDS", "10",
             "an inbox file is taken once its size and mtime have stayed the same this long, over two sensor ticks"),
    # Past one machine (docs/deployment.md): rl_lifecycle/cluster/, rl_lifecycle/orchestration/celery.py
    Variable("RL_EXECUTOR", "multiprocess", "how lifecycle_job runs its steps: multiprocess (processes of this "
             "machine) or celery (tasks on the workers of `rl-lifecycle worker`, over the broker)"),
    Variable("RL_BROKER_URL", None, "an existing Redis (or RabbitMQ) broker for Celery; unset: the embedded Redis of "
             "`rl-lifecycle broker start` on 127.0.0.1:RL_BROKER_PORT"),
    Variable("RL_BROKER_PORT", "6390", "the embedded Redis broker's port (127.0.0.1 only)"),
    Variable("RL_WORKER_NAME", None, "the Celery node this process serves (set by `rl-lifecycle worker` for each "
             "node): recorded with each fold and model version it ran"),
    Variable("RL_MLFLOW_TRACKING_URI", None, "an MLflow tracking server every process uses (http://host:port of "
             "`rl-lifecycle mlflow server`; artifacts through it); unset: the `<db>_mlflow` database directly"),
)
_BY_NAME = {v.name: v for v in VARIABLES}

# The rollout of the seed plan, stage by stage; the switches of a stage are the Variables with that `stage`.
ROLLOUT_STAGES = {
    1: "feature snapshot storage",
    2: "TA feature generation, paper mode only",
    3: "walk-forward gates",
    4: "promotions for online learning",
    5: "auto roll-forward after 7-day stability (and auto rollback on a paper breach)",
}

# First `window` partition when RL_WINDOW_START is unset: early enough for the history people import
# (daily equities and FX back to the 2000s, crypto since 2017) while market x window stays small:
# monthly from 2000 is about 320 windows per market (100 markets: ~32,000 partitions per asset, well
# under Dagster's 100,000). Shorter windows start later for the same reason (weekly ~860, daily ~2,500).
EXECUTORS = ("multiprocess", "celery")

DEFAULT_WINDOW_START = {"monthly": "2000-01-01", "weekly": "2010-01-04", "daily": "2020-01-01"}


def variable(name: str) -> Variable:
    return _BY_NAME[name]


def _text(name: str) -> str | None:
    return _BY_NAME[name].value()


def parse_flag(text: str) -> bool | None:
    """`true`/`1`/`yes`/`on` -> True, `false`/`0`/`no`/`off` -> False (any case); anything else None."""
    value = text.strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def _flag(name: str) -> bool:
    value = parse_flag(_text(name))
    if value is None:
        raise UserInputError(f"{name}={os.environ.get(name)!r} is not a boolean (use true/false)")
    return value


def _number(name: str) -> float:
    value = _text(name)
    try:
        return float(value)
    except ValueError:
        raise UserInputError(f"{name}={value!r} is not a number") from None


def _days(name: str) -> float:
    """A number of days >= 0 (fractions allowed: 0.5 is twelve hours)."""
    value = _number(name)
    if not value >= 0 or value == float("inf"):
        raise UserInputError(f"{name}={_text(name)!r} is not a number of days >= 0")
    return value


def _share(name: str) -> float:
    """A share in (0, 1]."""
    value = _number(name)
    if not 0 < value <= 1:
        raise UserInputError(f"{name}={_text(name)!r} is not a share in (0, 1]")
    return value


def _choice(name: str, choices: tuple[str, ...]) -> str:
    value = _text(name).lower()
    if value not in choices:
        raise UserInputError(f"{name}={_text(name)!r} is not one of {', '.join(choices)}")
    return value


def _port(name: str) -> int:
    value = _bound(name)
    if value > 65535:
        raise UserInputError(f"{name}={value} is not a TCP port (1..65535)")
    return value


def _bound(name: str, *, zero: bool = False) -> int:
    """A whole number >= 1 (>= 0 with `zero`): the candle intake limits and the inbox settling time."""
    value = _text(name)
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        number = None
    if number is None or number < (0 if zero else 1):
        raise UserInputError(f"{name}={value!r} is not a whole number >= {0 if zero else 1}")
    return number


def _date(name: str) -> str | None:
    """A YYYY-MM-DD date (Dagster's partition start format), or None when unset."""
    value = _text(name)
    if value is None:
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("expected YYYY-MM-DD")
        date.fromisoformat(value)
    except ValueError as exc:
        raise UserInputError(f"{name}={value!r} is not a date such as 2024-01-01 ({exc})") from None
    return value


def without_password(url: str) -> str:
    """`url` with its password, if any, replaced by `***`: for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{netloc[2]}", parts.path, parts.query, parts.fragment))


_POSTGRES_SCHEMES = ("postgresql", "postgres")


def _database_url(name: str) -> str | None:
    """A PostgreSQL URL (`postgresql://`, `postgres://`, `postgresql+DRIVER://`), or None when unset."""
    value = _text(name)
    if value is None:
        return None
    problem = None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in 0..65535
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme.split("+", 1)[0].lower() not in _POSTGRES_SCHEMES:
            problem = f"scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not PostgreSQL's"
    if problem:
        raise UserInputError(f"{name}={without_password(value)!r} is not a PostgreSQL URL: {problem}; expected "
                             "postgresql://USER:PASSWORD@HOST:5432/DATABASE (or postgres://, postgresql+psycopg2://)")
    return value


_writable_dirs: set[Path] = set()


def _state_dir(name: str) -> Path:
    """A directory this process can create files in (or create, under a writable parent)."""
    value = _text(name)
    path = Path(value).expanduser().resolve()
    if path in _writable_dirs:
        return path
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"{name}={value!r} cannot be the state dir: {existing} is not a directory")
    try:  # a real write, not os.access: root passes access() checks on read-only and virtual filesystems
        os.rmdir(tempfile.mkdtemp(prefix=".rl_write_check_", dir=existing))
    except OSError as exc:
        raise UserInputError(f"{name}={value!r} cannot be the state dir: files cannot be created in {existing} "
                             f"({exc.strerror or exc})") from None
    _writable_dirs.add(path)
    return path


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
    auto_rollback: bool
    stability_days: float
    drift_ood_share: float
    drift_bars: int
    paper_decisions_enabled: bool
    decision_config: str | None
    alert_webhook_url: str | None
    alert_webhook_timeout_seconds: float
    dagster_ui_url: str
    ingest_max_file_bytes: int
    ingest_max_decompressed_bytes: int
    ingest_max_columns: int
    ingest_max_line_bytes: int
    ingest_max_rows: int
    inbox_settle_seconds: int
    executor: str
    broker_url: str | None
    broker_port: int
    worker_name: str | None
    mlflow_tracking_uri: str | None

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

    @property
    def broker_dir(self) -> Path:
        """The embedded Redis broker's data, log and pid file."""
        return self.home / "broker"


def default_window_start(cadence: str) -> str:
    return DEFAULT_WINDOW_START.get(cadence, DEFAULT_WINDOW_START["monthly"])


def is_set(name: str) -> bool:
    """Whether the environment gives the variable a value (its default is not in force)."""
    if name not in {v.name for v in VARIABLES}:
        raise KeyError(f"{name} is not a setting")
    return bool(os.environ.get(name))


def load_settings() -> Settings:
    cadence = _text("RL_WINDOW_CADENCE")
    return Settings(
        home=_state_dir("RL_HOME"),
        database_url=_database_url("RL_DATABASE_URL"),
        strict_backtest=_flag("RL_STRICT_BACKTEST"),
        online_learning_enabled=_flag("RL_ONLINE_LEARNING_ENABLED"),
        auto_promotion=_flag("RL_AUTO_PROMOTION"),
        auto_rollback=_flag("RL_AUTO_ROLLBACK"),
        stability_days=_days("RL_STABILITY_DAYS"),
        drift_ood_share=_share("RL_DRIFT_OOD_SHARE"),
        drift_bars=_bound("RL_DRIFT_BARS"),
        paper_decisions_enabled=_flag("RL_PAPER_DECISIONS_ENABLED"),
        decision_config=_text("RL_DECISION_CONFIG"),
        alert_webhook_url=_text("RL_ALERT_WEBHOOK_URL"),
        alert_webhook_timeout_seconds=_number("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS"),
        dagster_ui_url=_text("RL_DAGSTER_UI_URL"),
        ingest_max_file_bytes=_bound("RL_INGEST_MAX_FILE_BYTES"),
        ingest_max_decompressed_bytes=_bound("RL_INGEST_MAX_DECOMPRESSED_BYTES"),
        ingest_max_columns=_bound("RL_INGEST_MAX_COLUMNS"),
        ingest_max_line_bytes=_bound("RL_INGEST_MAX_LINE_BYTES"),
        ingest_max_rows=_bound("RL_INGEST_MAX_ROWS"),
        inbox_settle_seconds=_bound("RL_INBOX_SETTLE_SECONDS", zero=True),
        executor=_choice("RL_EXECUTOR", EXECUTORS),
        broker_url=_text("RL_BROKER_URL"),
        broker_port=_port("RL_BROKER_PORT"),
        worker_name=_text("RL_WORKER_NAME"),
        mlflow_tracking_uri=_text("RL_MLFLOW_TRACKING_URI"),
        feature_set=_text("RL_FEATURE_SET"),
        window_cadence=cadence,
        mlflow_artifacts=_text("RL_MLFLOW_ARTIFACTS"),
        mlflow_ui_url=_text("RL_MLFLOW_UI_URL"),
        window_start=_date("RL_WINDOW_START") or default_window_start(cadence),
    )


def rollout_switches() -> list[Variable]:
    """The variables that switch a rollout stage on, in the order the plan stages them."""
    return sorted((v for v in VARIABLES if v.stage is not None), key=lambda v: v.stage)
