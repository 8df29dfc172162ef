"""Promotion use cases: decide, manual promotion, rollback, alias reconciliation.

Order of writes: the audit row first (the source of truth), then the MLflow aliases, which are
always derived from the audit. A crash in between leaves aliases behind the audit. Every use case
heals that first: under the market's advisory lock (so two of them on one market never interleave)
it points the aliases where the audit says *before* acting, then acts, then moves them again. So a
re-run of a promotion killed between its audit row and its alias move completes it (the audit
already names the version: nothing new is recorded, `PromotionResult.completed`), and so does a re-run
of such a rollback. `reconcile` does the same on its own, for `rl-lifecycle reconcile` and the
daemon's `alias_reconcile_sensor`; it also points `challenger` where the model checks say
(`rl_lifecycle.models.checks`).

A decision needs the challenger version's blocking checks to have passed (MODEL_CHECKS_NOT_PASSED,
recorded on the version by the checks); a manual promotion refuses a version without them unless
`override`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.models.checks import checks_passed, model_checks, sync_challenger_alias
from rl_lifecycle.models.tracking import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    ModelVersionInfo,
    registered_model_name,
)
from rl_lifecycle.promotion import audit
from rl_lifecycle.promotion.audit import AuditRecord, market_decision_lock, try_market_decision_lock
from rl_lifecycle.promotion.gates import (
    PENDING_MANUAL,
    PROMOTED,
    REJECTED,
    STABILITY_WINDOW_NOT_MET,
    Decision,
    ReportSummary,
    evaluate,
)
from rl_lifecycle.promotion.policy import GatePolicy
from rl_lifecycle.windows import Window

PREVIOUS_CHAMPION = "previous_champion"
_ACTION_OF_OUTCOME = {PROMOTED: audit.PROMOTE, REJECTED: audit.REJECT, PENDING_MANUAL: audit.PENDING}


class StaleChampionError(UserInputError):
    """The champion changed since the caller evaluated against it: evaluate against the new one."""


@dataclass(frozen=True)
class PromotionResult:
    record: AuditRecord | None  # the audit row written; when `completed`, the one that had recorded the action
    aliases: dict[str, int | None]  # champion / previous_champion after reconciliation
    decision: Decision | None = None  # set by `decide` when it ran the gates
    # every alias this call moved, (before, after): the healing before acting included
    alias_changes: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    # nothing new recorded: the audit already had the action asked for (the version is champion), and
    # the aliases were completed to match it (`alias_changes` says whether they had to move)
    completed: bool = False

    @property
    def champion(self) -> int | None:
        return self.aliases.get(CHAMPION)


def _market(market: Market | str) -> Market:
    return market if isinstance(market, Market) else Market.parse(market)


def _summary(conn: psycopg.Connection, report, trials=None) -> ReportSummary:
    """Stored reports come with their folds' per-bar returns, read from the equity curves beside them, and
    (given the market's `trials` as they are now) the trials on the same bars: the DSR is deflated and the
    PBO computed at decision time."""
    from rl_lifecycle.evaluation.curves import fold_returns

    if isinstance(report, ReportSummary):
        return report
    matrix = None
    if trials is not None:
        from rl_lifecycle.evaluation.trials import trials_on_bars_of

        matrix = trials_on_bars_of(conn, Market.parse(report.market), report.folds).returns
    return ReportSummary.from_stored(report, fold_returns(conn, report), trials, matrix)


def _reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        raise UserInputError("reason is empty: say why (it is kept in the promotion audit)")
    return reason.strip()


def _lineage(info: ModelVersionInfo | None) -> dict:
    """The resulting champion's feature set and fingerprint: the market's active feature set follows it."""
    if info is None:
        return {"feature_set": None, "fingerprint": None}
    return {"feature_set": info.tags.get("feature_set"), "fingerprint": info.tags.get("fingerprint")}


def reconcile_aliases(registry: ModelRegistry, conn: psycopg.Connection, market: Market | str) -> dict:
    """Point MLflow's `champion` and `previous_champion` where the audit says; returns what changed.

    The audit wins over MLflow: an alias the audit does not back is removed. The caller holds the
    market's decision lock (`reconcile` takes it).
    """
    market = _market(market)
    chain = audit.champion_chain(conn, market.key)
    wanted = {CHAMPION: chain[-1] if chain else None, PREVIOUS_CHAMPION: chain[-2] if len(chain) > 1 else None}
    present = registry.aliases(market)
    if present is None:
        if any(v is not None for v in wanted.values()):
            raise UserInputError(
                f"{market.key}: the promotion audit names champion v{wanted[CHAMPION]}, but MLflow has no "
                f"registered model {registered_model_name(market)}"
            )
        return {}
    changes = {}
    for alias, version in wanted.items():
        before = present.get(alias)
        if before == version:
            continue
        registry.set_alias(market, alias, version)
        changes[alias] = (before, version)
    return changes


def _merged(first: dict, then: dict) -> dict:
    """Alias moves of two reconciliations as one: (first before, last after); a move undone drops out."""
    out = dict(first)
    for alias, (before, after) in then.items():
        start = out[alias][0] if alias in out else before
        out[alias] = (start, after)
    return {alias: move for alias, move in out.items() if move[0] != move[1]}


def _result(registry, conn, market: Market, record: AuditRecord | None, decision: Decision | None = None,
            healed: dict | None = None, completed: bool = False) -> PromotionResult:
    changes = _merged(healed or {}, reconcile_aliases(registry, conn, market))
    chain = audit.champion_chain(conn, market.key)
    aliases = {CHAMPION: chain[-1] if chain else None, PREVIOUS_CHAMPION: chain[-2] if len(chain) > 1 else None}
    return PromotionResult(record, aliases, decision, changes, completed)


def _already_champion(registry, conn, market: Market, healed: dict) -> PromotionResult:
    """The audit already names the version asked for: record nothing, complete the aliases (done by the
    healing before acting) and say which audit row had recorded it."""
    return _result(registry, conn, market, audit.last_champion_move(conn, market.key), healed=healed, completed=True)


@dataclass(frozen=True)
class Reconciliation:
    """What `reconcile` found for one market: the alias moves it made and where the aliases stand."""

    market: str
    changes: dict[str, tuple[int | None, int | None]]  # alias -> (before, after)
    aliases: dict[str, int | None]  # champion, previous_champion (the audit), challenger (the checks)
    skipped: str | None = None  # why the champion aliases were not looked at this time
    error: str | None = None  # what cannot be healed from here (e.g. the audit names a version MLflow lacks)

    def to_json(self) -> dict:
        return {"market": self.market, "aliases": self.aliases, "skipped": self.skipped, "error": self.error,
                "changes": {alias: {"before": b, "after": a} for alias, (b, a) in self.changes.items()}}


def reconcile(conn: psycopg.Connection, registry: ModelRegistry, market: Market | str, *,
              wait: bool = True) -> Reconciliation:
    """Heal the market's aliases from their truths: `champion` / `previous_champion` from the promotion
    audit, under the market's decision lock (`wait=False`: skip them if a decision holds it, as a daemon
    tick does: that decision reconciles them itself), and `challenger` from the model checks."""
    market = _market(market)
    changes: dict = {}
    skipped = error = None
    try:
        if wait:
            with market_decision_lock(conn, market.key):
                changes = reconcile_aliases(registry, conn, market)
        else:
            with try_market_decision_lock(conn, market.key) as taken:
                if taken:
                    changes = reconcile_aliases(registry, conn, market)
                else:
                    skipped = "a promotion decision holds the market's lock (it reconciles the aliases itself)"
    except UserInputError as exc:
        error = str(exc)
    moved = sync_challenger_alias(conn, registry, market)
    if moved is not None:
        changes[CHALLENGER] = moved
    present = registry.aliases(market) or {}
    aliases = {alias: present.get(alias) for alias in (CHAMPION, PREVIOUS_CHAMPION, CHALLENGER)}
    return Reconciliation(market.key, changes, aliases, skipped, error)


def markets_to_reconcile(conn: psycopg.Connection) -> list[str]:
    """Every market with a promotion audit or registered in the `markets` table."""
    from rl_lifecycle.markets.table import list_markets

    return sorted(set(audit.markets(conn)) | {record.market.key for record in list_markets(conn)})


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
    stability=None,
) -> PromotionResult:
    """Run the gates on the challenger, record the decision, and move the aliases when it is promoted.

    `stability`: the market's `promotion.stability.StabilityWindow` (read by `ops.stability.market_stability`);
    with `auto_promotion`, a passing challenger of a market with a champion is promoted only when it is met,
    else it waits (pending_manual, STABILITY_WINDOW_NOT_MET, what is missing in the audit's note and the
    window in its details). A bootstrap (no champion) is not held by it.

    Reports are `ReportSummary` or stored `EvaluationReport`s; the champion's must cover the same folds.
    `evaluated_champion_version`: the champion `champion_report` belongs to; when the audit's champion
    has changed since (another decision won the race), StaleChampionError is raised and nothing is written.
    """
    from rl_lifecycle.evaluation.store import market_trials

    market = _market(market)
    challenger = _summary(conn, challenger_report, market_trials(conn, market))
    champion_summary = None if champion_report is None else _summary(conn, champion_report)
    with market_decision_lock(conn, market.key):
        healed = reconcile_aliases(registry, conn, market)  # a gap left by an interrupted action, first
        champion = audit.current_champion(conn, market.key)
        if evaluated_champion_version is not None and evaluated_champion_version != champion:
            raise StaleChampionError(
                f"{market.key}: the report was compared with champion v{evaluated_champion_version}, but the "
                f"champion is now {'v' + str(champion) if champion else 'none'}: evaluate against it again"
            )
        if int(challenger_version) == champion:
            # re-deciding the champion's own partition (e.g. after a manual promotion of it): nothing to
            # decide; its aliases are where the audit says
            return _already_champion(registry, conn, market, healed)
        if champion is not None and champion_summary is None:
            raise UserInputError(
                f"{market.key}: champion v{champion} exists; give its report on the same folds for the paired gates"
            )
        if champion is None and champion_summary is not None:
            raise StaleChampionError(
                f"{market.key}: a champion report ({champion_summary.report_id}) was given, but the market "
                "has no champion: decide without one (bootstrap)"
            )
        info = registry.version(market, int(challenger_version))
        trained_on = info.tags.get("dataset_hash")
        if challenger.dataset_hash and trained_on and challenger.dataset_hash != trained_on:
            raise UserInputError(
                f"{market.key}: version {challenger_version} was trained on dataset {trained_on[:12]}, but the "
                f"challenger report {challenger.report_id} evaluated dataset {challenger.dataset_hash[:12]}"
            )
        window = stability if champion is not None else None
        decision = evaluate(challenger, champion_summary, policy, auto_promotion, model_checks=model_checks(info),
                            stability=window)
        waits = STABILITY_WINDOW_NOT_MET in decision.reason_codes
        promoted = decision.outcome == PROMOTED
        resulting = int(challenger_version) if promoted else champion
        resulting_info = info if promoted else (None if champion is None else registry.version(market, champion))
        record = audit.append(conn, AuditRecord(
            market=market.key, action=_ACTION_OF_OUTCOME[decision.outcome], actor=actor,
            reason_codes=decision.reason_codes, gates=decision.gates_json(),
            challenger_version=int(challenger_version), champion_version=champion,
            resulting_champion_version=resulting, dataset_hash=challenger.dataset_hash or trained_on,
            evaluation_report_id=challenger.report_id, **_lineage(resulting_info),
            note=f"stability window not met: {'; '.join(window.missing)}" if waits else None,
            details={"stability": window.to_json()} if window is not None and auto_promotion else None,
        ))
        return _result(registry, conn, market, record, decision, healed)


def manual_promote(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market | str,
    version: int,
    reason: str,
    actor: str,
    override: bool = False,
) -> PromotionResult:
    """Make `version` champion by hand: refused when its recorded gates failed (or never ran), or its
    blocking model checks have not passed, unless `override`. When the audit already names `version`
    champion (a re-run of a promotion killed before it moved the aliases), nothing is recorded: the
    aliases are completed and the result says so (`completed`)."""
    market = _market(market)
    note = _reason(reason)
    with market_decision_lock(conn, market.key):
        healed = reconcile_aliases(registry, conn, market)
        champion = audit.current_champion(conn, market.key)
        if int(version) == champion:
            return _already_champion(registry, conn, market, healed)
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
            if not checks_passed(info):
                states = ", ".join(f"{name} {outcome or 'never ran'}" for name, outcome in model_checks(info).items())
                window = info.tags.get("partition_key", "MARKET|WINDOW")
                raise UserInputError(
                    f"{market.key}: version {version}'s blocking model checks have not passed ({states}): "
                    f"MODEL_CHECKS_NOT_PASSED. Run them (rl-lifecycle check model_lineage model_reproducible "
                    f"--partition '{window}') or pass --override (audited)"
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
        return _result(registry, conn, market, record, healed=healed)


def rollback(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market | str,
    reason: str,
    actor: str,
    to_version: int | None = None,
) -> PromotionResult:
    """Restore the previous champion (or `to_version`), whatever feature set it was trained on.

    A re-run of a rollback killed before it moved the aliases (the audit's last champion move is a
    rollback, and the champion alias still named the version it rolled back from) completes that
    rollback instead of rolling back once more; so does naming the version that is already champion.
    """
    market = _market(market)
    note = _reason(reason)
    with market_decision_lock(conn, market.key):
        healed = reconcile_aliases(registry, conn, market)
        last = audit.last_champion_move(conn, market.key)
        moved = healed.get(CHAMPION)
        if (moved is not None and last is not None and last.action == audit.ROLLBACK
                and moved == (last.champion_version, last.resulting_champion_version)
                and (to_version is None or int(to_version) == last.resulting_champion_version)):
            return _already_champion(registry, conn, market, healed)
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
            return _already_champion(registry, conn, market, healed)
        info = registry.version(market, target)
        record = audit.append(conn, AuditRecord(
            market=market.key, action=audit.ROLLBACK, actor=actor, challenger_version=target,
            champion_version=champion, resulting_champion_version=target,
            dataset_hash=info.tags.get("dataset_hash"), note=note, **_lineage(info),
        ))
        return _result(registry, conn, market, record, healed=healed)


@dataclass(frozen=True)
class AutoRollback:
    """What `auto_rollback` did: the rollback (`result`), or why nothing was done (`skipped`)."""

    result: PromotionResult | None
    skipped: str | None = None


def auto_rollback(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    market: Market | str,
    *,
    breach_key: str,
    breached_version: int,
    note: str,
    details: dict,
) -> AutoRollback:
    """Roll back to the previous champion because champion `breached_version` breached its band, through the
    same audited path as `rollback` (actor `auto-rollback`, `details` with `breach_key` in the audit row),
    once per breach: nothing is done when a rollback for `breach_key` is in the audit already (whichever
    process made it), when the champion is no longer `breached_version`, or when it has no previous champion."""
    market = _market(market)
    with market_decision_lock(conn, market.key):
        healed = reconcile_aliases(registry, conn, market)
        done = audit.auto_rollback_of(conn, market.key, breach_key)
        if done is not None:
            return AutoRollback(None, f"rolled back for this breach already (audit #{done.id})")
        chain = audit.champion_chain(conn, market.key)
        champion = chain[-1] if chain else None
        if champion != int(breached_version):
            return AutoRollback(None, f"the champion is {'v' + str(champion) if champion else 'none'} now, "
                                      f"not the breached v{breached_version}")
        if len(chain) < 2:
            return AutoRollback(None, f"champion v{champion} has no previous champion to roll back to: roll back "
                                      "by hand to a named version (`rl-lifecycle rollback --to-version N`)")
        target = chain[-2]
        info = registry.version(market, target)
        try:
            record = audit.append(conn, AuditRecord(
                market=market.key, action=audit.ROLLBACK, actor=audit.AUTO_ROLLBACK_ACTOR, challenger_version=target,
                champion_version=champion, resulting_champion_version=target,
                dataset_hash=info.tags.get("dataset_hash"), note=_reason(note),
                details={**details, "breach_key": breach_key}, **_lineage(info),
            ))
        except psycopg.errors.UniqueViolation:  # another process rolled back for it between our read and write
            return AutoRollback(None, "rolled back for this breach already (by another process)")
        return AutoRollback(_result(registry, conn, market, record, healed=healed))


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
