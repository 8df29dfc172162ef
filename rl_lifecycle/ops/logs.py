"""JSON log lines: one structured line per event, for log shippers (alerts, metrics, the paper decider)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


def json_line(event: str, **fields) -> str:
    """One structured log line: {"ts": ISO-8601 UTC, "event": ..., **fields}, keys in a stable order."""
    record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
    return json.dumps(record, default=str, sort_keys=False, separators=(",", ":"))


def log_event(log: logging.Logger, event: str, level: int = logging.INFO, **fields) -> str:
    """Log `json_line(event, **fields)` and return it."""
    line = json_line(event, **fields)
    log.log(level, line)
    return line
