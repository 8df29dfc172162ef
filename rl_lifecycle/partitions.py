"""The one partitions module: market (dynamic) x window (time), and parsing of their keys."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from dagster import (
    BackfillPolicy,
    BetaWarning,
    DailyPartitionsDefinition,
    DimensionPartitionMapping,
    DynamicPartitionsDefinition,
    IdentityPartitionMapping,
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    PreviewWarning,
    TimeWindowPartitionMapping,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets import Market
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import Window, WindowScheme

# The code location relies on features Dagster flags as beta or preview (MultiPartitionMapping,
# backfill policies, partitioned asset checks): every process loading it (CLI, code server, run and
# step workers) would print the same notices, which nobody running it can act on. Every asset and
# check module imports this one first.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)

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


def partition_key(market: Market, window: Window | str) -> MultiPartitionKey:
    return MultiPartitionKey({MARKET_DIMENSION: market.key, WINDOW_DIMENSION: str(window)})


def parse_partition_key(key: str | MultiPartitionKey) -> tuple[Market, Window]:
    """`BTCUSDT-1h|2024-03-01` -> (Market, Window), with clear errors for malformed keys."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return Market.parse(dims[MARKET_DIMENSION]), WINDOW_SCHEME.parse(dims[WINDOW_DIMENSION])
    text = (key or "").strip()
    market_key, sep, window_key = text.partition("|")
    if not sep:
        raise UserInputError(f"partition {key!r} is invalid; expected MARKET|WINDOW such as BTCUSDT-1h|2024-03-01")
    return Market.parse(market_key), WINDOW_SCHEME.parse(window_key)


def run_partitions(keys: Sequence[str | MultiPartitionKey]) -> list[tuple[str, Market, Window]]:
    """The partitions a run targets as (key, market, window), by market then window: one partition,
    or the range of a backfill run (windows ascending, so each window's warmup is stored before it)."""
    parsed = [(key, *parse_partition_key(key)) for key in keys]
    return sorted(parsed, key=lambda p: (p[1].key, p[2].start))
