"""Market keys: the one place that maps `BTCUSDT-1h` to a pair and an interval, and back; and the
`MARKET|WINDOW` partition keys built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.windows import Window, WindowScheme

# Interval name -> length in microseconds (the timestamp unit used throughout the core).
MINUTE_US = 60_000_000
INTERVALS: dict[str, int] = {
    "1m": MINUTE_US,
    "3m": 3 * MINUTE_US,
    "5m": 5 * MINUTE_US,
    "15m": 15 * MINUTE_US,
    "30m": 30 * MINUTE_US,
    "1h": 60 * MINUTE_US,
    "2h": 120 * MINUTE_US,
    "4h": 240 * MINUTE_US,
    "6h": 360 * MINUTE_US,
    "12h": 720 * MINUTE_US,
    "1d": 1440 * MINUTE_US,
}

_PAIR_RE = re.compile(r"[A-Z0-9]{2,20}")
_PAIR_SEPARATORS = re.compile(r"[/\-_: ]")


def normalize_pair(raw: str) -> str:
    """`BTC/USDT`, `btc-usdt`, `BTC_USDT` -> `BTCUSDT`; anything else is refused."""
    if raw is None or not str(raw).strip():
        raise UserInputError("pair is empty; expected e.g. BTCUSDT or BTC/USDT")
    # before upper(): Unicode case mapping turns 'ß' into 'SS' and 'ı' into 'I', another market's key
    foreign = sorted({c for c in str(raw).strip() if not c.isascii()})
    if foreign:
        raise UserInputError(
            f"pair {raw!r} is invalid: only ASCII letters A-Z, a-z and digits 0-9 (with / - _ : or space "
            f"between), not {' '.join(map(repr, foreign))}"
        )
    candidate = _PAIR_SEPARATORS.sub("", str(raw).strip()).upper()
    if not _PAIR_RE.fullmatch(candidate):
        raise UserInputError(
            f"pair {raw!r} is invalid: after removing separators it must be 2-20 characters of A-Z and 0-9"
        )
    return candidate


def normalize_interval(raw: str) -> str:
    value = (raw or "").strip()
    if value not in INTERVALS:
        raise UserInputError(f"interval {raw!r} is invalid; expected one of {' '.join(INTERVALS)}")
    return value


@dataclass(frozen=True, order=True)
class Market:
    pair: str
    interval: str

    @classmethod
    def of(cls, pair: str, interval: str) -> Market:
        return cls(normalize_pair(pair), normalize_interval(interval))

    @classmethod
    def parse(cls, key: str) -> Market:
        """Parse a market key such as `BTCUSDT-1h` (also `BTC/USDT-1h`)."""
        text = (key or "").strip()
        pair, sep, interval = text.rpartition("-")
        if not sep or not pair:
            raise UserInputError(f"market key {key!r} is invalid; expected PAIR-INTERVAL such as BTCUSDT-1h")
        return cls.of(pair, interval)

    @property
    def key(self) -> str:
        return f"{self.pair}-{self.interval}"

    @property
    def interval_us(self) -> int:
        return INTERVALS[self.interval]

    def __str__(self) -> str:
        return self.key


# -- partition keys: `MARKET|WINDOW`, e.g. `BTCUSDT-1h|2024-03-01` --------------------------------
# Dagster orders a multi-partition key's dimensions by name (market, window); the core, the CLI and
# the alerts read and write the same text, so it is built and split here only.
PARTITION_SEPARATOR = "|"


def partition_key(market: Market | str, window: Window | str) -> str:
    """`MARKET|WINDOW` of a market (or its key) and a window (or its key)."""
    return f"{market}{PARTITION_SEPARATOR}{window}"


def split_partition_key(key: str) -> tuple[str, str]:
    """`BTCUSDT-1h|2024-03-01` -> ("BTCUSDT-1h", "2024-03-01"), unvalidated; no separator is refused."""
    text = (key or "").strip()
    market_key, sep, window_key = text.partition(PARTITION_SEPARATOR)
    if not sep:
        raise UserInputError(f"partition {key!r} is invalid; expected MARKET|WINDOW such as BTCUSDT-1h|2024-03-01")
    return market_key, window_key


def parse_partition_key(key: str, scheme: WindowScheme) -> tuple[Market, Window]:
    """`BTCUSDT-1h|2024-03-01` -> (Market, Window), with clear errors for malformed keys."""
    market_key, window_key = split_partition_key(key)
    return Market.parse(market_key), scheme.parse(window_key)


def market_of(key: str | None) -> str | None:
    """The market key of a `MARKET|WINDOW` partition key (or of a bare market key); None when it names no market."""
    if not key:
        return None
    try:
        return Market.parse(key.partition(PARTITION_SEPARATOR)[0]).key
    except UserInputError:
        return None
