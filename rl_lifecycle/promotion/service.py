"""Promotion use cases: decide, manual promotion, rollback, alias reconciliation.

Order of writes: the audit row first (the source of truth), then the MLflow aliases, which are
always derived from the audit. A crash in between leaves aliases behind the audit; the next
decision, promotion or rollback (or `reconcile_aliases`) heals them. Each use case holds the
market's advisory lock, so two of them on one market never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.models.tracking import CHAMPION, ModelRegistry, ModelVersionInfo, registered_model_name
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord, market_decision_lock
from rl_lifecycle.promotion.gates import PENDING_MANUAL, PROMOTED, REJECTED, Decision, ReportSummary, evaluate
from rl_lifecycle.promotion.policy import GatePolicy
from rl_lifecycle.windows import Window

PREVIOUS_CHAMPION = "previous_champion"
_ACTION_OF_OUTCOME = {PROMOTED: audit.PROMOTE, REJECTED: audit.REJECT, PENDING_MANUAL: audit.PENDING}


class StaleChampionError(UserInputError):
    """The champion changed since the caller evaluated against it: evaluate against the new one."""


@dataclass(frozen=True)
class PromotionResult:
    record: AuditRecord  # the audit row written
    aliases: dict[str, int | None]  # champion / previous_champion after reconciliation
    decision: Decision | None = None  # set by `decide`
    alias_changes: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)

    @property
    def champion(self) -> int | None:
        return self.aliases.get(CHAMPION)


def _market(market: Market | str) -> Market:
    return market if isinstance(market, Market) else Market.parse(market)


def _summary(report, trials=None, conn: psycopg.Connection | None = None) -> ReportSummary:
    """Stored reports come with their folds' per-bar returns, read from the equity curves beside them, and
    (given `conn`) the market's trials as they are now: the DSR is deflated and the PBO computed at
    decision time."""
    from rl_lifecycle.evaluation.curves import fold_returns

    if isinstance(report, ReportSummary):
        return report
    matrix = None
    if conn is not None:
        from rl_lifecycle.evaluation.trials import record_backtests, stored_trial_matrix, tested_spans

        matrix = stored_trial_matrix(conn, Market.parse(report.market),
                                     tested_spans(record_backtests(report.folds))).returns
    return ReportSummary.from_stored(report, fold_returns(report), trials, matrix)


def _reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        raise UserInputError("reason is empty: say why (it is kept in the promotion audit)")
    return reason.strip()


def _lineage(info: ModelVersionInfo | None) -> dict:
    """The resulting champion's feature set and fingerprint: the market's active feature set follows it."""
    if info is None:
        return {"feature_set": None, "fingerprint": None}
    return {"feature_set": info.tags.get("feature_set"), "fingerprint": info.tags.get("fingerprint")}


def _current_aliases(registry: ModelRegistry, market: Market) -> dict[str, int] | None:
    from mlflow.exceptions import MlflowException

    try:
        model = registry.client.get_registered_model(registered_model_name(market))
    except MlflowException:
        return None  # nothing registered for this market
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def reconcile_aliases(registry: ModelRegistry, conn: psycopg.Connection, market: Market | str) -> dict:
    """Point MLflow's `champion` and `previous_champion` where the audit says; returns what changed.

    The audit wins over MLflow: an alias the audit does not back is removed.
    """
    market = _market(market)
    chain = audit.champion_chain(conn, market.key)
    wanted = {CHAMPION: chain[-1] if chain else None, PREVIOUS_CHAMPION: chain[-2] if len(chain) > 1 else None}
    present = _current_aliases(registry, market)
    if present is None:
        if any(v is not None for v in wanted.values()):
            raise UserInputError(
                f"{market.key}: the promotion audit names champion v{wanted[CHAMPION]}, but MLflow has no "
                f"registered model {registered_model_name(market)}"
            )
        return {}
    name = registered_model_name(market)
    changes = {}
    for alias, version in wanted.items():
        before = present.get(alias)
        if before == version:
            continue
        if version is None:
            registry.client.delete_registered_model_alias(name, alias)
        else:
            registry.client.set_registered_model_alias(name, alias, str(version))
        changes[alias] = (before, version)
    return changes


def _result(registry, conn, market: Market, record: AuditRecord, decision: Decision | None = None) -> PromotionResult:
    changes = reconcile_aliases(registry, conn, market)
    chain = audit.champion_chain(conn, market.key)
    aliases = {CHAMPION: chain[-1] if chain else None, PREVIOUS_CHAMPION: chain[-2] if len(chain) > 1 else None}
    return PromotionResult(record, aliases, decision, changes)


def decide(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market | str,
    challenger_version: int,
    challenger_report,
    champion_report,
    policy: GatePolicy,
    auto_promotion: bool,
    actor: str,
    *,
    evaluated_champion_version: int | None = None,
) -> PromotionResult:
    """Run the gates on the challenger, record the decision, and move the aliases when it is promoted.

    Reports are `ReportSummary` or stored `EvaluationReport`s; the champion's must cover the same folds.
    `evaluated_champion_version`: the champion `champion_report` belongs to; when the audit's champion
    has changed since (another decision won the race), StaleChampionError is raised and nothing is written.
    """
    from rl_lifecycle.evaluation.store import market_trials

    market = _market(market)
    challenger = _summary(challenger_report, market_trials(conn, market), conn)
    champion_summary = None if champion_report is None else _summary(champion_report)
    with market_decision_lock(conn, market.key):
        champion = audit.current_champion(conn, market.key)
        if evaluated_champion_version is not None and evaluated_champion_version != champion:
            raise StaleChampionError(
                f"{market.key}: the report was compared with champion v{evaluated_champion_version}, but the "
                f"champion is now {'v' + str(champion) if champion else 'none'}: evaluate against it again"
            )
        if champion is not None and champion_summary is None:
            raise UserInputError(
                f"{market.key}: champion v{champion} exists; give its report on the same folds for the paired gates"
            )
        if champion is None and champion_summary is not None:
            raise StaleChampionError(
                f"{market.key}: a champion report ({champion_summary.report_id}) was given, but the market "
                "has no champion: decide without one (bootstrap)"
            )
        if challenger_version == champion:
            raise UserInputError(f"{market.key}: version {challenger_version} is already the champion")
        info = registry.version(market, int(challenger_version))
        trained_on = info.tags.get("dataset_hash")
        if challenger.dataset_hash and trained_on and challenger.dataset_hash != trained_on:
            raise UserInputError(
                f"{market.key}: version {challenger_version} was trained on dataset {trained_on[:12]}, but the "
                f"challenger report {challenger.report_id} evaluated dataset {challenger.dataset_hash[:12]}"
            )
        decision = evaluate(challenger, champion_summary, policy, auto_promotion)
        promoted = decision.outcome == PROMOTED
        resulting = int(challenger_version) if promoted else champion
        resulting_info = info if promoted else (None if champion is None else registry.version(market, champion))
        record = audit.append(conn, AuditRecord(
            market=market.key, action=_ACTION_OF_OUTCOME[decision.outcome], actor=actor,
            reason_codes=decision.reason_codes, gates=decision.gates_json(),
            challenger_version=int(challenger_version), champion_version=champion,
            resulting_champion_version=resulting, dataset_hash=challenger.dataset_hash or trained_on,
            evaluation_report_id=challenger.report_id, **_lineage(resulting_info),
        ))
        return _result(registry, conn, market, record, decision)


def manual_promote(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market | str,
    version: int,
    reason: str,
    actor: str,
    override: bool = False,
) -> PromotionResult:
    """Make `version` champion by hand: refused when its recorded gates failed (or never ran) unless `override`."""
    market = _market(market)
    note = _reason(reason)
    with market_decision_lock(conn, market.key):
        champion = audit.current_champion(conn, market.key)
        if int(version) == champion:
            raise UserInputError(f"{market.key}: version {version} is already the champion")
        info = registry.version(market, int(version))  # refuses a version MLflow does not know
        decided = audit.last_gate_decision(conn, market.key, int(version))
        if not override:
            if decided is None:
                raise UserInputError(
                    f"{market.key}: version {version} has no recorded gate decision; run the gates first "
                    "(materialize promotion_decision) or pass --override (audited)"
                )
            if decided.action == audit.REJECT or decided.gates_failed:
                raise UserInputError(
                    f"{market.key}: version {version} failed its gates ({', '.join(decided.reason_codes)}); "
                    "pass --override to promote it anyway (audited)"
                )
        record = audit.append(conn, AuditRecord(
            market=market.key, action=audit.MANUAL_PROMOTE, actor=actor,
            reason_codes=decided.reason_codes if decided else (),
            gates=decided.gates if decided else (),
            challenger_version=int(version), champion_version=champion, resulting_champion_version=int(version),
            dataset_hash=(decided.dataset_hash if decided else None) or info.tags.get("dataset_hash"),
            evaluation_report_id=decided.evaluation_report_id if decided else None,
            override=bool(override), note=note, **_lineage(info),
        ))
        return _result(registry, conn, market, record)


def rollback(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market | str,
    reason: str,
    actor: str,
    to_version: int | None = None,
) -> PromotionResult:
    """Restore the previous champion (or `to_version`), whatever feature set it was trained on."""
    market = _market(market)
    note = _reason(reason)
    with market_decision_lock(conn, market.key):
        chain = audit.champion_chain(conn, market.key)
        if not chain:
            raise UserInputError(f"{market.key}: there is no champion to roll back")
        champion = chain[-1]
        if to_version is None:
            if len(chain) < 2:
                raise UserInputError(
                    f"{market.key}: champion v{champion} has no previous champion; name a version to roll back to"
                )
            target = chain[-2]
        else:
            target = int(to_version)
        if target == champion:
            raise UserInputError(f"{market.key}: version {target} is already the champion")
        info = registry.version(market, target)
        record = audit.append(conn, AuditRecord(
            market=market.key, action=audit.ROLLBACK, actor=actor, challenger_version=target,
            champion_version=champion, resulting_champion_version=target,
            dataset_hash=info.tags.get("dataset_hash"), note=note, **_lineage(info),
        ))
        return _result(registry, conn, market, record)


@dataclass(frozen=True)
class PartitionReports:
    """What a partition's decision compares: the challenger trained there and the champion, each
    evaluated by `fold_report` on the partition's dataset (same folds)."""

    challenger_version: int
    challenger_report: object
    champion_version: int | None
    champion_report: object | None


