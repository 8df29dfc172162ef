"""Imported by every `rl-lifecycle worker` node (`imports` of its Celery config), and only there: it beats."""

from rl_lifecycle.cluster.heartbeat import connect_worker_signals

connect_worker_signals()
