"""The partitions: market (dynamic) x window (time), their mappings and backfill policies, and run tags.

The text of a key (`MARKET|WINDOW`) is the core's (`rl_lifecycle.markets.keys`); this module binds it
to the deployment's window scheme (RL_WINDOW_CADENCE, RL_WINDOW_START) and to Dagster."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import (
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    DimensionPartitionMapping,
    DynamicPartitionsDefinition,
    IdentityPartitionMapping,
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    TimeWindowPartitionMapping,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.keys import parse_partition_key as parse_key_text
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import Window, WindowScheme

MARKET_DIMENSION = "market"
WINDOW_DIMENSION = "window"

_settings = load_settings()
WINDOW_SCHEME = WindowScheme(_settings.window_cadence)


def _window_partitions(scheme: WindowScheme, start: str) -> TimeWindowPartitionsDefinition:
    # end_offset=1: the current, still-growing window is a partition too (live features, inference).
    if scheme.cadence == "monthly":
        return MonthlyPartitionsDefinition(start_date=start, end_offset=1)
    if scheme.cadence == "weekly":
        return WeeklyPartitionsDefinition(start_date=start, day_offset=1, end_offset=1)  # Monday, as WindowScheme
    return DailyPartitionsDefinition(start_date=start, end_offset=1)


market_partitions = DynamicPartitionsDefinition(name=MARKET_DIMENSION)
window_partitions = _window_partitions(WINDOW_SCHEME, _settings.window_start)
market_window_partitions = MultiPartitionsDefinition(
    {MARKET_DIMENSION: market_partitions, WINDOW_DIMENSION: window_partitions}
)


# Backfills: the data assets take a range of one market's windows per run, so run start-up is paid
# once per range instead of once per window; models and reports train per window, one per run.
WINDOWS_PER_RUN = 120
WINDOW_RANGE_PER_RUN = BackfillPolicy.multi_run(max_partitions_per_run=WINDOWS_PER_RUN)
ONE_WINDOW_PER_RUN = BackfillPolicy.multi_run(max_partitions_per_run=1)


def same_market_and_previous_windows(previous: int) -> MultiPartitionMapping:
    """Depend on the same market's window and the `previous` windows before it."""
    return MultiPartitionMapping(
        {
            MARKET_DIMENSION: DimensionPartitionMapping(MARKET_DIMENSION, IdentityPartitionMapping()),
            WINDOW_DIMENSION: DimensionPartitionMapping(WINDOW_DIMENSION, TimeWindowPartitionMapping(start_offset=-previous)),
        }
    )


def multi_partition_key(market: Market, window: Window | str) -> MultiPartitionKey:
    return MultiPartitionKey({MARKET_DIMENSION: market.key, WINDOW_DIMENSION: str(window)})


def parse_partition_key(key: str | MultiPartitionKey) -> tuple[Market, Window]:
    """`BTCUSDT-1h|2024-03-01` -> (Market, Window) in this deployment's window scheme."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return Market.parse(dims[MARKET_DIMENSION]), WINDOW_SCHEME.parse(dims[WINDOW_DIMENSION])
    return parse_key_text(key, WINDOW_SCHEME)


def partitions_of_run(keys: Sequence[str | MultiPartitionKey]) -> list[tuple[str, Market, Window]]:
    """The partitions a run targets as (key, market, window), by market then window: one partition,
    or the range of a backfill run (windows ascending, so each window's warmup is stored before it)."""
    parsed = [(key, *parse_partition_key(key)) for key in keys]
    return sorted(parsed, key=lambda p: (p[1].key, p[2].start))


def first_window() -> Window:
    """The first `window` partition (RL_WINDOW_START), as a Window."""
    return WINDOW_SCHEME.parse(window_partitions.get_first_partition_key())


def missing_market_partitions(instance: DagsterInstance, market_keys: Sequence[str]) -> list[str]:
    """The market keys (in order, once each) that are not `market` partitions yet."""
    existing = set(instance.get_dynamic_partitions(MARKET_DIMENSION))
    return [k for k in dict.fromkeys(market_keys) if k not in existing]


def sync_market_partitions(instance: DagsterInstance, market_keys: Sequence[str]) -> list[str]:
    """Add markets missing from the `market` dynamic partition dimension; returns the keys added."""
    missing = missing_market_partitions(instance, market_keys)
    if missing:
        instance.add_dynamic_partitions(MARKET_DIMENSION, missing)
    return missing


# -- run tags ----------------------------------------------------------------------------------------
PARTITION_TAG = "dagster/partition"
PROMOTION_MARKET_TAG = "promotion/market"  # dagster.yaml: one lifecycle_job run per market at a time
PAPER_MARKET_TAG = "paper_decisions/market"  # the market of a (not partitioned) paper decision run
TRIGGER_TAG = "rl_lifecycle/trigger"  # which sensor or schedule requested a run
DRIFT_TAG = "rl_lifecycle/drift_reason"  # why online learning retrained a window early (drift)
SOURCE_TAG = "rl_lifecycle/source"  # `cli` for backfills submitted by `rl-lifecycle backfill`
