-- Walk-forward evaluation reports and their folds (rl_lifecycle/evaluation/store.py).
-- One report per evaluation: the same market, model spec hash, dataset_hash and fold config give the
-- same evaluation_key, so a re-run rewrites its report (same id) instead of adding one.
-- depends: 0004.candle-change-stamps

CREATE TABLE IF NOT EXISTS evaluation_reports (
    id              bigserial   PRIMARY KEY,
    evaluation_key  text        NOT NULL UNIQUE,
    pair            text        NOT NULL,
    interval        text        NOT NULL,
    spec            jsonb       NOT NULL,  -- the model spec evaluated
    model_spec_hash text        NOT NULL,
    dataset_hash    text        NOT NULL,
    fold_config     jsonb       NOT NULL,
    label_horizon   integer     NOT NULL,
    strict          boolean     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('ok', 'partial', 'failed')),
    aggregates      jsonb       NOT NULL,  -- over the completed folds; NaN is stored as null
    timings         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS evaluation_reports_market ON evaluation_reports (pair, interval, updated_at);

CREATE TABLE IF NOT EXISTS evaluation_folds (
    report_id        bigint      NOT NULL REFERENCES evaluation_reports (id) ON DELETE CASCADE,
    fold_index       integer     NOT NULL,
    train_ranges     jsonb       NOT NULL,  -- [[start_row, end_row), ...] dataset rows
    test_range       jsonb       NOT NULL,  -- [start_row, end_row)
    train_spans      jsonb       NOT NULL,  -- the same as [[start, end), ...] ISO-8601 UTC times
    test_span        jsonb       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('ok', 'failed')),
    metrics          jsonb,
    baselines        jsonb,                 -- {"flat": {...}, "buy_and_hold": {...}}
    error            text,                  -- the traceback of a failed fold
    equity_curve_uri text,
    PRIMARY KEY (report_id, fold_index)
);
