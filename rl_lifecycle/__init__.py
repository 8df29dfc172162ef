"""rl_lifecycle: candles -> TA-Lib feature snapshots -> datasets -> challengers -> promotion."""

__version__ = "0.1.0"
