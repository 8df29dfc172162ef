"""`rl-lifecycle dev` (`make dev`): the Dagster UI and daemon start quietly and stop within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RL_LIFECYCLE = Path(sys.executable).with_name("rl-lifecycle")
STARTUP_TIMEOUT_S = 120
SHUTDOWN_LIMIT_S = 10
NOISE = ("dg dev", "is ignored", "will not be used", "BetaWarning", "PreviewWarning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dev_starts_quietly_and_stops_within_seconds(rl_env, tmp_path, stop_signal):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONWARNINGS")} | rl_env
    out_path, err_path = tmp_path / "dev.out", tmp_path / "dev.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # from the repo root, where a dagster.yaml lies (as `make dev` runs it); own session so that
        # this test can clean up whatever is left if the command fails to
        proc = subprocess.Popen([str(RL_LIFECYCLE), "dev", "--port", str(port)], cwd=REPO, env=env,
                                stdout=out, stderr=err, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers(f"http://127.0.0.1:{port}/server_info"):
            assert proc.poll() is None, f"dev exited early ({proc.returncode}):\n{err_path.read_text()}"
            assert time.monotonic() < deadline, f"no /server_info after {STARTUP_TIMEOUT_S}s:\n{err_path.read_text()}"
            time.sleep(0.5)
        time.sleep(3)  # let the daemon and code servers come up as well
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 2, "expected a webserver and a daemon process"

        started = time.monotonic()
        proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=SHUTDOWN_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rl-lifecycle dev still running {SHUTDOWN_LIMIT_S}s after {stop_signal.name}")
        # its children go with it: nothing of the tree may outlive the command
        gone_by = time.monotonic() + 2
        while _alive(tree) and time.monotonic() < gone_by:
            time.sleep(0.1)
        left = _alive(tree)
        elapsed = time.monotonic() - started
        assert not left, f"left running after {stop_signal.name}: {[(p.pid, p.cmdline()) for p in left]}"
        assert elapsed < SHUTDOWN_LIMIT_S, f"shutdown took {elapsed:.1f}s"
        assert proc.returncode in (0, 130, -signal.SIGINT, 143, -signal.SIGTERM), proc.returncode
    finally:
        for p in [psutil.Process(proc.pid)] if proc.poll() is None else []:
            p.kill()
        for p in _alive(tree):
            p.kill()

    stderr = err_path.read_text()
    noisy = [line for line in stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "noise on stderr:\n" + "\n".join(noisy)
