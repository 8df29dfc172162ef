"""Bad input raised by the core (`UserInputError`) becomes a Dagster `Failure` whose description the UI
and the CLI show as it is: the message that names the field and the value, not a stack trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Failure

from rl_lifecycle.errors import UserInputError


@contextmanager
def user_errors_fail_the_step(partition_key: str | None = None) -> Iterator[None]:
    """Inside: a `UserInputError` fails the step with its message (prefixed with the partition, in a range run)."""
    try:
        yield
    except UserInputError as exc:
        raise Failure(description=f"{partition_key}: {exc}" if partition_key else str(exc)) from exc
