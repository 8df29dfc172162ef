"""Shared helpers of the benchmarks (`make bench`): a scratch database, timing, an environment
override, the machine description and the docs/benchmarks.md report writer."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from rl_lifecycle.windows import WindowScheme

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
MONTHLY = WindowScheme("monthly")


def _median_seconds(action: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def scratch_database(server_url: str):
    """A migrated, throw-away database on the configured server."""
    from rl_lifecycle.db.migrate import apply_migrations

    name = f"rl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    try:
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _environment(values: dict[str, str]):
    """These environment variables set inside, the previous values (or their absence) restored after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_report(results: dict, machine: str, when: str, *, begin: str = BEGIN, end: str = END,
                 extra_lines: list[str] = ()) -> None:
    """Rewrite the section of docs/benchmarks.md between `begin` and `end` (appended when missing)."""
    lines = [begin, f"Last run: {when} on {machine}.", ""]
    if results:
        lines += ["| benchmark | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        baseline = "-" if r.get("baseline") is None else r["baseline"]
        ratio = "-" if r.get("ratio") is None else r["ratio"]
        lines.append(f"| `{name}` | {r['value']} {r['unit']} | {baseline} | {ratio} | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    extras = {n: {k: v for k, v in r.items() if k not in {"value", "unit", "baseline", "ratio", "target", "met"}}
              for n, r in results.items()}
    if results:
        lines += ["", "Details: " + "; ".join(f"`{n}` {json.dumps(e)}" for n, e in extras.items() if e)]
    lines += [*extra_lines, end]
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    DOC.write_text(head + "\n".join(lines) + tail)
