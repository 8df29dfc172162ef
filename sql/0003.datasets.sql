-- Training dataset versions, content-addressed by dataset_hash.
-- depends: 0002.feature-store

CREATE TABLE IF NOT EXISTS dataset_versions (
    dataset_hash   text        PRIMARY KEY,
    pair           text        NOT NULL,
    interval       text        NOT NULL,
    fingerprint    text        NOT NULL REFERENCES feature_sets (fingerprint),
    feature_set    text        NOT NULL,
    span_start     timestamptz NOT NULL,
    span_end       timestamptz NOT NULL,
    spec           jsonb       NOT NULL,
    rows           integer     NOT NULL,
    storage_uri    text        NOT NULL,
    source_windows jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_built_at  timestamptz NOT NULL DEFAULT now()  -- a reused version is touched: the latest build of its span
);
CREATE INDEX IF NOT EXISTS dataset_versions_market ON dataset_versions (pair, interval, span_end, last_built_at);
