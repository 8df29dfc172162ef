"""`rl-lifecycle status`: per market, champion, challenger, last decision, freshness and open alerts;
and the rollout switches in rollout order, as in force (`rl_lifecycle.switches`: stored in the
database, else the environment, else the default) with where each value comes from."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from rl_lifecycle.candles.store import newest_candle_ts
from rl_lifecycle.decisions.store import decision_history
from rl_lifecycle.features.store import feature_sets_with_snapshots, newest_snapshot_ts
from rl_lifecycle.markets.table import list_markets
from rl_lifecycle.ops.alerts import count_open_alerts, list_alerts
from rl_lifecycle.ops.metrics import age_seconds
from rl_lifecycle.promotion.audit import current_champion, last_gate_decision
from rl_lifecycle.settings import ROLLOUT_STAGES
from rl_lifecycle.switches import STORED, SwitchState


# -- rollout switches -------------------------------------------------------------------------------
def switch_lines(switches: list[SwitchState]) -> list[str]:
    """The rollout stage by stage (each number once), each switch with its value and where it comes from
    (`switches`: `rl_lifecycle.switches.switch_states`)."""
    lines = ["rollout switches, stage by stage (in force: stored in the database, else the environment, else the default):"]
    for stage, name in sorted(ROLLOUT_STAGES.items()):
        of_stage = [s for s in switches if s.stage == stage]
        if not of_stage:  # stage 1: feature_snapshots is always stored (the source of every dataset)
            lines.append(f"  {stage}. {name}: always on, no switch (roll back the feature set instead)")
            continue
        lines.append(f"  {stage}. {name}")
        lines += [f"       {s.switch:<16} {s.value:<8} {s.origin_text()}" for s in of_stage]
    if any(s.origin != STORED for s in switches):
        lines.append("  not stored: each process (the daemon, the code location, this shell) reads its own environment")
    lines.append("  change one for the daemon, the code location and the CLI alike: "
                 "`rl-lifecycle switch set NAME VALUE` (`switch unset NAME`: back to the environment)")
    return lines


# -- `rl-lifecycle status` --------------------------------------------------------------------------
def _last_decision(conn: psycopg.Connection, market: str) -> dict | None:
    newest = decision_history(conn, market, limit=1)
    if not newest:
        return None
    d = newest[0]
    return {"action": d.action, "reason_codes": list(d.reason_codes), "latency_ms": d.latency_ms,
            "at": d.created_at.isoformat()}


def _challenger(registry, market) -> dict | None:
    """The model version with the `challenger` alias, else the newest version; an error is reported, not raised."""
    if registry is None:
        return None
    try:
        versions = registry.versions(market)
    except Exception as exc:  # noqa: BLE001 - MLflow down must not hide the rest of the status
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    if not versions:
        return None
    chosen = next((v for v in versions if "challenger" in v.aliases), versions[0])
    return {"version": chosen.version, "aliases": list(chosen.aliases), "created": chosen.created}


def market_status(conn: psycopg.Connection, registry=None, now: datetime | None = None) -> list[dict]:
    """Per registered market: champion (audit), challenger (MLflow), last decision, freshness, open alerts, and
    how far it is into its stability window (`ops.stability`: what auto promotion waits for)."""
    from rl_lifecycle.ops.stability import market_stability
    from rl_lifecycle.switches import settings_in_force

    now = now or datetime.now(UTC)
    settings = settings_in_force(conn)
    statuses = []
    for market in (r.market for r in list_markets(conn)):
        newest = newest_candle_ts(conn, market)
        features = {}
        for fs_id, name, _ in feature_sets_with_snapshots(conn, market):
            features[name] = age_seconds(newest_snapshot_ts(conn, market, fs_id), market.interval_us, now)
        challenger = _challenger(registry, market)
        if challenger and "version" in challenger:
            decision = last_gate_decision(conn, market.key, challenger["version"])
            challenger["last_gate_decision"] = (
                None if decision is None else {"action": decision.action, "reason_codes": list(decision.reason_codes)})
        open_alerts = list_alerts(conn, market=market.key, open_only=True, limit=5)
        statuses.append({
            "market": market.key,
            "champion_version": current_champion(conn, market.key),
            "challenger": challenger,
            "last_decision": _last_decision(conn, market.key),
            "candle_freshness_seconds": age_seconds(newest, market.interval_us, now),
            "feature_freshness_seconds": features,
            "open_alerts": count_open_alerts(conn, market.key),
            "stability": market_stability(conn, market, settings, now).to_json(),
            "latest_open_alerts": [
                {"kind": a.kind, "asset": a.asset, "check": a.check, "partition": a.partition,
                 "summary": a.summary[:200] if a.kind != "inbox_rejected" else a.summary[:1000], "run_url": a.run_url, "created_at": a.created_at.isoformat()}
                for a in open_alerts
            ],
        })
    return statuses


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = abs(seconds)
    text = f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h" if s < 172800 else f"{s / 86400:.1f}d"
    return text + " ago" if seconds >= 0 else "in " + text


def status_lines(statuses: list[dict], switches: list[SwitchState]) -> list[str]:
    """`rl-lifecycle status` as text."""
    lines = switch_lines(switches)
    lines.append("")
    if not statuses:
        lines.append("no markets registered; add one with `rl-lifecycle market add`")
    for st in statuses:
        champion = f"v{st['champion_version']}" if st["champion_version"] is not None else "none"
        ch = st["challenger"]
        if ch is None:
            challenger = "none"
        elif "error" in ch:
            challenger = f"unknown ({ch['error']})"
        else:
            gate = ch.get("last_gate_decision")
            challenger = f"v{ch['version']}" + (f" ({gate['action']}: {', '.join(gate['reason_codes']) or 'no reasons'})"
                                                 if gate else " (not judged yet)")
        d = st["last_decision"]
        decision = "none" if d is None else f"{d['action']} at {d['at']} ({', '.join(d['reason_codes']) or 'free'})"
        features = ", ".join(f"{k} {format_age(v)}" for k, v in st["feature_freshness_seconds"].items()) or "none"
        lines += [
            f"{st['market']}",
            f"  champion        {champion}",
            f"  challenger      {challenger}",
            f"  last decision   {decision}",
            f"  freshness       candles {format_age(st['candle_freshness_seconds'])}; features {features}",
            f"  open alerts     {st['open_alerts']}",
        ]
        if (window := st.get("stability")) is not None:
            lines.append(f"  stability       {_stability_text(window)}")
        for a in st["latest_open_alerts"]:
            if a["kind"] == "inbox_rejected":  # the summary: the file and its report, then the first problem
                first, *problems = a["summary"].splitlines() or [""]
                lines.append(f"    - {a['created_at'][:19]} inbox: {first}")
                lines += [f"      {problems[0].strip()}"] if problems else []
                continue
            what = (f"{a['check']} on {a['asset']}" if a["kind"] == "check_failed" else
                    f"paper breach ({a['check']})" if a["kind"] == "paper_breach" else f"run failed ({a['asset'] or '-'})")
            lines.append(f"    - {a['created_at'][:19]} {what} [{a['partition'] or '-'}] {a['run_url']}")
    return lines


def _stability_text(window: dict) -> str:
    """How far the market is into its stability window: `2.0 of 7 days since switch ... ; missing: ...`."""
    head = (f"{window['elapsed_days']:.1f} of {window['required_days']:g} day(s) since {window['since']} "
            f"({window['counting_from'][:16]})")
    if window["met"]:
        return head + ": stable, auto promotion may roll forward"
    return head + "; auto promotion waits (STABILITY_WINDOW_NOT_MET): " + "; ".join(window["missing"])
