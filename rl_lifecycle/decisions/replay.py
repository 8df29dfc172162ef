"""Paper/backtest parity: the recorded paper decisions of a span re-run through the backtest's path.

    result = replay_decisions(conn, market, registry=..., from_us=T1, to_us=T2)
    result.differences  # [] when paper and backtest agree bar by bar

The backtest's path: the market's stored feature snapshots (`features.vectors.load_vectors`, the read
path datasets and evaluations use) under the feature set each decision recorded, the champion version
each decision recorded (loaded as the decider loads it, with its training statistics), and
`trading.rollout` (what the fold backtests' strategy runs) over each stretch of decisions the policy made
freely, starting from the paper position held before the stretch. A decision held for a reason (hold is
flat) starts a new stretch; it is compared on its vector only (its reasons are the decider's gates, not
the policy's). Decisions on bars in [T1, T2) are compared, in the order they were made.

Differences, one per decision and field: `vector_sha256` (the snapshot's bytes differ from the vector
the decider hashed), `action` (the policy given the same vector and position chose otherwise),
`snapshot` (no stored snapshot for the decided bar).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import psycopg

from rl_lifecycle.decisions import safety
from rl_lifecycle.decisions.service import CHAMPIONS, ChampionCache
from rl_lifecycle.decisions.store import DecisionRecord, decision_history
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.store import load_registered_feature_set
from rl_lifecycle.features.vectors import load_vectors
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import get_market
from rl_lifecycle.trading import POSITION_NAMES, rollout
from rl_lifecycle.windows import iso


@dataclass(frozen=True)
class Difference:
    decision_id: int | None
    as_of_us: int
    bar_ts_us: int | None
    field: str  # action | vector_sha256 | snapshot
    recorded: object
    replayed: object

    def to_json(self) -> dict:
        return {"decision_id": self.decision_id, "as_of": iso(self.as_of_us),
                "bar_ts": None if self.bar_ts_us is None else iso(self.bar_ts_us), "field": self.field,
                "recorded": self.recorded, "replayed": self.replayed}


@dataclass(frozen=True)
class ReplayResult:
    market: str
    from_us: int
    to_us: int
    decisions: int
    compared: int  # decisions the policy made freely, re-run and compared on their action
    held: int  # decisions held for a reason: compared on their vector only
    differences: list[Difference] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.differences

    def to_json(self) -> dict:
        return {"market": self.market, "from": iso(self.from_us), "to": iso(self.to_us), "decisions": self.decisions,
                "compared": self.compared, "held": self.held, "agrees": self.agrees,
                "differences": [d.to_json() for d in self.differences]}


def _stretches(records: list[DecisionRecord]) -> list[list[int]]:
    """Indices of consecutive free decisions of one champion and feature set (a hold or a change breaks them)."""
    runs: list[list[int]] = []
    previous = None
    for i, record in enumerate(records):
        if record.reason_codes or record.bar_ts_us is None or record.champion_version is None:
            previous = None
            continue
        key = (record.champion_version, record.fingerprint)
        if previous != key or runs[-1][-1] != i - 1:
            runs.append([])
        runs[-1].append(i)
        previous = key
    return runs


def replay_decisions(conn: psycopg.Connection, market: Market | str, *, registry, from_us: int, to_us: int,
                     champions: ChampionCache | None = None) -> ReplayResult:
    """Re-run the champion over the decided bars in [from, to) through the backtest's path; see the module doc."""
    market = market if isinstance(market, Market) else Market.parse(market)
    get_market(conn, market)  # an unknown market: UserInputError
    if to_us <= from_us:
        raise UserInputError(f"--to {iso(to_us)} must be after --from {iso(from_us)}")
    champions = champions or CHAMPIONS
    everything = sorted(decision_history(conn, market.key), key=lambda r: (r.as_of_us, r.id or 0))
    chosen = [i for i, r in enumerate(everything) if r.bar_ts_us is not None and from_us <= r.bar_ts_us < to_us]
    records = [everything[i] for i in chosen]
    before = {i: (everything[i - 1].position if i > 0 else 0) for i in chosen}  # the paper position held going in
    differences: list[Difference] = []
    vectors: dict[str, tuple[dict[int, int], object]] = {}  # fingerprint -> (row of each bar, frame)

    def snapshot(record: DecisionRecord):
        if record.fingerprint not in vectors:
            spec = load_registered_feature_set(conn, record.fingerprint)
            bars = [r.bar_ts_us for r in records if r.fingerprint == record.fingerprint]
            frame = load_vectors(conn, market, spec, min(bars), max(bars) + 1).frame
            vectors[record.fingerprint] = ({int(t): j for j, t in enumerate(frame.ts.tolist())}, frame)
        rows, frame = vectors[record.fingerprint]
        row = rows.get(int(record.bar_ts_us))
        return None if row is None else (np.array(frame.values[row]), np.array(frame.missing[row]))

    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, record in enumerate(records):
        if record.bar_ts_us is None or record.fingerprint is None:
            continue
        got = snapshot(record)
        if got is None:
            differences.append(Difference(record.id, record.as_of_us, record.bar_ts_us, "snapshot", "decided",
                                          "no stored snapshot"))
            continue
        found[i] = got
        sha = safety.vector_sha256(got[0])
        if record.vector_sha256 != sha:
            differences.append(Difference(record.id, record.as_of_us, record.bar_ts_us, "vector_sha256",
                                          record.vector_sha256, sha))

    compared = 0
    reg = None
    for stretch in _stretches(records):
        stretch = [i for i in stretch if i in found]
        if not stretch:
            continue
        first = records[stretch[0]]
        if reg is None:
            reg = registry() if callable(registry) else registry
        champion = champions.get(reg, market, int(first.champion_version))
        statistics = champion.ood.statistics if champion.ood is not None else None
        matrix = np.stack([safety.impute(found[i][0], found[i][1], statistics) for i in stretch])
        taken = rollout(champion.policy.on(first.fingerprint), matrix, before[chosen[stretch[0]]])
        for i, position in zip(stretch, taken.tolist(), strict=True):
            compared += 1
            record = records[i]
            if POSITION_NAMES[int(position)] != record.action:
                differences.append(Difference(record.id, record.as_of_us, record.bar_ts_us, "action", record.action,
                                              POSITION_NAMES[int(position)]))
    held = sum(1 for r in records if r.reason_codes)
    differences.sort(key=lambda d: (d.as_of_us, d.decision_id or 0, d.field))
    return ReplayResult(market.key, int(from_us), int(to_us), len(records), compared, held, differences)
