"""Dagster asset checks: the blocking leakage, determinism and dataset gates."""
