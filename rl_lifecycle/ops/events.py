"""Promotion events: every `promotion_audit` row is also sent to the alert webhook, so other systems can react.

The outbox is in the database: a trigger on `promotion_audit` (sql/0015) inserts, in the audit row's own
statement, an `alerts` row of kind `promotion_event` keyed `audit:<id>` with the audit row in
`details.audit`, resolved at once (an event is not a failure: it counts in no open-alert figure). So
every action is announced whichever code path recorded it (the gates' decision, a manual promotion, a
rollback, the auto-rollback), and never twice. `ops.alerts.deliver_pending` POSTs it like any alert
(retried with backoff while the webhook is down); the CLI delivers it right after the action
(`deliver_pending(conn, keys=[event_key(id)])`), the daemon's `alert_delivery_sensor` whatever is left.

This module renders the body's event part from the stored audit row (pure: `ops.alerts` calls it):
`event` (promote, reject, pending, manual_promote, rollback, or auto_rollback for a rollback by the
actor `auto-rollback`), the market, actor, versions, reason codes, the gates as JSON and as a text table.
"""

from __future__ import annotations

from collections.abc import Sequence

from rl_lifecycle.promotion.gates import GATE_TABLE_HEADERS, gate_rows

AUTO_ROLLBACK_ACTOR = "auto-rollback"
AUTO_ROLLBACK = "auto_rollback"
AUDIT_PAGE = "/assets/promotion_decision"  # the Dagster UI page of the decisions (a CLI action has no run)


def event_key(audit_id: int) -> str:
    """The alert `dedupe_key` of an audit row's event."""
    return f"audit:{int(audit_id)}"


def event_name(action: str, actor: str) -> str:
    """The audit action, `auto_rollback` for a rollback the auto-rollback made (the trigger's rule too)."""
    return AUTO_ROLLBACK if action == "rollback" and actor == AUTO_ROLLBACK_ACTOR else action


def gate_table(gates: Sequence[dict]) -> str:
    """The gates as a fixed-width text table (GATE_TABLE_HEADERS, `promotion.gates.gate_rows`); '' without gates."""
    rows = gate_rows(gates)
    if not rows:
        return ""
    widths = [max(len(str(c)) for c in column) for column in zip(GATE_TABLE_HEADERS, *rows, strict=True)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(GATE_TABLE_HEADERS), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def event_of(details: dict | None) -> dict:
    """The event a `promotion_event` alert's details describe (the audit row the trigger copied)."""
    row = dict((details or {}).get("audit") or {})
    gates = list(row.get("gates") or [])
    return {
        "event": event_name(row.get("action", ""), row.get("actor", "")),
        "action": row.get("action"), "market": row.get("market"), "actor": row.get("actor"),
        "challenger_version": row.get("challenger_version"), "champion_before": row.get("champion_version"),
        "champion_after": row.get("resulting_champion_version"), "reason_codes": list(row.get("reason_codes") or []),
        "gates": gates, "gate_table": gate_table(gates), "note": row.get("note"), "override": row.get("override"),
        "dataset_hash": row.get("dataset_hash"), "evaluation_report_id": row.get("evaluation_report_id"),
        "feature_set": row.get("feature_set"), "audit_id": row.get("id"), "recorded_at": row.get("created_at"),
    }


def audit_page(ui_url: str) -> str:
    return f"{ui_url.rstrip('/')}{AUDIT_PAGE}"

