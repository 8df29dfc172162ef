-- What a step hands to later steps lives in the database every worker reaches, not on one machine's disk
-- (issue 19, point 2): a report's fold equity curves (Parquet bytes; `equity_curve_uri` = `db:<curve_key>`),
-- and the outputs Dagster passes between steps of a run (the `PostgresStepIO` IO manager, pickles keyed by
-- run, step and output). Step outputs of runs older than the retention are pruned by the IO manager.
-- depends: 0017.market-fill

CREATE TABLE IF NOT EXISTS rl_equity_curves (
    curve_key text PRIMARY KEY,
    content bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS rl_step_outputs (
    run_id text NOT NULL,
    output_key text NOT NULL,
    content bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, output_key)
);
CREATE INDEX IF NOT EXISTS rl_step_outputs_written_at ON rl_step_outputs (written_at);

-- where each fold ran (issue 19, point 3): {"worker": the Celery node or null, "host", "pid"}
ALTER TABLE evaluation_folds ADD COLUMN IF NOT EXISTS ran_on jsonb;
