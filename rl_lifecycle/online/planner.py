"""Online learning: when a market's window has completed, train, evaluate and decide on it.

Two steps, both from one plain `@sensor` with a JSON cursor of event-log storage ids:

(a) **data**: a new `candles` materialization or observation (the inbox sensor records one per
    partition a dropped file touches) for a *completed* window requests `market_data_job`
    (candles -> feature_snapshots -> training_dataset) for that partition.
(b) **lifecycle**: a new successful `training_dataset` materialization of a completed window whose
    blocking checks passed requests `lifecycle_job` (challenger_model -> fold_report ->
    promotion_decision) for that partition.

**When is a window complete?** When the market's data has reached its end: the newest stored candle
closes (open time + interval) at or after the window's end, and the end is not in the future by the
wall clock. So a window completes when its last bar arrives, not merely when the calendar month
ends; for a session calendar whose window ends on a closed day (a month ending on a weekend for
XNYS), the window completes when the first bar after it arrives. A still-open window (the current
partition, `end_offset=1`) is never requested.

**Only what completed since it last looked, and only once.** The cursor keeps, per market, the newest
completed window the sensor saw on its previous tick (`OnlineCursor.windows`). A tick acts only on
windows from that one on (`acting_horizon`): windows that completed since, and the one it last saw
newest, so candles landing just as it completed are not lost. A market it has never looked at (the
first tick, or a market added since) acts only on its newest completed window. So switching online
learning on after `make run`, or backfilling history, retrains no old window. The lifecycle step
requests at most one partition per market per tick, the newest, and none for a window whose latest
dataset already has a checked challenger trained with the job's spec (`already_trained`: training is
deterministic, the same dataset and spec give the same model).

**Idempotency.** Run keys are derived from the event that triggered them
(`market_data:<partition>:<storage id>`, `lifecycle:<partition>:<storage id>`), so re-evaluating with
an old cursor (a restart, a failed tick) requests the same run keys and Dagster launches each once:
a restart never trains twice for one window. One `training_dataset` materialization trains at most
once. Candle events from runs that carry the data forward themselves (a run that also materializes
`training_dataset`: this sensor's own data runs, the schedule, backfills, `make run`) trigger
nothing in step (a), so the sensor never feeds itself. A `training_dataset` materialization whose
run is still going is left for a later tick (the cursor stops before it): its checks are not known yet.

**Disabled** (`RL_ONLINE_LEARNING_ENABLED` unset or false): the sensor skips with that reason, visible
in the UI, and touches nothing, not even its cursor: turning it on later catches up from where it
stopped. On its very first active evaluation (no cursor) it looks back `FIRST_LOOKBACK_SECONDS`, so
switching it on does not retrain the whole history.

The decisions are pure functions over plain records (`plan_data_requests`, `plan_lifecycle_requests`,
`plan_latest_window_requests`), as qlib's online strategy is plain code any scheduler drives: the
Dagster sensor and schedule (`rl_lifecycle.orchestration.automation.online`) only read the instance and
the database and turn plans into `RunRequest`s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rl_lifecycle.candles.store import candle_coverage
from rl_lifecycle.markets.keys import Market, parse_partition_key, partition_key
from rl_lifecycle.windows import Window, WindowScheme

# the jobs the plans name (defined in `rl_lifecycle.orchestration.jobs`)
DATA_JOB = "market_data_job"
LIFECYCLE_JOB = "lifecycle_job"
EVENTS_PER_TICK = 200  # per event stream; the cursor pages through the rest on the next ticks
FIRST_LOOKBACK_SECONDS = 24 * 3600


# -- cursor -----------------------------------------------------------------------------------------
_STREAMS = ("candles_materialization", "candles_observation", "training_dataset")


@dataclass(frozen=True)
class OnlineCursor:
    """The last event-log storage id handled per stream (0: none yet), and per market the newest completed
    window key seen on the last tick (no entry: never looked at that market)."""

    candles_materialization: int = 0
    candles_observation: int = 0
    training_dataset: int = 0
    windows: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**{k: getattr(self, k) for k in _STREAMS}, "windows": dict(sorted(self.windows.items()))},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> OnlineCursor | None:
        if not text:
            return None
        data = json.loads(text)
        windows = {str(m): str(w) for m, w in (data.get("windows") or {}).items()}
        return cls(**{k: int(data.get(k, 0)) for k in _STREAMS}, windows=windows)

    @classmethod
    def at(cls, storage_id: int) -> OnlineCursor:
        """Everything up to `storage_id` counts as seen."""
        return cls(storage_id, storage_id, storage_id)


# -- plain records the planner works on -------------------------------------------------------------
@dataclass(frozen=True)
class CandleEvent:
    storage_id: int
    partition: str  # "MARKET|WINDOW"
    carried_forward: bool = False  # its run also materializes training_dataset: nothing to request for it


@dataclass(frozen=True)
class DatasetEvent:
    storage_id: int
    partition: str
    run_finished: bool = True
    blocking_checks_passed: bool = True
    drift_reason: str | None = None  # its run was requested for drift: an open window is retrained too


@dataclass(frozen=True)
class PlannedRequest:
    job_name: str
    partition: str
    run_key: str
    reason: str
    market: str | None = None  # set for lifecycle runs: one decision per market at a time
    drift_reason: str | None = None  # requested because the market drifts (the sensor puts it in the run's tags)


def window_complete(window: Window, newest_close_us: int | None, now_us: int) -> bool:
    """The market's data has reached the window's end, and the end is not in the future."""
    return newest_close_us is not None and window.end <= newest_close_us and window.end <= now_us


def latest_complete_window(scheme: WindowScheme, newest_close_us: int | None, now_us: int) -> Window | None:
    """The newest window the market's data (and the wall clock) has reached the end of."""
    return None if newest_close_us is None else scheme.latest_ended(min(newest_close_us, now_us))


