"""The model gates' outcome, kept on the model version it concerns, and the `challenger` alias it decides.

**Where the truth lives.** Each blocking check of `challenger_model` (`MODEL_CHECKS`; the asset checks of
the same names run `rl_lifecycle.models.service.check_lineage` / `check_reproducible`) records its
outcome on the version it checked as the MLflow version tag `check.<name>` = `passed` | `failed`
(`record_check`). A version is *checked* when every one of them says `passed` (`checks_passed`); a
version whose checks never ran (a training killed during its checks) carries no such tag.
Promotion reads it (`MODEL_CHECKS_NOT_PASSED`, `rl_lifecycle.promotion`), and so does the alias:
registering a version gives it no alias, and after each recorded check `sync_challenger_alias` points
`challenger` at the checked version of the newest window (the highest version among that window's).
So an unchecked version never holds `challenger`, and a model of an older window that finishes later
never takes it from a newer window's.

Plain code over the registry and a psycopg connection (for the advisory lock): no Dagster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.tracking import CHALLENGER, ModelRegistry, ModelVersionInfo

MODEL_CHECKS = ("model_lineage", "model_reproducible")
PARTITION_TAG = "partition_key"  # model-version tag: the MARKET|WINDOW partition it was trained for
CHECK_TAG_PREFIX = "check."
PASSED, FAILED = "passed", "failed"


@dataclass(frozen=True)
class ModelCheck:
    passed: bool
    summary: str
    details: list[dict]
    version: int | None = None  # the version checked (None: no version trained for the partition)


def check_tag(name: str) -> str:
    return CHECK_TAG_PREFIX + name


def model_checks(info: ModelVersionInfo) -> dict[str, str | None]:
    """Each blocking model check's recorded outcome on the version: `passed`, `failed`, or None (never ran)."""
    return {name: info.tags.get(check_tag(name)) for name in MODEL_CHECKS}


def checks_passed(info: ModelVersionInfo) -> bool:
    """Every blocking model check ran on this version and passed."""
    return all(outcome == PASSED for outcome in model_checks(info).values())


def version_window(info: ModelVersionInfo) -> str:
    """The window key the version was trained for (from its partition tag; '' when unknown): window keys
    are ISO dates, so they order as strings."""
    key = info.tags.get(PARTITION_TAG) or ""
    return key.rsplit("|", 1)[-1] if "|" in key else ""


def newest_checked(versions: Iterable[ModelVersionInfo]) -> ModelVersionInfo | None:
    """Who the `challenger` alias names: the checked version of the newest window, the highest version
    among that window's; None when no version is checked."""
    checked = [v for v in versions if checks_passed(v)]
    return max(checked, key=lambda v: (version_window(v), v.version), default=None)


def _alias_lock_key(market: Market) -> int:
    digest = hashlib.sha256(f"rl_lifecycle.challenger:{market.key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def sync_challenger_alias(conn: psycopg.Connection, registry: ModelRegistry, market: Market,
                          ) -> tuple[int | None, int | None] | None:
    """Point `challenger` at `newest_checked` (removed when no version is checked); returns (before, after)
    when it moved, else None. Under a per-market advisory lock: two runs' checks finishing together
    each read every tag recorded before they took it, so the last one leaves the right alias."""
    key = _alias_lock_key(market)
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        present = registry.aliases(market)
        if present is None:
            return None  # nothing registered for this market
        wanted = newest_checked(registry.versions(market))
        before, after = present.get(CHALLENGER), None if wanted is None else wanted.version
        if before == after:
            return None
        registry.set_alias(market, CHALLENGER, after)
        return before, after
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def record_check(conn: psycopg.Connection, registry: ModelRegistry, market: Market, check: ModelCheck,
                 name: str) -> ModelCheck:
    """Record a model check's outcome on the version it checked (`check.<name>`), then move `challenger`."""
    if name not in MODEL_CHECKS:
        raise ValueError(f"{name!r} is not a blocking model check ({', '.join(MODEL_CHECKS)})")
    if check.version is not None:
        registry.set_version_tag(market, check.version, check_tag(name), PASSED if check.passed else FAILED)
        sync_challenger_alias(conn, registry, market)
    return check


def checked_challenger_exists(registry: ModelRegistry, market: Market, dataset_hash: str, spec_hash: str) -> bool:
    """A version trained on exactly this dataset with this spec passed its blocking checks: training the
    same again would give the same model (training is deterministic), so there is nothing to retrain."""
    return any(
        v.tags.get("dataset_hash") == dataset_hash and v.tags.get("model_spec_hash") == spec_hash and checks_passed(v)
        for v in registry.versions(market)
    )
