"""Dagster backfills from the CLI: a backfill record the daemon runs and the UI's backfill page shows.

Dagster has no public Python API that launches a backfill. The UI's "Materialize partitions" dialog
calls the GraphQL mutation `launchPartitionBackfill`, which for an asset selection builds
`PartitionBackfill.from_asset_partitions(...)` over the workspace's asset graph and stores it with
`instance.add_backfill(...)` (dagster_graphql/implementation/execution/backfill.py). This module builds
the same kind of record, `PartitionBackfill.from_asset_graph_subset(...)` with exactly the requested
partitions of every selected asset, against the code location's asset graph (loaded through a code
server, as the webserver does), and stores it the same way, so it works without a running webserver: the daemon (`make dev`) picks the backfill
up, launches its runs following each asset's backfill policy (data assets take a range of a market's
windows per run, models one window per run) and the UI lists it under Runs -> Backfills.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance, Definitions

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import market_of
from rl_lifecycle.orchestration.launcher import asset_selection, code_location
from rl_lifecycle.orchestration.partitions import PROMOTION_MARKET_TAG, SOURCE_TAG, missing_market_partitions
from rl_lifecycle.settings import load_settings


@dataclass(frozen=True)
class SubmittedBackfill:
    backfill_id: str
    asset_names: tuple[str, ...]
    partition_keys: tuple[str, ...]

    @property
    def url(self) -> str:
        """On the configured UI: RL_DAGSTER_UI_URL, else the running `rl-lifecycle dev`'s address, else :3000."""
        from rl_lifecycle.orchestration.dev_server import dagster_ui_url

        return f"{dagster_ui_url(load_settings())}/runs/b/{self.backfill_id}"


def check_markets_registered(instance: DagsterInstance, partition_keys: Sequence[str]) -> None:
    missing = missing_market_partitions(instance, sorted({market_of(key) for key in partition_keys}))
    if missing:
        raise UserInputError(
            f"market {', '.join(missing)} is not a `market` partition; register it first with "
            f"`rl-lifecycle market add PAIR INTERVAL` (or ingest its candles)"
        )


def submit_backfill(
    instance: DagsterInstance,
    defs: Definitions,
    asset_names: Sequence[str],
    partition_keys: Sequence[str],
    title: str | None = None,
    description: str | None = None,
) -> SubmittedBackfill:
    """Store a Dagster asset backfill of these assets over these `MARKET|WINDOW` partitions (validated
    before anything is written); the daemon runs it."""
    from dagster import partition_loading_context

    from rl_lifecycle.orchestration.dagster_internals import (
        AssetGraphSubset,
        CachingInstanceQueryer,
        PartitionBackfill,
        datetime_from_timestamp,
        get_current_timestamp,
        make_new_backfill_id,
    )


    selection = asset_selection(defs, asset_names)
    keys = sorted(dict.fromkeys(partition_keys))
    if not keys:
        raise UserInputError("no partitions to backfill")
    check_markets_registered(instance, keys)
    markets = sorted({market_of(key) for key in keys})
    tags = {SOURCE_TAG: "cli"}
    if len(markets) == 1:
        # decisions for one market wait for each other (dagster.yaml's per-market tag limit)
        tags[PROMOTION_MARKET_TAG] = markets[0]

    with code_location(instance) as launcher:
        asset_graph = launcher.context.asset_graph
        missing = [n for n in selection if not asset_graph.has(AssetKey(n))]
        if missing:
            raise UserInputError(f"asset(s) {', '.join(missing)} are not in the code location; restart `make dev`?")
        timestamp = get_current_timestamp()
        queryer = CachingInstanceQueryer(
            instance=instance, asset_graph=asset_graph, loading_context=launcher.context,
            evaluation_time=datetime_from_timestamp(timestamp),
        )
        # Exactly these partitions of every selected asset. (`from_asset_partitions`, the UI dialog's
        # path, would also take the downstream windows a dataset's span maps to, past the range.)
        with partition_loading_context(effective_dt=datetime_from_timestamp(timestamp), dynamic_partitions_store=instance):
            target = AssetGraphSubset(partitions_subsets_by_asset_key={
                AssetKey(n): asset_graph.get(AssetKey(n)).partitions_def.subset_with_partition_keys(keys)
                for n in selection
            })
            backfill = PartitionBackfill.from_asset_graph_subset(
                backfill_id=make_new_backfill_id(),
                backfill_timestamp=timestamp,
                tags=tags,
                dynamic_partitions_store=queryer,
                asset_graph_subset=target,
                title=title,
                description=description,
                run_config=None,
            )
        instance.add_backfill(backfill)
    return SubmittedBackfill(backfill.backfill_id, tuple(selection), tuple(keys))
