-- Promotion audit (rl_lifecycle/promotion/audit.py): every decision, manual promotion and rollback.
-- It is the source of truth for who is champion; MLflow aliases are reconciled from it. Append-only,
-- enforced here: triggers refuse UPDATE, DELETE and TRUNCATE whoever asks.
-- depends: 0006.evaluations

CREATE TABLE IF NOT EXISTS promotion_audit (
    id                         bigserial   PRIMARY KEY,
    market                     text        NOT NULL,  -- market key, e.g. BTCUSDT-1h
    action                     text        NOT NULL
        CHECK (action IN ('promote', 'reject', 'pending', 'manual_promote', 'rollback')),
    actor                      text        NOT NULL,
    reason_codes               text[]      NOT NULL DEFAULT '{}',
    gates                      jsonb       NOT NULL DEFAULT '[]',  -- [{code, passed, value, threshold, ...}]
    challenger_version         integer,               -- the version judged (or promoted / rolled back to)
    champion_version           integer,               -- the champion before this action
    resulting_champion_version integer,               -- the champion after it
    dataset_hash               text,
    evaluation_report_id       bigint,                -- no foreign key: reports are rewritten, the audit stays
    feature_set                text,                  -- of the resulting champion: the market's active set
    fingerprint                text,
    override                   boolean     NOT NULL DEFAULT false,
    note                       text,                  -- the person's reason for a manual action
    created_at                 timestamptz NOT NULL DEFAULT now(),
    CHECK (action NOT IN ('promote', 'manual_promote', 'rollback') OR resulting_champion_version IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS promotion_audit_market ON promotion_audit (market, id);

CREATE OR REPLACE FUNCTION rl_promotion_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'promotion_audit is append-only: % is refused', TG_OP
        USING HINT = 'record a new action (e.g. a rollback) instead of changing history';
END;
$$;

DROP TRIGGER IF EXISTS promotion_audit_no_update_delete ON promotion_audit;
CREATE TRIGGER promotion_audit_no_update_delete BEFORE UPDATE OR DELETE ON promotion_audit
    FOR EACH ROW EXECUTE FUNCTION rl_promotion_audit_append_only();

DROP TRIGGER IF EXISTS promotion_audit_no_truncate ON promotion_audit;
CREATE TRIGGER promotion_audit_no_truncate BEFORE TRUNCATE ON promotion_audit
    FOR EACH STATEMENT EXECUTE FUNCTION rl_promotion_audit_append_only();
