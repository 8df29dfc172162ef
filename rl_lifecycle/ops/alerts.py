"""Alerts: one record per failure (a failed asset check evaluation, a failed run, a candle file the inbox
rejected), a JSON log line, a webhook POST.

The functional core; the Dagster sensors in `rl_lifecycle.orchestration.automation.alerts` only read the instance and
call this module.

**At most once per failure.** Every alert has a `dedupe_key` (`check:<run_id>:<asset>:<check>:<partition>`,
`run:<run_id>`, `inbox:<market>/<file>:<size>:<mtime_ns>`) that is UNIQUE in the `alerts` table: recording the same failure again (a sensor
restarted with an old cursor, two sensors seeing one run) inserts nothing and logs nothing. A POST is
made only for a row whose `delivered_at` is NULL, under a row lock (`FOR UPDATE SKIP LOCKED`) that is
held until `delivered_at` is committed, so two sensors never send one alert twice.

**A webhook that is down** is retried on later ticks with exponential backoff (`attempts`,
`next_attempt_at`, `last_error`); a POST has a short timeout and every error is caught, so delivery
never blocks nor crashes a sensor. Alerts older than `max_age` are no longer sent (a webhook
configured a week later does not receive a week of history); they stay in the table.

Configuration (environment): `RL_ALERT_WEBHOOK_URL` (unset: alerts are recorded and logged, not
POSTed), `RL_DAGSTER_UI_URL` (run links),
`RL_ALERT_WEBHOOK_TIMEOUT_SECONDS` (default 5).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from rl_lifecycle.markets.keys import market_of
from rl_lifecycle.ops.events import audit_page, event_of
from rl_lifecycle.ops.logs import log_event
from rl_lifecycle.settings import load_settings, variable

CHECK_FAILED, RUN_FAILED, INBOX_REJECTED = "check_failed", "run_failed", "inbox_rejected"
# a champion's paper drawdown beyond its walk-forward band (rl_lifecycle.ops.paper); a promotion
# audit row, sent as an event (rl_lifecycle.promotion.events: recorded resolved, it is no failure)
PAPER_BREACH, PROMOTION_EVENT = "paper_breach", "promotion_event"
KINDS = (CHECK_FAILED, RUN_FAILED, INBOX_REJECTED, PAPER_BREACH, PROMOTION_EVENT)
INBOX_SENSOR_PATH = "/locations/__repository__@rl_lifecycle/sensors/inbox_sensor"  # the UI page of `inbox_sensor`
DEFAULT_UI_URL = variable("RL_DAGSTER_UI_URL").default
DEFAULT_TIMEOUT_SECONDS = float(variable("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS").default)
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0
MAX_AGE = timedelta(days=1)
MAX_PER_DELIVERY = 20  # alerts POSTed per call: a tick stays short even with a backlog

logger = logging.getLogger("rl_lifecycle.ops.alerts")


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertConfig:
    webhook_url: str | None = None
    ui_url: str = DEFAULT_UI_URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


def load_alert_config() -> AlertConfig:
    """RL_ALERT_WEBHOOK_URL, RL_DAGSTER_UI_URL, RL_ALERT_WEBHOOK_TIMEOUT_SECONDS (read at each call)."""
    settings = load_settings()
    return AlertConfig(
        webhook_url=settings.alert_webhook_url,
        ui_url=settings.dagster_ui_url.rstrip("/"),
        timeout_seconds=max(0.1, min(settings.alert_webhook_timeout_seconds, 30.0)),
    )


def run_url(ui_url: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/runs/{run_id}"


# -- records ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    kind: str
    dedupe_key: str
    summary: str
    run_id: str
    run_url: str
    asset: str | None = None
    partition: str | None = None
    check: str | None = None
    severity: str | None = None
    job_name: str | None = None
    failed_at: datetime | None = field(default=None, compare=False)  # when the failure happened
    id: int | None = field(default=None, compare=False)
    created_at: datetime | None = field(default=None, compare=False)
    delivered_at: datetime | None = field(default=None, compare=False)
    attempts: int = field(default=0, compare=False)
    next_attempt_at: datetime | None = field(default=None, compare=False)
    last_error: str | None = field(default=None, compare=False)
    resolved_at: datetime | None = field(default=None, compare=False)
    details: dict | None = field(default=None, compare=False)  # structured figures the webhook body carries

    @property
    def market(self) -> str | None:
        return market_of(self.partition)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind, "dedupe_key": self.dedupe_key, "asset": self.asset, "partition": self.partition,
            "check": self.check, "severity": self.severity, "job": self.job_name, "summary": self.summary,
            "run_id": self.run_id, "run_url": self.run_url, "id": self.id,
            "failed_at": None if self.failed_at is None else self.failed_at.isoformat(),
            **({"details": self.details} if self.details is not None else {}),
        }


def check_alert(run_id: str, asset: str, check: str, partition: str | None, summary: str, *,
                severity: str | None = None, job_name: str | None = None, ui_url: str = DEFAULT_UI_URL,
                failed_at: datetime | None = None) -> Alert:
    """A failed asset check evaluation."""
    return Alert(
        kind=CHECK_FAILED, dedupe_key=f"check:{run_id}:{asset}:{check}:{partition or '-'}",
        summary=summary or f"check {check} failed", run_id=run_id, run_url=run_url(ui_url, run_id),
        asset=asset, partition=partition, check=check, severity=severity, job_name=job_name, failed_at=failed_at,
    )


def run_alert(run_id: str, job_name: str | None, partition: str | None, summary: str, *,
              assets: Sequence[str] = (), ui_url: str = DEFAULT_UI_URL, failed_at: datetime | None = None) -> Alert:
    """A failed run."""
    return Alert(
        kind=RUN_FAILED, dedupe_key=f"run:{run_id}", summary=summary or "run failed", run_id=run_id,
        run_url=run_url(ui_url, run_id), asset=", ".join(assets) or None, partition=partition, job_name=job_name,
        failed_at=failed_at,
    )


def inbox_alert(market: str, file: str, signature: str, summary: str, *, ui_url: str = DEFAULT_UI_URL) -> Alert:
    """A candle file the inbox rejected (or refused): one alert per dropped file, `signature` telling drops of one
    name apart (size and mtime). `market` is the market directory's name ("" at the top of the inbox); it is
    also the alert's partition (a `market` partition key), so the market's status counts it. No run: `run_id`
    is empty and `run_url` the inbox sensor's page."""
    return Alert(
        kind=INBOX_REJECTED, dedupe_key=f"{inbox_key_prefix(market, file)}{signature}",
        summary=summary or f"inbox file {file} rejected", run_id="",
        run_url=f"{ui_url.rstrip('/')}{INBOX_SENSOR_PATH}", asset="candles", partition=market or None,
    )


