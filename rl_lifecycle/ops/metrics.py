"""Prometheus metrics read from the database at scrape time, and the same figures as JSON log lines.

(`rl-lifecycle status` is `rl_lifecycle.ops.status`; JSON log lines are `rl_lifecycle.ops.logs`.)

One metrics helper: `collect_families(conn)` computes every figure once, as `prometheus_client` metric
families (all named `rl_…`); the HTTP endpoint (`LifecycleCollector`, `serve_metrics`) and the JSON log
lines (`log_metrics`) both print those families, so the two never disagree.

Figures (labels in braces):

- `rl_candle_freshness_seconds{market}`: seconds since the newest stored candle closed.
- `rl_feature_freshness_seconds{market,feature_set}`: seconds since the newest snapshot's candle closed.
- `rl_feature_missing_ratio{market,feature_set,feature}`: share of the newest `MISSING_SAMPLE_ROWS`
  snapshots where the feature is flagged missing (warm-up rows included: they are flagged, not filled).
- `rl_decisions_total{market,action}`, `rl_decision_holds_total{market,reason}`,
  `rl_decision_ood_ratio{market}` (share of the last `OOD_WINDOW` of decisions held for `OOD`),
  `rl_decision_latency_seconds` (histogram): from `rl_decisions` when that table exists, zero otherwise.
- `rl_promotion_actions_total{market,action}`, `rl_promotion_reasons_total{market,action,reason}`
  (promotions, rejections, pending decisions by reason code): from `promotion_audit`.
- `rl_evaluation_folds{market,status}`, `rl_evaluation_fold_failures{market}`: the stored walk-forward
  reports' folds (a re-run rewrites its report, so these are gauges).
- `rl_champion_version{market}`: the champion's model version (the promotion audit decides), 0 when the
  market has none; `rl_challenger_version{market}`: the version holding the MLflow alias `challenger`
  (a version whose blocking checks passed), 0 when none (section `challengers`, read from MLflow: down
  when MLflow cannot be read or no registry is given).
- `rl_paper_total_return{market,champion_version}`, `rl_paper_max_drawdown{...}`, `rl_paper_trades{...}`,
  `rl_paper_bars{...}`, `rl_paper_drawdown_limit{...}` (the walk-forward band's limit for the segment's
  length; absent without a band), `rl_paper_breached{...}` (1 when a PAPER_DRAWDOWN_BEYOND_BACKTEST breach
  was found in the segment): the paper segment of each market's champion in force, as the last
  `paper_performance` watch stored it (`paper_segments`, rl_lifecycle.ops.paper).
- `rl_failed_checks_total{asset,check}`, `rl_failed_runs_total{job}`, `rl_alerts_open{kind}`,
  `rl_alerts_undelivered` (promotion events apart: `rl_promotion_events_undelivered`): from `alerts`.
- `rl_metrics_section_up{section}`: 1 when that section's query worked on this scrape, 0 otherwise
  (a broken section never breaks the endpoint); `rl_metrics_database_up`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from rl_lifecycle.candles.store import newest_candle_ts
from rl_lifecycle.features.store import feature_sets_with_snapshots, newest_snapshot_ts, recent_missing_ratios
from rl_lifecycle.markets.table import list_markets
from rl_lifecycle.ops.logs import log_event
from rl_lifecycle.promotion.audit import current_champion
from rl_lifecycle.windows import to_us

MISSING_SAMPLE_ROWS = 1000
OOD_WINDOW = timedelta(hours=24)
DECISION_ACTIONS = ("flat", "long", "short", "hold")
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

logger = logging.getLogger("rl_lifecycle.metrics")


# -- the figures ------------------------------------------------------------------------------------
def _markets(conn: psycopg.Connection):
    return [r.market for r in list_markets(conn)]


def age_seconds(newest_open_us: int | None, interval_us: int, now: datetime) -> float | None:
    """Seconds since the bar opened at `newest_open_us` closed (None when there is none)."""
    if newest_open_us is None:
        return None
    return (to_us(now) - (newest_open_us + interval_us)) / 1e6


def _freshness(conn: psycopg.Connection, now: datetime) -> list[Metric]:
    candles = GaugeMetricFamily("rl_candle_freshness_seconds",
                                "Seconds since the newest stored candle of the market closed.", labels=["market"])
    features = GaugeMetricFamily("rl_feature_freshness_seconds",
                                 "Seconds since the candle of the newest feature snapshot closed.",
                                 labels=["market", "feature_set"])
    missing = GaugeMetricFamily("rl_feature_missing_ratio",
                                f"Share of the newest {MISSING_SAMPLE_ROWS} snapshots where the feature is missing.",
                                labels=["market", "feature_set", "feature"])
    for market in _markets(conn):
        age = age_seconds(newest_candle_ts(conn, market), market.interval_us, now)
        if age is not None:
            candles.add_metric([market.key], age)
        for fs_id, name, names in feature_sets_with_snapshots(conn, market):
            age = age_seconds(newest_snapshot_ts(conn, market, fs_id), market.interval_us, now)
            if age is None:
                continue
            features.add_metric([market.key, name], age)
            for feature, ratio in recent_missing_ratios(conn, market, fs_id, names, MISSING_SAMPLE_ROWS).items():
                missing.add_metric([market.key, name, feature], ratio)
    return [candles, features, missing]


def _decisions(conn: psycopg.Connection, now: datetime) -> list[Metric]:
    decisions = CounterMetricFamily("rl_decisions", "Paper decisions recorded in rl_decisions.",
                                    labels=["market", "action"])
    holds = CounterMetricFamily("rl_decision_holds", "Forced holds by reason code (a decision can list several).",
                                labels=["market", "reason"])
    ood = GaugeMetricFamily("rl_decision_ood_ratio",
                            f"Share of the decisions of the last {OOD_WINDOW} held for OOD.", labels=["market"])
    buckets_s = [b / 1000.0 for b in LATENCY_BUCKETS_MS]
    latency = HistogramMetricFamily("rl_decision_latency_seconds", "Decision latency (read, features, policy).",
                                    labels=["market"])
    markets = [m.key for m in _markets(conn)]
    counts: dict[tuple[str, str], float] = {(m, a): 0.0 for m in markets for a in DECISION_ACTIONS}
    ratios: dict[str, float] = {m: 0.0 for m in markets}
    histograms: dict[str, tuple[list[float], float, float]] = {}
    for market, action, n in conn.execute("SELECT market, action, count(*) FROM rl_decisions GROUP BY 1, 2"):
        counts[(market, action)] = float(n)
    hold_counts = [(m, r, float(n)) for m, r, n in conn.execute(
        "SELECT market, reason, count(*) FROM rl_decisions, unnest(reason_codes) AS reason "
        "WHERE action = 'hold' GROUP BY 1, 2 ORDER BY 1, 2")]
    for market, total, held in conn.execute(
        "SELECT market, count(*), count(*) FILTER (WHERE 'OOD' = ANY(reason_codes)) FROM rl_decisions "
        "WHERE created_at > %s GROUP BY 1", (now - OOD_WINDOW,),
    ):
        ratios[market] = float(held) / float(total) if total else 0.0
    bucket_sql = ", ".join(f"count(*) FILTER (WHERE latency_ms <= {float(b)})" for b in LATENCY_BUCKETS_MS)
    for market, *values in conn.execute(
        f"SELECT market, {bucket_sql}, count(latency_ms), coalesce(sum(latency_ms), 0) FROM rl_decisions GROUP BY 1"
    ):
        *cumulative, total, total_ms = values
        histograms[market] = ([float(c) for c in cumulative], float(total), float(total_ms) / 1000.0)
    for (market, action), n in sorted(counts.items()):
        decisions.add_metric([market, action], n)
    for market, reason, n in hold_counts:
        holds.add_metric([market, reason], n)
    for market, ratio in sorted(ratios.items()):
        ood.add_metric([market], ratio)
    for market in sorted(set(markets) | set(histograms)):
        cumulative, total, seconds = histograms.get(market, ([0.0] * len(buckets_s), 0.0, 0.0))
        latency.add_metric([market], [(repr(b), c) for b, c in zip(buckets_s, cumulative, strict=True)]
                           + [("+Inf", total)], seconds)
    return [decisions, holds, ood, latency]


def _promotions(conn: psycopg.Connection) -> list[Metric]:
    actions = CounterMetricFamily("rl_promotion_actions", "promotion_audit records by action.",
                                  labels=["market", "action"])
    reasons = CounterMetricFamily("rl_promotion_reasons",
                                  "promotion_audit reason codes by action (e.g. the failed gates of a reject).",
                                  labels=["market", "action", "reason"])
    for market, action, n in conn.execute("SELECT market, action, count(*) FROM promotion_audit GROUP BY 1, 2 ORDER BY 1, 2"):
        actions.add_metric([market, action], float(n))
    for market, action, reason, n in conn.execute(
        "SELECT market, action, reason, count(*) FROM promotion_audit, unnest(reason_codes) AS reason "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ):
        reasons.add_metric([market, action, reason], float(n))
    return [actions, reasons]


def _folds(conn: psycopg.Connection) -> list[Metric]:
    folds = GaugeMetricFamily("rl_evaluation_folds", "Folds of the stored walk-forward reports by status.",
                              labels=["market", "status"])
    failures = GaugeMetricFamily("rl_evaluation_fold_failures", "Failed folds of the stored walk-forward reports.",
                                 labels=["market"])
    per_market: dict[str, float] = {}
    for market, status, n in conn.execute(
        "SELECT r.pair || '-' || r.interval, f.status, count(*) FROM evaluation_folds f "
        "JOIN evaluation_reports r ON r.id = f.report_id GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        folds.add_metric([market, status], float(n))
        per_market.setdefault(market, 0.0)
        if status == "failed":
            per_market[market] += float(n)
    for market, n in sorted(per_market.items()):
        failures.add_metric([market], n)
    return [folds, failures]


def _champions(conn: psycopg.Connection) -> list[Metric]:
    champion = GaugeMetricFamily("rl_champion_version",
                                 "Model version of the market's champion (promotion audit); 0: no champion.",
                                 labels=["market"])
    for market in sorted(m.key for m in _markets(conn)):
        champion.add_metric([market], float(current_champion(conn, market) or 0))
    return [champion]


def _challengers(conn: psycopg.Connection, registry) -> list[Metric]:
    """From the MLflow registry (`rl_lifecycle.models.tracking.ModelRegistry`): the `challenger` alias."""
    challenger = GaugeMetricFamily("rl_challenger_version",
                                   "Model version holding the MLflow alias `challenger`; 0: none.", labels=["market"])
    for market in sorted(_markets(conn), key=lambda m: m.key):
        challenger.add_metric([market.key], float((registry.aliases(market) or {}).get("challenger") or 0))
    return [challenger]


def _alerts(conn: psycopg.Connection) -> list[Metric]:
    checks = CounterMetricFamily("rl_failed_checks", "Failed asset check evaluations (alerts).", labels=["asset", "check"])
    runs = CounterMetricFamily("rl_failed_runs", "Failed runs (alerts).", labels=["job"])
    open_ = GaugeMetricFamily("rl_alerts_open", "Alerts not resolved by a later passing check or run.", labels=["kind"])
    undelivered = GaugeMetricFamily("rl_alerts_undelivered", "Alerts the webhook has not accepted (yet).")
    events = GaugeMetricFamily("rl_promotion_events_undelivered",
                               "Promotion events (audit rows) the webhook has not accepted (yet).")
    open_counts = {"check_failed": 0.0, "run_failed": 0.0}
    for asset, check, n in conn.execute(
        "SELECT coalesce(asset, ''), coalesce(check_name, ''), count(*) FROM alerts "
        "WHERE kind = 'check_failed' GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        checks.add_metric([asset, check], float(n))
    for job, n in conn.execute(
        "SELECT coalesce(job_name, ''), count(*) FROM alerts WHERE kind = 'run_failed' GROUP BY 1 ORDER BY 1"
    ):
        runs.add_metric([job], float(n))
    for kind, n in conn.execute("SELECT kind, count(*) FROM alerts WHERE resolved_at IS NULL GROUP BY 1"):
        open_counts[kind] = float(n)
    pending, pending_events = (float(n) for n in conn.execute(
        "SELECT count(*) FILTER (WHERE kind <> 'promotion_event'), count(*) FILTER (WHERE kind = 'promotion_event') "
        "FROM alerts WHERE delivered_at IS NULL").fetchone())
    for kind, n in sorted(open_counts.items()):
        open_.add_metric([kind], n)
    undelivered.add_metric([], pending)
    events.add_metric([], pending_events)
    return [checks, runs, open_, undelivered, events]


def _paper(conn: psycopg.Connection) -> list[Metric]:
    labels = ["market", "champion_version"]
    families = {
        "total_return": GaugeMetricFamily("rl_paper_total_return", "Paper return of the champion's segment.", labels=labels),
        "max_drawdown": GaugeMetricFamily("rl_paper_max_drawdown", "Paper max drawdown of the champion's segment.",
                                          labels=labels),
        "trades": GaugeMetricFamily("rl_paper_trades", "Paper round trips of the champion's segment.", labels=labels),
        "bars": GaugeMetricFamily("rl_paper_bars", "Bars of the champion's paper segment.", labels=labels),
        "drawdown_limit": GaugeMetricFamily("rl_paper_drawdown_limit",
                                            "The walk-forward band's drawdown limit for the segment's length.",
                                            labels=labels),
        "breached": GaugeMetricFamily("rl_paper_breached", "1 when the champion's paper segment breached its band.",
                                      labels=labels),
    }
    for market, version, *values in conn.execute(
        "SELECT market, champion_version, total_return, max_drawdown, trades, bars, drawdown_limit, breached "
        "FROM paper_segments WHERE current ORDER BY market"
    ):
        for name, value in zip(families, values, strict=True):
            if value is not None:
                families[name].add_metric([market, str(version)], float(value))
    return list(families.values())


SECTIONS: dict[str, Callable[..., list[Metric]]] = {
    "freshness": lambda conn, now: _freshness(conn, now),
    "decisions": lambda conn, now: _decisions(conn, now),
    "promotions": lambda conn, now: _promotions(conn),
    "folds": lambda conn, now: _folds(conn),
    "champions": lambda conn, now: _champions(conn),
    "alerts": lambda conn, now: _alerts(conn),
    "paper": lambda conn, now: _paper(conn),
}


def collect_families(conn: psycopg.Connection, now: datetime | None = None,
                     registry: Callable[[], object] | None = None) -> list[Metric]:
    """Every figure, as metric families; a section whose query fails is reported down, not raised.
    `registry`: gives the MLflow registry (`open_registry`) the `challengers` section reads; None: that
    section is down."""
    now = now or datetime.now(UTC)
    families: list[Metric] = []
    up = GaugeMetricFamily("rl_metrics_section_up", "1 when the section's figures were read on this scrape.",
                           labels=["section"])

    sections = dict(SECTIONS)
    if registry is not None:
        sections["challengers"] = lambda c, _now: _challengers(c, registry())
    else:
        up.add_metric(["challengers"], 0.0)  # not read: nothing failed, so nothing is logged
    for section, fn in sections.items():
        try:
            if conn.autocommit:
                families += fn(conn, now)
            else:
                with conn.transaction():
                    families += fn(conn, now)
            up.add_metric([section], 1.0)
        except Exception as exc:  # noqa: BLE001 - one broken query must not hide the other figures
            log_event(logger, "metrics_section_failed", logging.WARNING, section=section,
                      error=f"{type(exc).__name__}: {exc}")
            up.add_metric([section], 0.0)
    return [*families, up]


class LifecycleCollector:
    """A custom collector: queries the database on every scrape (nothing is cached between scrapes)."""

    def __init__(self, connect: Callable[[], AbstractContextManager[psycopg.Connection]],
                 registry: Callable[[], object] | None = None):
        self._connect = connect
        self._registry = None if registry is None else cached(registry)

    def describe(self) -> list[Metric]:
        return []  # names are known only at scrape time; do not query the database at registration

    def collect(self) -> Iterator[Metric]:
        db_up = GaugeMetricFamily("rl_metrics_database_up", "1 when the database answered this scrape.")
        try:
            with self._connect() as conn:
                families = collect_families(conn, registry=self._registry)
        except Exception as exc:  # noqa: BLE001
            log_event(logger, "metrics_database_unreachable", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            db_up.add_metric([], 0.0)
            yield db_up
            return
        db_up.add_metric([], 1.0)
        yield from families
        yield db_up


def cached(make: Callable[[], object]) -> Callable[[], object]:
    """`make()` once it first succeeds (a registry is opened on the first scrape that needs it, then kept)."""
    made: list[object] = []

    def get():
        if not made:
            made.append(make())
        return made[0]

    return get


def registry_opener(database_url: str) -> Callable[[], object]:
    """Opens the MLflow registry of the database in use (`rl_lifecycle.models.tracking.open_registry`)."""
    def open_it():
        from rl_lifecycle.models.tracking import open_registry

        return open_registry(database_url)

    return open_it


def url_connector(database_url: str) -> Callable[[], AbstractContextManager[psycopg.Connection]]:
    return lambda: psycopg.connect(database_url, autocommit=True, connect_timeout=5)


def metrics_registry(database_url: str):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LifecycleCollector(url_connector(database_url), registry_opener(database_url)))
    return registry


def serve_metrics(database_url: str, port: int, addr: str = "127.0.0.1"):
    """Start the /metrics endpoint in a daemon thread; returns (server, thread). Port 0 picks a free one
    (`server.server_port`)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr, registry=metrics_registry(database_url))


def family_records(families: list[Metric]) -> list[dict]:
    """Families as plain dicts: {metric, type, samples: [{name, labels, value}]}."""
    return [
        {"metric": f.name, "type": f.type,
         "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value} for s in f.samples]}
        for f in families
    ]


def log_metrics(conn: psycopg.Connection, log: logging.Logger | None = None,
                registry: Callable[[], object] | None = None) -> list[str]:
    """The same figures as the endpoint, one JSON line per metric family (event `metrics`); returns the lines."""
    log = log or logger
    return [log_event(log, "metrics", logging.INFO, **record)
            for record in family_records(collect_families(conn, registry=registry))]


def wait_forever(log_interval: float | None, database_url: str) -> None:
    """Keep the process alive for the endpoint thread; log the figures as JSON lines every `log_interval` s."""
    registry = cached(registry_opener(database_url))
    while True:
        if log_interval:
            try:
                with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
                    log_metrics(conn, registry=registry)
            except Exception as exc:  # noqa: BLE001
                log_event(logger, "metrics_database_unreachable", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            time.sleep(log_interval)
        else:
            time.sleep(3600)
