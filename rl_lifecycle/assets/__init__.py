"""Dagster assets: thin adapters from partitions to the core."""
