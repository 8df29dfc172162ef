"""Sensors for live ingestion: the candle inbox, and the live feed of synthetic markets.

Both only write candles (and the inbox, alerts). What they wrote is recorded as `AssetObservation`s of the `candles` asset,
one per (market, window) partition that received candles, with metadata `source`, `file`, `rows`:
a downstream sensor reads them with `instance.fetch_observations(AssetRecordsFilter(
asset_key=AssetKey("candles"), after_storage_id=cursor), limit=..., ascending=True)` and keys its
runs on the partition and the storage id.

A file the inbox rejects or refuses raises one `inbox_rejected` alert (`rl_lifecycle.ops.alerts`), keyed
per dropped file, so a refused file looked at again on later ticks alerts once; it shows in
`rl-lifecycle status` and is POSTed like the other alerts. Importing a file of the same name into the
same market resolves it.
"""

from __future__ import annotations

import json

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from rl_lifecycle.candles.inbox import (
    IMPORTED,
    REFUSED,
    FeedOutcome,
    InboxOutcome,
    feed_synthetic_markets,
    process_inbox,
)
from rl_lifecycle.candles.limits import IntakeLimits
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.ops.alerts import inbox_alert, load_alert_config, record_alert, resolve_inbox_alerts
from rl_lifecycle.orchestration.partitions import (
    WINDOW_SCHEME,
    first_window,
    market_partitions,
    missing_market_partitions,
    multi_partition_key,
    window_partitions,
)
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import utc_now_us

CANDLES = AssetKey("candles")
INBOX_FILES_PER_TICK = 20  # the rest waits for the next tick: a tick must end well within its timeout
LIVE_FEED_BARS_PER_TICK = 50_000  # a market far behind catches up over several ticks


def _partition_events(
    context: SensorEvaluationContext, touched: list[tuple[str, dict[str, int], dict]]
) -> tuple[list[AssetObservation], list]:
    """Observations of `candles` for every (market, window) written, and the dynamic-partition request
    that adds markets not yet in the `market` partitions. Windows outside the `window` partitions
    (before RL_WINDOW_START) are stored but have no partition to observe: they are logged."""
    missing = missing_market_partitions(context.instance, [market_key for market_key, windows, _ in touched if windows])
    events = []
    for market_key, windows, metadata in touched:
        for window_key, rows in sorted(windows.items()):
            if not window_partitions.has_partition_key(window_key):
                context.log.info(f"{market_key}: {rows} candles in window {window_key}, which is not a partition")
                continue
            events.append(
                AssetObservation(
                    asset_key=CANDLES,
                    partition=multi_partition_key(Market.parse(market_key), window_key),
                    metadata={**metadata, "rows": MetadataValue.int(rows)},
                )
            )
    requests = [market_partitions.build_add_request(missing)] if missing else []
    return events, requests


def _seen_from_cursor(cursor: str | None) -> dict[str, list]:
    """The files the inbox saw settling on earlier ticks (size, mtime, inode, when): the sensor's cursor."""
    try:
        seen = json.loads(cursor or "{}").get("settling", {})
    except (ValueError, AttributeError):
        return {}
    return seen if isinstance(seen, dict) else {}


