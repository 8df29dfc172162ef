"""The decide use case: the champion acts on the newest closed bar's canonical vector, or holds with every reason.

    decision = decide(conn, market, registry=lambda: open_registry(url), at_us=None)

1. The market must be registered (its trading calendar judges staleness); `at` defaults to now.
2. The champion is the promotion audit's (`current_champion`), never an MLflow alias.
3. The vector is the newest candle closed by `at`, computed by `vectors_from_candles` under the active
   feature set (the `feature_set` switch, else RL_FEATURE_SET): the canonical rule, the still-open window included.
4. Hold reasons, all of them listed: NO_CHAMPION, FEATURE_SET_MISMATCH (the champion's fingerprint is not
   the active set's), STALE_FEATURES (more than `stale_after_bars` expected bars closed after the newest
   candle, or none at all), MISSING_CRITICAL_FEATURES, OOD (per-feature z bound and Mahalanobis distance
   against the statistics stored with the champion's model version; no statistics is OOD: fail closed).
5. No reason: `Policy.act` picks the target position from the paper position held (the previous
   decision's). A hold is flat: no new exposure.
6. Every decision is appended to `rl_decisions`.

Loaded champions (policy + statistics) are cached per process by (registry, market, version), so a
long-lived decider pays MLflow's download once per champion, not per decision; it also keeps each
market's open-window candles (`CandleInputCache`) and reads only those written since its last decision.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from rl_lifecycle.candles.input_cache import CandleInputCache
from rl_lifecycle.candles.store import newest_candle_ts
from rl_lifecycle.decisions import safety
from rl_lifecycle.decisions.config import DecisionConfig, load_decision_config
from rl_lifecycle.decisions.store import DecisionRecord, append_decision, paper_position
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import FeatureSetSpec
from rl_lifecycle.features.vectors import vectors_from_candles
from rl_lifecycle.markets.calendars import get_calendar
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import get_market, market_fill
from rl_lifecycle.promotion.audit import current_champion
from rl_lifecycle.switches import feature_set_in_force
from rl_lifecycle.trading import FILL_CLOSE, POSITION_NAMES
from rl_lifecycle.windows import iso, newest_closed_bar, to_us, utc_now_us

STATS_ARTIFACTS = "training_stats"  # models.service.STATS_ARTIFACTS: where training saves the statistics
# `--at` may run ahead of this machine's clock by this much (clock skew), no more.
FUTURE_TOLERANCE_US = 60_000_000


@dataclass(frozen=True)
class Champion:
    version: int
    policy: object  # rl_lifecycle.models.policy.Policy
    ood: safety.OodModel | None  # None: the version carries no training statistics
    fill: str = FILL_CLOSE  # the fill convention its rewards were trained under (MLflow tag `fill`)

    @property
    def fingerprint(self) -> str:
        return self.policy.fingerprint


class ChampionCache:
    """Loaded champions by (tracking URI, market, version); a promotion or rollback changes the key."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, int], Champion] = {}
        self._lock = threading.Lock()

    def get(self, registry, market: Market, version: int) -> Champion:
        key = (str(getattr(registry, "tracking_uri", "")), market.key, int(version))
        with self._lock:
            found = self._loaded.get(key)
        if found is None:
            found = load_champion(registry, market, version)
            with self._lock:  # a long-lived decider keeps one champion per market, not every one it saw
                for stale in [k for k in self._loaded if k[:2] == key[:2]]:
                    del self._loaded[stale]
                self._loaded[key] = found
        return found

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()


CHAMPIONS = ChampionCache()
CANDLE_INPUTS = CandleInputCache()  # each market's open-window candles, refreshed by write_seq on every decision