def contenders(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window,
               ) -> dict[str, ModelVersionInfo]:
    """Who a partition's walk-forward evaluates and its decision compares: the challenger trained there,
    and the champion (the audit decides who that is) when it is another version."""
    from rl_lifecycle.models.service import partition_version

    challenger = partition_version(registry, market, window)
    if challenger is None:
        raise UserInputError(f"no challenger trained for {partition_key(market, window)}: materialize challenger_model first")
    found = {"challenger": challenger}
    champion = audit.current_champion(conn, market.key)
    if champion is not None and champion != challenger.version:
        found["champion"] = registry.version(market, champion)
    return found


def partition_reports(conn: psycopg.Connection, registry: ModelRegistry, market: Market, window: Window,
                      ) -> PartitionReports:
    """The stored reports a decision for `market|window` needs; refuses with what to materialize first."""
    from rl_lifecycle.evaluation.service import partition_report
    from rl_lifecycle.models.service import registered_spec, training_data

    key = partition_key(market, window)
    versions = contenders(conn, registry, market, window)
    challenger, champion = versions["challenger"], versions.get("champion")
    dataset_hash = training_data(conn, market, window).dataset.dataset_hash
    report = partition_report(conn, market, registered_spec(registry, challenger).spec_hash, dataset_hash)
    if report is None:
        raise UserInputError(f"no evaluation of v{challenger.version} on {key}: materialize fold_report first")
    champion_report = None
    if champion is not None:
        champion_report = partition_report(conn, market, registered_spec(registry, champion).spec_hash, dataset_hash)
        if champion_report is None:
            raise UserInputError(
                f"champion v{champion.version} of {market.key} has no evaluation on {key}'s folds: materialize fold_report again"
            )
    # the champion's version is recorded even when it is the challenger itself (re-deciding a champion)
    return PartitionReports(challenger.version, report, audit.current_champion(conn, market.key), champion_report)