def newest_complete_windows(markets: Iterable[str], scheme: WindowScheme, newest_close_us: Mapping[str, int | None],
                            now_us: int) -> dict[str, str]:
    """Market -> key of its newest completed window (markets without one left out): what a tick has seen."""
    out = {}
    for market in markets:
        window = latest_complete_window(scheme, newest_close_us.get(market), now_us)
        if window is not None:
            out[market] = window.key
    return out


def acting_horizon(newest: Mapping[str, str], seen: Mapping[str, str] | None) -> dict[str, str]:
    """Market -> the oldest window key a tick may act on: the newest completed window of the last look
    (`seen`, from the cursor), or for a market never looked at (`seen` None: the first tick) the newest
    completed window now. A window older than that completed before the sensor last looked."""
    seen = seen or {}
    return {market: min(seen.get(market, key), key) for market, key in newest.items()}


def seen_windows(cursor: Mapping[str, str] | None, newest: Mapping[str, str]) -> dict[str, str]:
    """The cursor's `windows` after a tick that saw `newest`."""
    return {**(cursor or {}), **newest}


def _acts_on(horizon: Mapping[str, str], market: str, window: Window) -> bool:
    start = horizon.get(market)
    return start is not None and window.key >= start


def plan_data_requests(
    events: Iterable[CandleEvent],
    scheme: WindowScheme,
    markets: Iterable[str],
    newest_close_us: Mapping[str, int | None],
    now_us: int,
    first_window: str,
    dataset_after: Callable[[str, int], bool],
    latest_candles_event: Callable[[str], int],
    *,
    seen: Mapping[str, str] | None = None,
) -> list[PlannedRequest]:
    """Step (a), on windows from `acting_horizon` on (`seen`: the cursor's `windows`; None: the first tick,
    each market's newest completed window only). For each new candle event of a registered market:
    - its window is complete and its run does not carry the data forward -> request the data job for it
      (run key from the newest such event of the partition);
    - its window is still open -> the window before it may have just completed (its last bar closed
      before the boundary, or arrived with later bars): request it once (`:closed`) if it ever
      received candles and no training dataset newer than its newest candles exists.
    `dataset_after(partition, storage_id)` says whether a training_dataset materialization newer
    than `storage_id` exists for the partition (then the event is already carried forward)."""
    registered = set(markets)
    horizon = acting_horizon(newest_complete_windows(registered, scheme, newest_close_us, now_us), seen)
    direct: dict[str, int] = {}
    edges: set[str] = set()
    for event in events:
        market, window = parse_partition_key(event.partition, scheme)
        if market.key not in registered:
            continue
        newest = newest_close_us.get(market.key)
        if window_complete(window, newest, now_us):
            if not event.carried_forward and _acts_on(horizon, market.key, window):
                direct[event.partition] = max(direct.get(event.partition, 0), event.storage_id)
        else:
            previous = latest_complete_window(scheme, newest, now_us)
            if (previous is not None and previous.start < window.start and previous.key >= first_window
                    and _acts_on(horizon, market.key, previous)):
                edges.add(partition_key(market, previous))
    requests = []
    for partition, storage_id in sorted(direct.items()):
        if not dataset_after(partition, storage_id):
            requests.append(PlannedRequest(
                DATA_JOB, partition, f"market_data:{partition}:{storage_id}",
                f"new candles (event {storage_id}) for completed window {partition}",
            ))
    for partition in sorted(edges - set(direct)):
        latest = latest_candles_event(partition)  # 0: the window never received candles, nothing to carry
        if latest and not dataset_after(partition, latest):
            requests.append(PlannedRequest(
                DATA_JOB, partition, f"market_data:{partition}:closed",
                f"window {partition} completed: the market's data has reached its end",
            ))
    return requests