def load_champion(registry, market: Market, version: int) -> Champion:
    """The registered version's policy and its training statistics (None when it has none)."""
    from rl_lifecycle.models.policy import load_registered_policy
    from rl_lifecycle.models.statistics import FeatureStatistics

    policy = load_registered_policy(registry, market, int(version))
    info = registry.version(market, int(version))
    ood = None
    with tempfile.TemporaryDirectory(prefix="rl-stats-") as tmp:
        try:
            local = registry.client.download_artifacts(info.run_id, STATS_ARTIFACTS, tmp)
            statistics = FeatureStatistics.load(Path(local))
        except Exception:  # noqa: BLE001 - no statistics: the OOD gate fails closed
            statistics = None
    if statistics is not None and statistics.feature_names == policy.feature_names:
        ood = safety.OodModel.of(statistics)
    return Champion(int(version), policy, ood, info.tags.get("fill", FILL_CLOSE))  # versions before fills: close


@dataclass(frozen=True)
class Decision:
    record: DecisionRecord

    def to_json(self) -> dict:
        r = self.record
        return {
            "action": r.action,
            "champion_version": r.champion_version,
            "fingerprint": r.fingerprint,
            "vector_sha256": r.vector_sha256,
            "reason_codes": list(r.reason_codes),
            "latency_ms": round(r.latency_ms, 3),
            "market": r.market,
            "as_of": iso(r.as_of_us),
            "bar_ts": None if r.bar_ts_us is None else iso(r.bar_ts_us),
            "decision_id": r.id,
        }


def parse_at(raw: str | None, now_us: int | None = None) -> int:
    """`--at` as epoch microseconds (ISO date or datetime, naive = UTC); now when empty; the future is refused."""
    now_us = utc_now_us() if now_us is None else now_us
    if raw is None or not str(raw).strip():
        return now_us
    try:
        at_us = to_us(str(raw))
    except UserInputError:
        raise UserInputError(f"--at {raw!r} is not an ISO date or datetime (e.g. 2024-03-01T12:00:00Z)") from None
    except (OverflowError, ValueError) as exc:
        raise UserInputError(f"--at {raw!r} is out of range: {exc}") from None
    if at_us > now_us + FUTURE_TOLERANCE_US:
        raise UserInputError(f"--at {raw!r} is in the future (now is {iso(now_us)}): decisions are made on closed bars")
    return at_us


