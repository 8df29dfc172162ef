"""`evaluation_reports` and `evaluation_folds`: one transaction per report, idempotent per evaluation.

An evaluation is identified by its market, model spec hash, dataset_hash and fold config
(`evaluation_key`); writing it again rewrites the same report row (same id) and replaces its folds.
NaN metrics are stored as null (jsonb has no NaN).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.metrics import Trials
from rl_lifecycle.evaluation.report import FoldRecord, json_safe
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import iso, to_us

STATUSES = ("ok", "partial", "failed")


@dataclass(frozen=True)
class EvaluationReport:
    market: str
    spec: dict
    model_spec_hash: str
    dataset_hash: str
    fold_config: FoldConfig
    label_horizon: int
    strict: bool
    status: str
    aggregates: dict
    timings: dict
    folds: list[FoldRecord]
    id: int | None = None
    created_at: str | None = field(default=None, compare=False)
    updated_at: str | None = field(default=None, compare=False)

    @property
    def evaluation_key(self) -> str:
        return evaluation_key(Market.parse(self.market), self.model_spec_hash, self.dataset_hash, self.fold_config)


def evaluation_key(market: Market, model_spec_hash: str, dataset_hash: str, config: FoldConfig) -> str:
    digest = hashlib.sha256()
    for part in (market.key, model_spec_hash, dataset_hash, config.canonical_json()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _span_json(span: tuple[int, int]) -> list[str]:
    return [iso(span[0]), iso(span[1])]


def write_report(conn: psycopg.Connection, report: EvaluationReport) -> int:
    """Insert or rewrite the report and all its folds in one transaction; returns the report id."""
    if report.status not in STATUSES:
        raise ValueError(f"status={report.status!r}: expected one of {STATUSES}")
    market = Market.parse(report.market)
    with conn.transaction():
        (report_id,) = conn.execute(
            """INSERT INTO evaluation_reports AS r (evaluation_key, pair, interval, spec, model_spec_hash,
                   dataset_hash, fold_config, label_horizon, strict, status, aggregates, timings)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (evaluation_key) DO UPDATE SET
                   spec = EXCLUDED.spec, label_horizon = EXCLUDED.label_horizon, strict = EXCLUDED.strict,
                   status = EXCLUDED.status, aggregates = EXCLUDED.aggregates, timings = EXCLUDED.timings,
                   updated_at = now()
               RETURNING id""",
            (report.evaluation_key, market.pair, market.interval, Jsonb(json_safe(report.spec)),
             report.model_spec_hash, report.dataset_hash, Jsonb(json.loads(report.fold_config.canonical_json())),
             report.label_horizon, report.strict, report.status, Jsonb(json_safe(report.aggregates)),
             Jsonb(json_safe(report.timings))),
        ).fetchone()
        conn.execute("DELETE FROM evaluation_folds WHERE report_id = %s", (report_id,))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO evaluation_folds (report_id, fold_index, train_ranges, test_range, train_spans,
                       test_span, status, metrics, baselines, error, equity_curve_uri, split_index, test_group, ran_on)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(report_id, f.index, Jsonb([list(r) for r in f.train_ranges]), Jsonb(list(f.test_range)),
                  Jsonb([_span_json(s) for s in f.train_spans]), Jsonb(_span_json(f.test_span)), f.status,
                  None if f.metrics is None else Jsonb(json_safe(f.metrics)),
                  None if f.baselines is None else Jsonb(json_safe(f.baselines)), f.error, f.equity_curve_uri,
                  f.split, f.test_group, None if f.ran_on is None else Jsonb(f.ran_on))
                 for f in report.folds],
            )
    return int(report_id)


_REPORT_COLUMNS = """id, pair, interval, spec, model_spec_hash, dataset_hash, fold_config, label_horizon, strict,
    status, aggregates, timings, created_at, updated_at"""


def _report_from_row(conn: psycopg.Connection, row) -> EvaluationReport:
    (report_id, pair, interval, spec, spec_hash, dataset_hash, config, horizon, strict, status, aggregates,
     timings, created, updated) = row
    folds = [
        FoldRecord(
            index=index, train_ranges=tuple((int(a), int(b)) for a, b in train), test_range=(int(test[0]), int(test[1])),
            train_spans=tuple((to_us(a), to_us(b)) for a, b in train_spans),
            test_span=(to_us(test_span[0]), to_us(test_span[1])), status=fold_status, metrics=metrics,
            baselines=baselines, error=error, equity_curve_uri=uri, split=split, test_group=group, ran_on=ran_on,
        )
        for (index, train, test, train_spans, test_span, fold_status, metrics, baselines, error, uri, split,
             group, ran_on) in conn.execute(
            """SELECT fold_index, train_ranges, test_range, train_spans, test_span, status, metrics, baselines,
                      error, equity_curve_uri, split_index, test_group, ran_on
               FROM evaluation_folds WHERE report_id = %s ORDER BY fold_index""",
            (report_id,),
        ).fetchall()
    ]
    return EvaluationReport(
        market=Market(pair, interval).key, spec=spec, model_spec_hash=spec_hash, dataset_hash=dataset_hash,
        fold_config=FoldConfig.model_validate(config), label_horizon=horizon, strict=strict, status=status,
        aggregates=aggregates, timings=timings, folds=folds, id=int(report_id),
        created_at=created.isoformat(), updated_at=updated.isoformat(),
    )


def read_report(conn: psycopg.Connection, report_id: int) -> EvaluationReport | None:
    row = conn.execute(f"SELECT {_REPORT_COLUMNS} FROM evaluation_reports WHERE id = %s", (report_id,)).fetchone()
    return None if row is None else _report_from_row(conn, row)


def latest_report(conn: psycopg.Connection, market: Market) -> EvaluationReport | None:
    row = conn.execute(
        f"""SELECT {_REPORT_COLUMNS} FROM evaluation_reports WHERE pair = %s AND interval = %s
            ORDER BY updated_at DESC, id DESC LIMIT 1""",
        (market.pair, market.interval),
    ).fetchone()
    return None if row is None else _report_from_row(conn, row)


def specs_evaluated(conn: psycopg.Connection, market: Market) -> int:
    """How many distinct model specs were ever evaluated on the market. Not the DSR's number of trials:
    seeds, feature sets (datasets) and fold configs of one spec are trials too (`market_trials`)."""
    (count,) = conn.execute(
        "SELECT count(DISTINCT model_spec_hash) FROM evaluation_reports WHERE pair = %s AND interval = %s",
        (market.pair, market.interval),
    ).fetchone()
    return int(count)


def market_trials(conn: psycopg.Connection, market: Market, *, excluding: str | None = None) -> Trials:
    """Every evaluation stored for the market is a trial: each report row (one per evaluation key, so
    each spec, seed, feature set or dataset, and fold config; failed and partial reports included),
    with the per-bar Sharpe of its pooled fold returns (`aggregates.sharpe_per_bar`; none for a report
    without completed folds or stored before reports kept it). `excluding` leaves out one evaluation
    key (the one being assembled, which counts itself).

    The raw number of trials, not an effective number from the correlation of the trials' returns:
    the reports keep summary statistics, not the return series such an estimate needs, and counting
    correlated trials (seeds of one spec) as independent overstates N, so the expected maximum Sharpe
    and the deflation err on the strict side. Re-running one evaluation rewrites its row: the same
    trial, counted once."""
    rows = conn.execute(
        """SELECT aggregates -> 'sharpe_per_bar' FROM evaluation_reports
           WHERE pair = %s AND interval = %s AND evaluation_key IS DISTINCT FROM %s ORDER BY id""",
        (market.pair, market.interval, excluding),
    ).fetchall()
    return Trials.of(len(rows), [sharpe for (sharpe,) in rows])
