"""The champion watched on a schedule: the paper watch of every market with paper decisions, and with the
rollout switch `auto_rollback` on, the automatic rollback of a champion that breached its band.

    watched = watch_markets(conn, registry=lambda: open_registry(url), auto_rollback=settings.auto_rollback)

Per market: `ops.paper.watch` (the segments booked, each breach alerted once as `paper_breach`), then, when
the segment of the champion in force has a breach and `auto_rollback` is on, `promotion.service.auto_rollback`:
the previous champion restored through the audited path of `rl-lifecycle rollback`, actor `auto-rollback`, the
breach's figures in the audit row's `note` and `details` (its `breach_key` is the breach alert's dedupe key).
Once per breach: a second watch over the same breach finds its rollback in the audit and does nothing (and
once the champion is the previous one, its breached segment is no longer the one in force). The audit row is
sent as a promotion event (`promotion_event`, event `auto_rollback`: sql/0015), which is the alert of the
rollback; the breach alert of the champion rolled back is resolved by the watch that follows it.

The Dagster shell (`orchestration/automation/paper_watch.py`) runs this every few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from rl_lifecycle.decisions.paper_pnl import BREACH_CODE, BREACH_QUANTILE
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.ops.alerts import Alert
from rl_lifecycle.ops.paper import markets_with_decisions, watch
from rl_lifecycle.windows import iso


@dataclass(frozen=True)
class MarketWatch:
    market: str
    champion: int | None  # in force after this watch
    alerted: list[Alert] = field(default_factory=list)  # breach alerts recorded by this watch
    breach_key: str | None = None  # the breach of the champion in force that was acted on (or left alone)
    rolled_back: tuple[int, int] | None = None  # (from, to) when this watch rolled back
    audit_id: int | None = None
    skipped: str | None = None  # why a breach of the champion in force was not rolled back
    error: str | None = None  # the market could not be watched (e.g. the cost of its champion is unknown)

    def describe(self) -> str:
        if self.error:
            return f"{self.market}: cannot watch: {self.error}"
        parts = [f"{self.market}: champion {'v' + str(self.champion) if self.champion else 'none'}"]
        if self.alerted:
            parts.append(f"{len(self.alerted)} new breach alert(s)")
        if self.rolled_back:
            parts.append(f"auto rollback v{self.rolled_back[0]} -> v{self.rolled_back[1]} (audit #{self.audit_id})")
        elif self.skipped:
            parts.append(f"breach not rolled back: {self.skipped}")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"market": self.market, "champion_version": self.champion, "breaches_alerted": len(self.alerted),
                "breach_key": self.breach_key, "rolled_back": list(self.rolled_back) if self.rolled_back else None,
                "audit_id": self.audit_id, "skipped": self.skipped, "error": self.error}


def rollback_note(market: Market, breach, band) -> str:
    """The audit row's note: what breached, by how much, against which evaluation."""
    return (f"{BREACH_CODE}: champion v{breach.champion_version}'s paper drawdown reached {breach.drawdown:.2%} "
            f"{breach.bars_in} bar(s) into its segment from {iso(breach.segment_from_us)} (worst {breach.worst_drawdown:.2%}), "
            f"beyond the {band.quantile:.0%} quantile of its walk-forward's windows ({breach.limit:.2%}, evaluation "
            f"report {band.report_id}); rolled back automatically (switch auto_rollback)")


def watch_market(conn: psycopg.Connection, market: Market | str, *, registry, auto_rollback: bool,
                 quantile: float = BREACH_QUANTILE) -> MarketWatch:
    """One market's paper watch and, with `auto_rollback`, the rollback of a champion in force that breached."""
    from rl_lifecycle.promotion.service import auto_rollback as roll_back

    market = market if isinstance(market, Market) else Market.parse(market)
    watched = watch(conn, market, registry=registry, quantile=quantile)
    performance = watched.performance
    current = performance.current
    base = {"market": market.key, "alerted": watched.alerted}
    if current is None or not current.found:
        return MarketWatch(champion=performance.champion, **base)
    if not auto_rollback:
        breach = current.found[0]
        return MarketWatch(champion=performance.champion, breach_key=breach.dedupe_key(market.key),
                           skipped="auto rollback is off (switch auto_rollback)", **base)
    reg = registry() if callable(registry) else registry
    skipped, key = None, None
    for breach in current.found:  # the first breach not yet acted on (a re-promoted champion's later breaches)
        key = breach.dedupe_key(market.key)
        done = roll_back(
            conn, reg, market, breach_key=key, breached_version=breach.champion_version,
            note=rollback_note(market, breach, current.band),
            details={"check": BREACH_CODE, "alert_dedupe_key": key, "breach": breach.to_json(),
                     "expected": current.band.expected(breach.bars_in), "segment_from": iso(breach.segment_from_us),
                     "evaluation_report_id": current.band.report_id, "quantile": current.band.quantile},
        )
        if done.result is not None:
            record = done.result.record
            after = watch(conn, market, registry=registry, quantile=quantile)  # resolves the breach alert
            return MarketWatch(champion=after.performance.champion, breach_key=key,
                               rolled_back=(record.champion_version, record.resulting_champion_version),
                               audit_id=record.id, **base)
        skipped = done.skipped
    return MarketWatch(champion=performance.champion, breach_key=key, skipped=skipped, **base)


def watch_markets(conn: psycopg.Connection, *, registry, auto_rollback: bool,
                  markets: list[Market] | None = None) -> list[MarketWatch]:
    """`watch_market` for every market with paper decisions of a champion (or `markets`); a market that cannot
    be watched (its champion's cost unknown, MLflow unreachable) is reported (`error`), never stops the others."""
    out = []
    for market in markets if markets is not None else markets_with_decisions(conn):
        try:
            out.append(watch_market(conn, market, registry=registry, auto_rollback=auto_rollback))
        except UserInputError as exc:
            out.append(MarketWatch(market.key, None, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - MLflow down for one market must not stop the others' watch
            out.append(MarketWatch(market.key, None, error=f"{type(exc).__name__}: {exc}"[:500]))
    return out