def inbox_key_prefix(market: str, file: str) -> str:
    return f"inbox:{market or '-'}/{file}:"


_COLUMNS = ("kind", "dedupe_key", "market", "asset", "partition_key", "check_name", "severity", "job_name",
            "summary", "run_id", "run_url", "failed_at", "details")
_READ = ("id, kind, dedupe_key, asset, partition_key, check_name, severity, job_name, summary, run_id, run_url, "
         "failed_at, created_at, delivered_at, attempts, next_attempt_at, last_error, resolved_at, details")


def _from_row(row) -> Alert:
    (id_, kind, key, asset, partition, check, severity, job, summary, run_id, url,
     failed_at, created, delivered, attempts, next_at, error, resolved, details) = row
    return Alert(kind=kind, dedupe_key=key, summary=summary, run_id=run_id, run_url=url, asset=asset,
                 partition=partition, check=check, severity=severity, job_name=job, failed_at=failed_at,
                 id=int(id_), created_at=created,
                 delivered_at=delivered, attempts=int(attempts), next_attempt_at=next_at, last_error=error,
                 resolved_at=resolved, details=details)


def record_alert(conn: psycopg.Connection, alert: Alert) -> Alert | None:
    """Insert the alert unless its failure was recorded before; returns the new row, or None for a duplicate.

    A new alert is logged once, as a JSON line (event `alert`)."""
    if alert.kind not in KINDS:
        raise ValueError(f"alert kind {alert.kind!r} is invalid; expected one of {KINDS}")
    values = (alert.kind, alert.dedupe_key, alert.market, alert.asset, alert.partition, alert.check,
              alert.severity, alert.job_name, alert.summary[:4000], alert.run_id, alert.run_url, alert.failed_at,
              None if alert.details is None else Jsonb(alert.details))
    row = conn.execute(
        f"INSERT INTO alerts ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
        f"ON CONFLICT (dedupe_key) DO NOTHING RETURNING {_READ}",
        values,
    ).fetchone()
    if row is None:
        return None
    stored = _from_row(row)
    log_event(logger, "alert", logging.ERROR, **stored.as_dict())
    return stored


def get_alert(conn: psycopg.Connection, dedupe_key: str) -> Alert | None:
    row = conn.execute(f"SELECT {_READ} FROM alerts WHERE dedupe_key = %s", (dedupe_key,)).fetchone()
    return None if row is None else _from_row(row)


