"""`rl-lifecycle dev`: the Dagster webserver and daemon as two supervised child processes.

`dagster dev` is superseded by `dg dev` (dagster-dg-cli, a `dg` project layout this repo does not
have), warns about the repo's dagster.yaml in its working directory, and on Ctrl-C/SIGTERM waits up
to 60 s per child (open UI connections, daemon threads joined with 30 s timeouts). So `dev` runs the
two long-lived processes itself, as `dagster dev` does, and stops them within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rl_lifecycle.orchestration import SITECUSTOMIZE
from rl_lifecycle.orchestration.dagster_internals import DAEMON_MODULE
from rl_lifecycle.orchestration.instance import REPO_ROOT, prepare_dagster_env
from rl_lifecycle.settings import Settings, is_set

DEV_STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL to whatever of a child's process group is left
_POLL_S = 0.2
UI_ADDRESS_FILE = "ui_address.json"  # under DAGSTER_HOME while `dev` runs: where its UI is


def ui_address_path(settings: Settings) -> Path:
    return settings.dagster_home / UI_ADDRESS_FILE


def dagster_ui_url(settings: Settings) -> str:
    """The Dagster UI's address for links: RL_DAGSTER_UI_URL when set; else the address of the `rl-lifecycle
    dev` running on this state dir (e.g. `DEV_PORT=3001 make dev`); else the default."""
    if is_set("RL_DAGSTER_UI_URL"):
        return settings.dagster_ui_url.rstrip("/")
    try:
        recorded = json.loads(ui_address_path(settings).read_text())
        os.kill(int(recorded["pid"]), 0)  # that dev server still runs
        return str(recorded["url"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        return settings.dagster_ui_url.rstrip("/")

def dev_child_env(settings: Settings) -> dict[str, str]:
    """The environment of the dev server's children: this one, plus the warning filter on PYTHONPATH."""
    hooks = settings.dagster_home / "pyhooks"
    hooks.mkdir(parents=True, exist_ok=True)
    site = hooks / "sitecustomize.py"
    if not site.exists() or site.read_text() != SITECUSTOMIZE:
        site.write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), *filter(None, [env.get("PYTHONPATH")])])
    return env


def dev_commands(port: int, host: str) -> dict[str, list[str]]:
    workspace = str(REPO_ROOT / "workspace.yaml")
    python = sys.executable
    return {
        "dagster-webserver": [python, "-m", "dagster_webserver", "-w", workspace, "-h", host, "-p", str(port)],
        "dagster-daemon": [python, "-m", DAEMON_MODULE, "run", "-w", workspace],
    }


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_groups(procs: list, grace_s: float = DEV_STOP_GRACE_S) -> None:
    """SIGTERM each child's process group (the child and what it started), SIGKILL what is left after
    `grace_s`, and reap the children."""
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_alive(p.pid) for p in procs):
        for proc in procs:
            proc.poll()  # reap, so that an exited leader does not keep its group "alive" as a zombie
        time.sleep(0.05)
    for proc in procs:
        if _group_alive(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _browsable(host: str) -> str:
    """The address a browser uses for a server listening on `host` (wildcards: this machine; IPv6 in brackets)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def serve_dev(settings: Settings, database_url: str, port: int, host: str = "127.0.0.1", echo=print) -> int:
    """Run the Dagster webserver and daemon until one exits or SIGINT/SIGTERM/SIGHUP arrives.

    Each child leads its own process group (its code servers and run workers belong to it), so a
    terminal's Ctrl-C reaches only this process, which then stops both groups within seconds.
    Returns 0 after a requested stop, 1 when a child died on its own.
    """
    home = prepare_dagster_env(settings, database_url)
    env = dev_child_env(settings)
    # Run links in alerts point at this webserver unless RL_DAGSTER_UI_URL says otherwise; so do the links
    # other commands on this state dir print (`backfill`), through the address file.
    env.setdefault("RL_DAGSTER_UI_URL", f"http://{_browsable(host)}:{port}")
    address = ui_address_path(settings)
    address.write_text(json.dumps({"url": f"http://{_browsable(host)}:{port}", "pid": os.getpid()}))
    previous = {}

    def stop(signum, _frame):
        raise _Stop(signum)

    procs: dict[str, subprocess.Popen] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, stop)
        for name, command in dev_commands(port, host).items():
            # cwd: DAGSTER_HOME, the one place the instance config is read from (not the repo's copy)
            procs[name] = subprocess.Popen(command, cwd=home, env=env, start_new_session=True)
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    echo(f"{name} exited with code {proc.returncode}; stopping the others")
                    return 1
            time.sleep(_POLL_S)
    except _Stop as requested:
        echo(f"{signal.Signals(requested.signum).name}: stopping the Dagster webserver and daemon")
        return 0
    finally:
        # no second signal may interrupt the shutdown itself
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        stop_process_groups(list(procs.values()))
        address.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
