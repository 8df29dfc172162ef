-- Alerts (rl_lifecycle/alerts.py): one row per failure the alert sensors saw, a failed asset check
-- evaluation or a failed run. `dedupe_key` makes recording idempotent (a sensor restarted with an old
-- cursor finds the row and sends nothing); `delivered_at` marks the webhook POST that succeeded, and
-- `attempts` / `next_attempt_at` / `last_error` drive the retries with exponential backoff.
-- depends: 0007.promotion-audit

CREATE TABLE IF NOT EXISTS alerts (
    id              bigserial   PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('check_failed', 'run_failed')),
    dedupe_key      text        NOT NULL UNIQUE,  -- check:<run_id>:<asset>:<check>:<partition> | run:<run_id>
    market          text,                         -- the market part of the partition, when there is one
    asset           text,
    partition_key   text,
    check_name      text,
    severity        text,                         -- ERROR / WARN for checks
    job_name        text,
    summary         text        NOT NULL,
    run_id          text        NOT NULL,
    run_url         text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,                  -- the webhook accepted it; NULL: not (yet) delivered
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,                  -- NULL: deliver on the next tick
    last_error      text,
    resolved_at     timestamptz,                  -- a later run passed the same check / succeeded for the same job and partition
    resolved_by_run text
);
CREATE INDEX IF NOT EXISTS alerts_undelivered ON alerts (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (market, created_at) WHERE resolved_at IS NULL;
