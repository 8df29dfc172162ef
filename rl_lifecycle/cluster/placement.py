"""Where a step ran: the Celery node (`rl-lifecycle worker --name`), the host and the process."""

from __future__ import annotations

import os
import socket


def this_process() -> dict:
    """`{"worker", "host", "pid"}` of this process; `worker` is None outside a worker."""
    from rl_lifecycle.settings import load_settings

    return {"worker": load_settings().worker_name, "host": socket.gethostname(), "pid": os.getpid()}


def worker_label(ran_on: dict | None) -> str | None:
    """The worker's name when it has one, else `host:pid`; None when unrecorded (a report stored before)."""
    if not ran_on:
        return None
    return ran_on.get("worker") or f"{ran_on.get('host')}:{ran_on.get('pid')}"
