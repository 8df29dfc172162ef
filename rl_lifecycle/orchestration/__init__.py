"""The Dagster shell: the only package that imports `dagster` (definitions, resources, partitions and
tags, jobs, assets with their checks, sensors and schedules, run launching, backfills, the dev server).

Dagster flags features the code location relies on (MultiPartitionMapping, backfill policies,
partitioned asset checks) as beta or preview every time a process builds them; nobody running the
CLI, the UI or a run can act on that. One filter, set here because every process that loads the code
location imports this package first; `SITECUSTOMIZE` carries the same filter into the dev server's
child processes (webserver, daemon), which load Dagster before any of our code.
"""

import warnings

DAGSTER_NOTICES = (r"(?s).*is currently in (beta|preview)", r"(?s).*superseded and its usage is discouraged")

for _pattern in DAGSTER_NOTICES:
    warnings.filterwarnings("ignore", message=_pattern)

SITECUSTOMIZE = f'''\
# Written by `rl-lifecycle dev`: silence Dagster's beta/preview notices in its child processes.
import warnings as _warnings

for _pattern in {DAGSTER_NOTICES!r}:
    _warnings.filterwarnings("ignore", message=_pattern)


def _chain():  # run the sitecustomize this one shadows, if any
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_chain()
'''
