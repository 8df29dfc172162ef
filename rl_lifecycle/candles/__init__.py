"""Candles: the canonical frame, synthetic generation, file import, validation and storage."""
