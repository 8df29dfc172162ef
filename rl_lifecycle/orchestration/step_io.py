"""The IO manager of every job: what a step hands to the next (a fold's task, its results) is pickled into
PostgreSQL (`rl_step_outputs`), which every worker reaches, instead of files under one machine's
DAGSTER_HOME (issue 19: Celery workers share no disk).

Outputs are keyed by run, step and output name (and a dynamic output's mapping key), as Dagster's own
filesystem IO manager keys them, so a re-execution of a run reads its parent's outputs. Outputs older than
`RETENTION_DAYS` are pruned (once per process): re-executing a run older than that starts it over.
"""

from __future__ import annotations

import pickle

from dagster import ConfigurableIOManager, InputContext, OutputContext

from rl_lifecycle.orchestration.resources import PostgresResource

RETENTION_DAYS = 14
_PRUNED: set[str] = set()  # databases this process pruned already


def _key(context: OutputContext) -> tuple[str, str]:
    run_id, *rest = context.get_identifier()
    return run_id, "/".join(rest)


class PostgresStepIO(ConfigurableIOManager):
    """Step outputs as pickles in the feature store's database."""

    database: PostgresResource

    def handle_output(self, context: OutputContext, obj) -> None:
        if obj is None and context.has_asset_key:
            return  # an asset's `Output(None)`: its data is in the domain tables, downstream steps depend on it only
        run_id, key = _key(context)
        content = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        with self.database.connect() as conn:
            url = self.database.database_url()
            if url not in _PRUNED:
                conn.execute("DELETE FROM rl_step_outputs WHERE written_at < now() - make_interval(days => %s)",
                             (RETENTION_DAYS,))
                _PRUNED.add(url)
            conn.execute(
                """INSERT INTO rl_step_outputs (run_id, output_key, content) VALUES (%s, %s, %s)
                   ON CONFLICT (run_id, output_key) DO UPDATE SET content = EXCLUDED.content, written_at = now()""",
                (run_id, key, content),
            )

    def load_input(self, context: InputContext):
        run_id, key = _key(context.upstream_output)
        with self.database.connect() as conn:
            row = conn.execute("SELECT content FROM rl_step_outputs WHERE run_id = %s AND output_key = %s",
                               (run_id, key)).fetchone()
        if row is None and context.upstream_output.has_asset_key:
            return None  # an asset output stored as nothing (`handle_output`)
        if row is None:
            raise RuntimeError(f"the output {key} of run {run_id} is not stored (rl_step_outputs): the run that "
                               f"made it ended before storing it, or it is older than {RETENTION_DAYS} days")
        return pickle.loads(row[0])
