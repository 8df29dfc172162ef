"""Worker heartbeats in the broker's Redis, so that a run can tell a worker that died in the middle of a step.

A Celery worker killed while it runs a step never reports it, and the step's task (acknowledged when the
worker took it) is gone: the run would wait for ever. Each `rl-lifecycle worker` node therefore sets a
key `rl_lifecycle:worker:<node>` every `BEAT_SECONDS` with a time to live of `TTL_SECONDS`, from a thread
of its own (a solo-pool worker's main thread is busy with the step and cannot answer Celery's own ping).
The run's executor (`orchestration/celery.py`) fails a started step whose worker's key has expired. Workers
connect the beat through `cluster/celery_worker.py`, which their Celery config imports.
Redis brokers only: with another broker `alive` says None (unknown) and nothing is watched.
"""

from __future__ import annotations

import logging
import threading

BEAT_SECONDS = 3.0
TTL_SECONDS = 15
_KEY = "rl_lifecycle:worker:{node}"
_log = logging.getLogger(__name__)


def _redis(url: str):
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def alive(url: str, node: str) -> bool | None:
    """Whether `node` has beaten within the last TTL_SECONDS; None when the broker is not Redis."""
    client = _redis(url)
    if client is None:
        return None
    try:
        with client:
            return bool(client.exists(_KEY.format(node=node)))
    except Exception as exc:  # the broker unreachable a moment: unknown, the next check asks again
        _log.warning("heartbeat of %s unknown: %s", node, exc)
        return None


class Heartbeat:
    """Beats for `node` until stopped (a daemon thread: it dies with the worker, which is the point)."""

    def __init__(self, url: str, node: str):
        self.url, self.node, self._stop = url, node, threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{node}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = _redis(self.url)
        if client is None:
            return
        key = _KEY.format(node=self.node)
        while True:
            try:
                client.set(key, "1", ex=TTL_SECONDS)
            except Exception as exc:  # a broker blip: the next beat tries again
                _log.warning("heartbeat of %s: %s", self.node, exc)
            if self._stop.wait(BEAT_SECONDS):
                break
        try:
            client.delete(key)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=BEAT_SECONDS + 5)


_BEATING: list[Heartbeat] = []


def connect_worker_signals() -> None:
    """Start beating when the worker is ready, stop (deleting the key) when it shuts down cleanly."""
    from celery.signals import worker_ready, worker_shutdown

    @worker_ready.connect(weak=False)
    def _start(sender=None, **_):
        _BEATING.append(Heartbeat(sender.app.conf.broker_url, sender.hostname).start())

    @worker_shutdown.connect(weak=False)
    def _stop(**_):
        while _BEATING:
            _BEATING.pop().stop()

