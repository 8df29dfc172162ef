-- Automatic rollback on a paper breach, and its rollout switch (rl_lifecycle/promotion/service.py `auto_rollback`,
-- rl_lifecycle/ops/watch.py). The audit row of an automatic action keeps the figures it acted on in
-- `details` (an auto rollback: the breach's key, drawdown, limit, evaluation report); the promotion event
-- the trigger of 0015 writes carries them too (`to_jsonb(NEW)`). One auto rollback per breach, whichever
-- process watches: a second one for the same breach key is refused by the unique index below.
-- depends: 0015.paper-and-promotion-events

ALTER TABLE promotion_audit ADD COLUMN IF NOT EXISTS details jsonb;
CREATE UNIQUE INDEX IF NOT EXISTS promotion_audit_one_auto_rollback_per_breach
    ON promotion_audit (market, (details ->> 'breach_key'))
    WHERE action = 'rollback' AND details ? 'breach_key';

-- The rollout switch `auto_rollback` (RL_AUTO_ROLLBACK, stage 5) is stored like the others.
ALTER TABLE rollout_switch_changes DROP CONSTRAINT IF EXISTS rollout_switch_changes_switch_check;
ALTER TABLE rollout_switch_changes ADD CONSTRAINT rollout_switch_changes_switch_check
    CHECK (switch IN ('feature_set', 'paper_decisions', 'strict_backtest', 'online_learning', 'auto_promotion',
                      'auto_rollback'));
