-- Paper decisions (rl_lifecycle/decisions/store.py): one row per `rl-lifecycle decide` / `paper_decisions`
-- decision, forced holds included with every reason code. Paper only: nothing here routes orders.
-- Append-only, enforced here like promotion_audit: triggers refuse UPDATE, DELETE and TRUNCATE.
-- depends: 0007.promotion-audit

CREATE TABLE IF NOT EXISTS rl_decisions (
    id               bigserial        PRIMARY KEY,
    market           text             NOT NULL,  -- market key, e.g. BTCUSDT-1h
    as_of            timestamptz      NOT NULL,  -- the instant decided at (--at, or now)
    bar_ts           timestamptz,                -- open time of the newest closed bar acted on (NULL: no candle)
    action           text             NOT NULL CHECK (action IN ('flat', 'long', 'short', 'hold')),
    position         smallint         NOT NULL CHECK (position IN (-1, 0, 1)),  -- paper position after it (hold: 0)
    champion_version integer,                    -- from the promotion audit (NULL: no champion)
    fingerprint      text,                       -- of the vector acted on (the active feature set)
    vector_sha256    text,                       -- of the float64 vector bytes (NULL: no vector)
    reason_codes     text[]           NOT NULL DEFAULT '{}',
    latency_ms       double precision NOT NULL,
    details          jsonb            NOT NULL DEFAULT '{}',  -- OOD figures, missing features, staleness
    created_at       timestamptz      NOT NULL DEFAULT now(),
    CHECK (action <> 'hold' OR cardinality(reason_codes) > 0)
);
CREATE INDEX IF NOT EXISTS rl_decisions_market ON rl_decisions (market, id);

CREATE OR REPLACE FUNCTION rl_decisions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rl_decisions is append-only: % is refused', TG_OP
        USING HINT = 'decisions are a record: make a new decision instead of changing one';
END;
$$;

DROP TRIGGER IF EXISTS rl_decisions_no_update_delete ON rl_decisions;
CREATE TRIGGER rl_decisions_no_update_delete BEFORE UPDATE OR DELETE ON rl_decisions
    FOR EACH ROW EXECUTE FUNCTION rl_decisions_append_only();

DROP TRIGGER IF EXISTS rl_decisions_no_truncate ON rl_decisions;
CREATE TRIGGER rl_decisions_no_truncate BEFORE TRUNCATE ON rl_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION rl_decisions_append_only();