def plan_lifecycle_requests(
    events: Sequence[DatasetEvent],
    scheme: WindowScheme,
    markets: Iterable[str],
    newest_close_us: Mapping[str, int | None],
    now_us: int,
    cursor_id: int,
    *,
    seen: Mapping[str, str] | None = None,
    already_trained: Callable[[str], bool] | None = None,
) -> tuple[list[PlannedRequest], int]:
    """Step (b): (requests, new cursor id). Events in storage order; the cursor stops before the first
    one whose run is still going (its checks are not known yet). Only the newest handled event of a
    partition counts; a failed blocking check or an open window requests nothing; nor does a window
    older than `acting_horizon` (`seen` as in `plan_data_requests`). Of the rest, each market's newest
    window alone is requested, unless `already_trained(partition)`: its latest dataset already has a
    checked challenger of the job's spec."""
    registered = set(markets)
    horizon = acting_horizon(newest_complete_windows(registered, scheme, newest_close_us, now_us), seen)
    newest_per_partition: dict[str, DatasetEvent] = {}
    new_cursor = cursor_id
    for event in events:
        if not event.run_finished:
            break
        new_cursor = event.storage_id
        newest_per_partition[event.partition] = event
    newest_per_market: dict[str, tuple[Window, str, DatasetEvent]] = {}
    for partition, event in sorted(newest_per_partition.items()):
        market, window = parse_partition_key(partition, scheme)
        if market.key not in registered or not event.blocking_checks_passed:
            continue
        if not window_complete(window, newest_close_us.get(market.key), now_us) and not event.drift_reason:
            continue  # an open window is retrained only when drift asked for its dataset
        if not _acts_on(horizon, market.key, window) and not event.drift_reason:
            continue  # completed before the sensor last looked: history, not news
        if market.key not in newest_per_market or window.start > newest_per_market[market.key][0].start:
            newest_per_market[market.key] = (window, partition, event)
    requests = []
    for market_key, (_, partition, event) in sorted(newest_per_market.items()):
        if already_trained is not None and already_trained(partition):
            continue
        requests.append(PlannedRequest(
            LIFECYCLE_JOB, partition, f"lifecycle:{partition}:{event.storage_id}",
            f"training dataset (event {event.storage_id}) of {'drifting' if event.drift_reason else 'completed'} "
            f"window {partition} passed its checks", market=market_key, drift_reason=event.drift_reason,
        ))
    return requests, new_cursor


# -- drift: retrain the latest window before it closes ------------------------------------------------
def plan_drift_requests(signals: Iterable, scheme: WindowScheme, first_window: str) -> list[PlannedRequest]:
    """For each market that drifts (`decisions.drift.DriftSignal`: the OOD share of its champion's paper
    decisions has stayed at or above the threshold for the configured bars), the data job for the window of
    its newest decided bar, open or not (run key `drift:<partition>:<episode start>`: one request per drift
    episode, however many ticks see it). Its training dataset, once its checks pass, is retrained and decided
    on like a completed window's (`plan_lifecycle_requests` with the event's `drift_reason`)."""
    requests = []
    for signal in sorted(signals, key=lambda s: s.market):
        market = Market.parse(signal.market)
        window = scheme.containing(signal.last_bar_us)
        if window.key < first_window:
            continue
        partition = partition_key(market, window)
        requests.append(PlannedRequest(
            DATA_JOB, partition, f"drift:{partition}:{signal.since_us}", signal.reason, drift_reason=signal.reason,
        ))
    return requests


# -- the schedule: the latest closed window of every market ----------------------------------------
def plan_latest_window_requests(
    market_keys: Iterable[str], scheme: WindowScheme, at_us: int, first_window: str
) -> list[PlannedRequest]:
    window = scheme.latest_ended(at_us)
    if window.key < first_window:
        return []
    return [
        PlannedRequest(DATA_JOB, partition_key(m, window), partition_key(m, window), f"latest closed window {window.key} of {m}")
        for m in sorted(market_keys)
    ]


def newest_candle_closes(conn) -> dict[str, int]:
    """Market key -> close time (epoch us) of its newest stored candle: how far its data has reached."""
    return {market.key: coverage.last_ts + market.interval_us for market, coverage in candle_coverage(conn).items()}