def list_alerts(conn: psycopg.Connection, *, market: str | None = None, open_only: bool = False,
                limit: int = 50) -> list[Alert]:
    """Alerts, newest first."""
    where, params = [], []
    if market is not None:
        where.append("market = %s")
        params.append(market)
    if open_only:
        where.append("resolved_at IS NULL")
    query = f"SELECT {_READ} FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
    return [_from_row(r) for r in conn.execute(query + " ORDER BY id DESC LIMIT %s", (*params, int(limit))).fetchall()]


def count_open_alerts(conn: psycopg.Connection, market: str) -> int:
    """How many of the market's alerts no later pass or success has resolved."""
    return int(conn.execute("SELECT count(*) FROM alerts WHERE market = %s AND resolved_at IS NULL",
                            (market,)).fetchone()[0])


# A pass resolves only failures that happened before it (unknown times: as before).
_BEFORE_THE_PASS = "AND (failed_at IS NULL OR %(passed_at)s::timestamptz IS NULL OR failed_at < %(passed_at)s)"


def resolve_check_alerts(conn: psycopg.Connection, asset: str, check: str, partition: str | None,
                         by_run_id: str, passed_at: datetime | None = None) -> int:
    """An evaluation of the check passed on this partition at `passed_at`: the open alerts of earlier
    failures are resolved."""
    return conn.execute(
        """UPDATE alerts SET resolved_at = now(), resolved_by_run = %(run)s
           WHERE kind = %(kind)s AND resolved_at IS NULL AND asset = %(asset)s AND check_name = %(check)s
             AND partition_key IS NOT DISTINCT FROM %(partition)s AND run_id <> %(run)s """ + _BEFORE_THE_PASS,
        {"run": by_run_id, "kind": CHECK_FAILED, "asset": asset, "check": check, "partition": partition,
         "passed_at": passed_at},
    ).rowcount


def resolve_run_alerts(conn: psycopg.Connection, job_name: str, partition: str | None, by_run_id: str,
                       passed_at: datetime | None = None) -> int:
    """A run of the same job on the same partition succeeded at `passed_at`: the open alerts of runs that
    failed before it are resolved."""
    return conn.execute(
        """UPDATE alerts SET resolved_at = now(), resolved_by_run = %(run)s
           WHERE kind = %(kind)s AND resolved_at IS NULL AND job_name = %(job)s
             AND partition_key IS NOT DISTINCT FROM %(partition)s AND run_id <> %(run)s """ + _BEFORE_THE_PASS,
        {"run": by_run_id, "kind": RUN_FAILED, "job": job_name, "partition": partition, "passed_at": passed_at},
    ).rowcount


def resolve_inbox_alerts(conn: psycopg.Connection, market: str, file: str) -> int:
    """A file of this name was imported into this market: the open alerts of its earlier rejected drops are
    resolved (the report's next step is to fix the file and drop it again)."""
    prefix = inbox_key_prefix(market, file)
    return conn.execute(
        """UPDATE alerts SET resolved_at = now() WHERE kind = %s AND resolved_at IS NULL
             AND left(dedupe_key, %s) = %s""",
        (INBOX_REJECTED, len(prefix), prefix),
    ).rowcount


# -- webhook ---------------------------------------------------------------------------------------
def slack_body(alert: Alert, ui_url: str = DEFAULT_UI_URL) -> dict:
    """A Slack-compatible incoming-webhook body: `text` (the fallback line) and `blocks`. A promotion event
    also carries the audit row under `event` (`ops.events.event_of`), its gate table as text."""
    event = None
    if alert.kind == PROMOTION_EVENT:
        event = event_of(alert.details)
        alert = replace(alert, run_url=alert.run_url or audit_page(ui_url),
                        details={**(alert.details or {}), "table": event["gate_table"]})
    if alert.kind == CHECK_FAILED:
        title = f"Asset check failed: {alert.check} on {alert.asset}"
    elif alert.kind == INBOX_REJECTED:
        title = f"Inbox file rejected ({alert.partition or 'no market'})"
    elif alert.kind == PAPER_BREACH:
        title = f"{alert.check}: {alert.partition}"
    elif alert.kind == PROMOTION_EVENT:
        title = f"Promotion event: {alert.check} on {alert.partition}"
    else:
        title = f"Run failed: {alert.job_name or 'run'}"
    page = {PAPER_BREACH: "paper_performance", PROMOTION_EVENT: "promotion audit"}.get(alert.kind, "inbox sensor")
    link = f"<{alert.run_url}|run {alert.run_id[:8]}>" if alert.run_id else f"<{alert.run_url}|{page}>"
    text = f"{title} (partition {alert.partition or '-'}): {alert.summary} {link}"
    fields = [
        ("Asset", alert.asset or "-"),
        ("Partition", alert.partition or "-"),
        ("Check", alert.check or "-"),
        ("Severity", alert.severity or "-"),
        ("Job", alert.job_name or "-"),
        ("Run", f"<{alert.run_url}|{alert.run_id}>" if alert.run_id else "-"),
    ]
    summary = alert.summary if len(alert.summary) <= 2900 else alert.summary[:2900] + "…"
    table = (alert.details or {}).get("table")  # e.g. a promotion event's gate table, as fixed-width text
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}:*\n{v}"} for k, v in fields]},
            {"type": "section", "text": {"type": "mrkdwn", "text": summary or "-"}},
            *([{"type": "section", "text": {"type": "mrkdwn", "text": f"```{table[:2900]}```"}}] if table else []),
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open the run in Dagster" if alert.run_id
                                                                          else f"Open the {page} in Dagster"}, "url": alert.run_url},
            ]},
        ],
        # plain fields for webhooks that are not Slack
        "alert": alert.as_dict(),
        **({"event": event} if event is not None else {}),
    }


