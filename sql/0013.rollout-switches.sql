-- Rollout switches (rl_lifecycle/ops/switches.py): every `rl-lifecycle switch set NAME VALUE` and
-- `switch unset NAME`, one row each. The newest row of a switch is what is stored for it: a value wins
-- over the environment in the daemon, the code location and the CLI alike; NULL (an unset) hands the
-- switch back to its environment variable or default. `previous` is the value stored before the change
-- (NULL: nothing was stored). Audit data, and the time a switch last changed (the 7-day stability rule):
-- append-only, enforced here like promotion_audit: triggers refuse UPDATE, DELETE and TRUNCATE.
-- depends: 0012.inbox-alerts

CREATE TABLE IF NOT EXISTS rollout_switch_changes (
    id         bigserial   PRIMARY KEY,
    switch     text        NOT NULL CHECK (switch IN ('feature_set', 'paper_decisions', 'strict_backtest',
                                                      'online_learning', 'auto_promotion')),
    value      text        CHECK (value IS NULL OR value <> ''),  -- as in force: true/false, a feature set name
    previous   text,
    actor      text        NOT NULL CHECK (actor <> ''),  -- who: `cli:<user>` (--actor)
    reason     text,                                       -- why, when given (--reason)
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rollout_switch_changes_newest ON rollout_switch_changes (switch, id DESC);

CREATE OR REPLACE FUNCTION rl_rollout_switch_changes_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rollout_switch_changes is append-only: % is refused', TG_OP
        USING HINT = 'change a switch with `rl-lifecycle switch set` / `switch unset`: each change is a new row';
END;
$$;

DROP TRIGGER IF EXISTS rollout_switch_changes_no_update_delete ON rollout_switch_changes;
CREATE TRIGGER rollout_switch_changes_no_update_delete BEFORE UPDATE OR DELETE ON rollout_switch_changes
    FOR EACH ROW EXECUTE FUNCTION rl_rollout_switch_changes_append_only();

DROP TRIGGER IF EXISTS rollout_switch_changes_no_truncate ON rollout_switch_changes;
CREATE TRIGGER rollout_switch_changes_no_truncate BEFORE TRUNCATE ON rollout_switch_changes
    FOR EACH STATEMENT EXECUTE FUNCTION rl_rollout_switch_changes_append_only();