def _alert_rejections(conn, outcomes: list[InboxOutcome]) -> int:
    """One alert per rejected or refused file (a file seen again inserts nothing); an imported file resolves
    the open alerts of its name in its market. Returns how many alerts are new."""
    ui_url = load_alert_config().ui_url
    new = 0
    for outcome in outcomes:
        if outcome.status == IMPORTED:
            resolve_inbox_alerts(conn, outcome.market, outcome.file)
            continue
        summary = outcome.describe()
        if outcome.status == REFUSED:
            summary = f"{summary}\n(left in place: fix the directory named above; this file alerts once)"
        if record_alert(conn, inbox_alert(outcome.market, outcome.file, outcome.signature, summary,
                                          ui_url=ui_url)) is not None:
            new += 1
    return new


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,  # dropping a file must be enough; no click needed
    description=(
        "Imports candle files dropped into $RL_HOME/inbox/<MARKET>/ (CSV or Parquet) through the same "
        "validation and limits as `rl-lifecycle ingest`: good files move to imported/, bad ones to rejected/ "
        "with a report and nothing written. Write NAME.partial and rename it when complete; a file is taken "
        "once unchanged for RL_INBOX_SETTLE_SECONDS over two ticks. Links and other non-regular entries are "
        "rejected unread. Records an observation of `candles` per window that received candles, and raises one "
        "alert per rejected file (shown by `rl-lifecycle status`)."
    ),
)
def inbox_sensor(context: SensorEvaluationContext, database: PostgresResource) -> SensorResult | SkipReason:
    settings = load_settings()
    inbox_dir = settings.inbox_dir
    seen = _seen_from_cursor(context.cursor)
    with database.connect() as conn:
        outcomes: list[InboxOutcome] = process_inbox(
            conn, inbox_dir, max_files=INBOX_FILES_PER_TICK, scheme=WINDOW_SCHEME, first_window=first_window(),
            settle_seconds=settings.inbox_settle_seconds, seen=seen, limits=IntakeLimits.from_settings(settings),
        )
        alerted = _alert_rejections(conn, outcomes)
    context.update_cursor(json.dumps({"settling": seen}, sort_keys=True))
    settling = (f"; {len(seen)} file(s) settling (taken once unchanged for {settings.inbox_settle_seconds} s "
                "over two ticks)") if seen else ""
    if not outcomes:
        return SkipReason(f"no new candle files in {inbox_dir}/<MARKET>/{settling}")
    for outcome in outcomes:
        if outcome.status == IMPORTED:
            context.log.info(outcome.describe())
        else:
            context.log.warning(outcome.describe())
    touched = [
        (o.market, o.windows, {"source": MetadataValue.text("inbox"), "file": MetadataValue.text(o.file),
                               "stored_as": MetadataValue.path(o.moved_to or "")})
        for o in outcomes
        if o.status == IMPORTED
    ]
    events, requests = _partition_events(context, touched)
    imported = [o for o in outcomes if o.status == IMPORTED]
    refused = [o for o in outcomes if o.status == REFUSED]
    rejected = len(outcomes) - len(imported) - len(refused)
    unread = [o for o in outcomes if o.not_regular]
    summary = (
        f"inbox: {len(imported)} file(s) imported ({sum(o.rows_written for o in imported)} candles written), "
        f"{rejected} rejected"
        + (f" ({len(unread)} not a regular file, not read: "
           + ", ".join(f"{o.market or '<inbox>'}/{o.file} is {o.not_regular}" for o in unread[:5])
           + (", ..." if len(unread) > 5 else "") + ")" if unread else "")
        + (f", {len(refused)} refused and left in place ({'; '.join(o.problems[0] for o in refused[:3])})"
           if refused else "")
        + (f"; {alerted} new alert(s)" if alerted else "")
        + f"; {len(events)} `candles` partition(s) observed{settling}"
    )
    context.log.info(summary)
    # No run is requested here (downstream runs are the online-learning sensor's). Without a skip reason
    # Dagster would label this tick "Sensor function returned an empty result"; the summary says what happened.
    return SensorResult(asset_events=events, dynamic_partitions_requests=requests, skip_reason=summary)


@sensor(
    minimum_interval_seconds=60,
    # Off by default: it writes candles every minute for every synthetic market; a demo turns it on.
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Live feed for synthetic markets: appends the bars that have closed since each market's last "
        "stored candle (the same bars a full regeneration gives). Records an observation of `candles` "
        "per window that received bars."
    ),
)
def live_feed_sensor(context: SensorEvaluationContext, database: PostgresResource) -> SensorResult | SkipReason:
    now_us = utc_now_us()
    with database.connect() as conn:
        outcomes: list[FeedOutcome] = feed_synthetic_markets(
            conn, now_us, max_bars=LIVE_FEED_BARS_PER_TICK, scheme=WINDOW_SCHEME
        )
    if not outcomes:
        return SkipReason("no synthetic market has a newly closed bar")
    for outcome in outcomes:
        context.log.info(
            f"{outcome.market}: appended {outcome.rows_written} closed bars; windows: "
            + ", ".join(f"{k} ({n})" for k, n in sorted(outcome.windows.items()))
        )
    touched = [(o.market, o.windows, {"source": MetadataValue.text("live_feed")}) for o in outcomes]
    events, requests = _partition_events(context, touched)
    summary = (
        f"live feed: appended {sum(o.rows_written for o in outcomes)} closed bars to {len(outcomes)} synthetic "
        f"market(s); {len(events)} `candles` partition(s) observed"
    )
    return SensorResult(asset_events=events, dynamic_partitions_requests=requests, skip_reason=summary)