def decide(
    conn: psycopg.Connection,
    market: Market | str,
    *,
    registry: Callable[[], object] | object | None = None,
    at_us: int | None = None,
    config: DecisionConfig | None = None,
    feature_set: FeatureSetSpec | None = None,
    champions: ChampionCache | None = None,
    candle_inputs: CandleInputCache | None = None,
    record: bool = True,
) -> Decision:
    """Decide for `market` as of `at` (default now) and append the decision to `rl_decisions`.

    `registry`: a ModelRegistry, or a callable returning one (opened only when the market has a champion).
    `conn` is autocommit (the decision is committed when this returns) or inside a transaction its caller
    commits (`decide_if_due`). `champions` and
    `candle_inputs` default to this process's caches, which a long-lived decider fills once.
    """
    started = time.perf_counter()
    market = market if isinstance(market, Market) else Market.parse(market)
    calendar = get_calendar(get_market(conn, market).calendar)  # unknown market: UserInputError
    at_us = utc_now_us() if at_us is None else int(at_us)
    config = config or load_decision_config()
    spec = feature_set or feature_set_in_force(conn)  # the feature_set switch as stored, else RL_FEATURE_SET
    champions = champions or CHAMPIONS
    candle_inputs = candle_inputs or CANDLE_INPUTS
    reasons: set[str] = set()
    details: dict = {"feature_set": spec.name}

    version = current_champion(conn, market.key)
    champion: Champion | None = None
    if version is None:
        reasons.add(safety.NO_CHAMPION)
    else:
        reg = registry() if callable(registry) else registry
        if reg is None:
            raise ValueError("decide needs a registry (or a callable returning one) when the market has a champion")
        champion = champions.get(reg, market, version)
        if champion.fingerprint != spec.fingerprint:
            reasons.add(safety.FEATURE_SET_MISMATCH)
            details["champion_fingerprint"] = champion.fingerprint
            details["champion_feature_set"] = champion.policy.spec.feature_set
        fill = market_fill(conn, market)
        if champion.fill != fill:  # trained on rewards of another fill than its decisions would be booked at
            reasons.add(safety.FILL_MISMATCH)
            details["champion_fill"], details["market_fill"] = champion.fill, fill

    newest = newest_candle_ts(conn, market, closed_by_us=at_us)
    missed = safety.missed_bars(calendar, market.interval_us, newest, at_us)
    details["missed_bars"] = missed
    if safety.is_stale(missed, config.stale_after_bars):
        reasons.add(safety.STALE_FEATURES)

    vector, sha = None, None
    if newest is None:
        reasons.add(safety.MISSING_CRITICAL_FEATURES)
        details["missing_features"] = list(spec.feature_names)
    else:
        frame = vectors_from_candles(conn, market, spec, newest, newest + 1, cache=candle_inputs)
        if len(frame) != 1 or int(frame.ts[0]) != newest:
            raise RuntimeError(f"{market.key}: the pipeline gave {len(frame)} rows for bar {iso(newest)}, expected 1")
        raw, missing = np.array(frame.values[0]), np.array(frame.missing[0])
        sha = safety.vector_sha256(raw)
        critical = config.critical_for(spec.feature_names, spec.critical_features)
        absent = safety.missing_critical(missing, spec.feature_names, critical)
        if missing.any():
            details["missing_features"] = [n for j, n in enumerate(spec.feature_names) if missing[j]]
        if absent:
            reasons.add(safety.MISSING_CRITICAL_FEATURES)
        if champion is not None and safety.FEATURE_SET_MISMATCH not in reasons:
            statistics = champion.ood.statistics if champion.ood is not None else None
            vector = safety.impute(raw, missing, statistics)
            if champion.ood is None:
                reasons.add(safety.OOD)
                details["ood"] = {"error": "the champion's model version has no training statistics"}
            else:
                judged = champion.ood.judge(vector, config.ood_max_abs_z, config.ood_max_mahalanobis)
                details["ood"] = judged.to_json()
                if judged.out_of_distribution:
                    reasons.add(safety.OOD)

    position = 0
    if reasons:
        action = "hold"
    else:
        held = paper_position(conn, market.key, at_us)
        target = champion.policy.act(vector[None, :], np.array([held], dtype=np.int8), fingerprint=spec.fingerprint)
        position = int(target[0])
        action = POSITION_NAMES[position]
    latency_ms = (time.perf_counter() - started) * 1000
    decided = DecisionRecord(
        market=market.key, as_of_us=at_us, bar_ts_us=newest, action=action, position=position, champion_version=version, fingerprint=spec.fingerprint, vector_sha256=sha,
        reason_codes=tuple(code for code in safety.REASON_CODES if code in reasons), latency_ms=latency_ms,
        details=details,
    )
    return Decision(append_decision(conn, decided) if record else decided)


@dataclass(frozen=True)
class DueDecision:
    market: str
    bar_ts_us: int  # the bar that closed and is not decided on yet

    @property
    def run_key(self) -> str:
        return f"paper_decisions|{self.market}|{iso(self.bar_ts_us)}"


def due_decisions(conn: psycopg.Connection, now_us: int | None = None) -> list[DueDecision]:
    """Markets owed a decision at `now`: the bar that closed last is one their calendar expects (the market
    is live) and no decision was made since it closed. One per market per interval."""
    from rl_lifecycle.decisions.store import last_decision_as_of
    from rl_lifecycle.markets.table import list_markets

    now_us = utc_now_us() if now_us is None else int(now_us)
    due = []
    for record in list_markets(conn):
        interval = record.market.interval_us
        bar = newest_closed_bar(now_us, interval)
        if not len(get_calendar(record.calendar).expected_bar_opens(bar, bar + 1, interval)):
            continue  # closed: a weekend, a night, a holiday
        last = last_decision_as_of(conn, record.market.key)
        if last is None or last < bar + interval:
            due.append(DueDecision(record.market.key, bar))
    return due