class WebhookError(Exception):
    pass


def post_webhook(url: str, body: dict, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> int:
    """POST `body` as JSON; returns the HTTP status. Raises WebhookError on a non-2xx answer or any failure."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "rl-lifecycle-alerts"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's URL)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"HTTP {exc.code} {exc.reason}") from exc
    except Exception as exc:  # refused, timed out, DNS, TLS...
        raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise WebhookError(f"HTTP {status}")
    return status


def backoff_seconds(attempts: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> float:
    """Wait after the `attempts`-th failed POST: base, 2*base, 4*base, ... up to cap."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


@dataclass(frozen=True)
class DeliveryReport:
    delivered: tuple[str, ...] = ()  # dedupe keys
    failed: tuple[str, ...] = ()
    skipped_reason: str | None = None


def deliver_pending(conn: psycopg.Connection, config: AlertConfig | None = None, *,
                    keys: Sequence[str] | None = None, limit: int = MAX_PER_DELIVERY,
                    max_age: timedelta = MAX_AGE) -> DeliveryReport:
    """POST undelivered alerts that are due (never the ones whose backoff has not expired), oldest first.

    `keys` restricts to those alerts. Never raises for a webhook problem: a failure is recorded on the
    row (attempts, last_error, next_attempt_at) and retried by a later call. Needs an autocommit
    connection: each alert is claimed, sent and marked in its own transaction."""
    config = config or load_alert_config()
    if not config.webhook_url:
        return DeliveryReport(skipped_reason="RL_ALERT_WEBHOOK_URL is not set")
    delivered: list[str] = []
    failed: list[str] = []
    for _ in range(max(0, limit)):
        with conn.transaction():
            row = conn.execute(
                f"""SELECT {_READ} FROM alerts
                    WHERE delivered_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                      AND created_at > now() - %s {'AND dedupe_key = ANY(%s)' if keys is not None else ''}
                    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED""",
                (max_age, list(keys)) if keys is not None else (max_age,),
            ).fetchone()
            if row is None:
                break
            alert = _from_row(row)
            try:
                post_webhook(config.webhook_url, slack_body(alert, config.ui_url), timeout=config.timeout_seconds)
            except WebhookError as exc:
                wait = backoff_seconds(alert.attempts + 1)
                conn.execute(
                    """UPDATE alerts SET attempts = attempts + 1, last_error = %s,
                              next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s""",
                    (str(exc)[:1000], wait, alert.id),
                )
                failed.append(alert.dedupe_key)
                log_event(logger, "alert_delivery_failed", logging.WARNING, dedupe_key=alert.dedupe_key,
                          attempts=alert.attempts + 1, error=str(exc), retry_in_seconds=wait)
            else:
                conn.execute(
                    "UPDATE alerts SET attempts = attempts + 1, delivered_at = now(), last_error = NULL, "
                    "next_attempt_at = NULL WHERE id = %s",
                    (alert.id,),
                )
                delivered.append(alert.dedupe_key)
                log_event(logger, "alert_delivered", logging.INFO, dedupe_key=alert.dedupe_key,
                          attempts=alert.attempts + 1)
    return DeliveryReport(tuple(delivered), tuple(failed))


def deliver_safely(conn: psycopg.Connection, config: AlertConfig | None = None, **kwargs) -> DeliveryReport:
    """`deliver_pending` that never raises (a database error is logged): for sensors."""
    try:
        return deliver_pending(conn, config, **kwargs)
    except Exception as exc:  # the sensor must keep running; the rows are retried next tick
        log_event(logger, "alert_delivery_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        return DeliveryReport(skipped_reason=f"{type(exc).__name__}: {exc}")
