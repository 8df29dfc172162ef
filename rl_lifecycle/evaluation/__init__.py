"""Walk-forward evaluation: folds, fold backtests in NautilusTrader, metrics, reports (no Dagster)."""
