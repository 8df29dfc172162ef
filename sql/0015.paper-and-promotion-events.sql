-- Paper breaches and promotion events (rl_lifecycle/ops/alerts.py, rl_lifecycle/ops/events.py,
-- rl_lifecycle/ops/paper.py). Two more alert kinds:
-- * `paper_breach` (PAPER_DRAWDOWN_BEYOND_BACKTEST): a champion's paper drawdown beyond its walk-forward
--   band, one row per breach, keyed `paper:<market>:v<version>:<segment start>:<breach start>`.
-- * `promotion_event`: every promotion_audit row, keyed `audit:<id>`, inserted by a trigger in the audit
--   row's own statement (an outbox: no action without its event, whichever code path wrote it) and
--   resolved at once (an event is not a failure: no open-alert figure counts it). The webhook POSTs it
--   like any alert, with the audit row (its gate table) from `details`.
-- `details` carries what the webhook body shows beside the summary (the audit row, the breach's figures).
-- depends: 0012.inbox-alerts

ALTER TABLE alerts ADD COLUMN IF NOT EXISTS details jsonb;
ALTER TABLE alerts DROP CONSTRAINT IF EXISTS alerts_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_kind_check
    CHECK (kind IN ('check_failed', 'run_failed', 'inbox_rejected', 'paper_breach', 'promotion_event'));

CREATE OR REPLACE FUNCTION rl_promotion_audit_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    event text := CASE WHEN NEW.action = 'rollback' AND NEW.actor = 'auto-rollback' THEN 'auto_rollback'
                       ELSE NEW.action END;
BEGIN
    INSERT INTO alerts (kind, dedupe_key, market, asset, partition_key, check_name, severity, summary, run_id,
                        run_url, details, resolved_at)
    VALUES ('promotion_event', 'audit:' || NEW.id, NEW.market, 'promotion_decision', NEW.market, event, 'INFO',
            format('%s%s on %s by %s: champion %s -> %s%s%s', event,
                   coalesce(' v' || NEW.challenger_version, ''), NEW.market, NEW.actor,
                   coalesce('v' || NEW.champion_version, 'none'), coalesce('v' || NEW.resulting_champion_version, 'none'),
                   CASE WHEN cardinality(NEW.reason_codes) > 0
                        THEN ' (' || array_to_string(NEW.reason_codes, ', ') || ')' ELSE '' END,
                   coalesce('; ' || NEW.note, '')),
            '', '', jsonb_build_object('event', event, 'audit', to_jsonb(NEW)), now())
    ON CONFLICT (dedupe_key) DO NOTHING;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS promotion_audit_event ON promotion_audit;
CREATE TRIGGER promotion_audit_event AFTER INSERT ON promotion_audit
    FOR EACH ROW EXECUTE FUNCTION rl_promotion_audit_event();

-- The latest paper figures of each champion segment (rl_lifecycle/ops/paper.py `watch`), what the
-- Prometheus gauges `rl_paper_*` read at scrape time: rewritten whole by each watch, never the source of
-- truth (rl_decisions and the candles are; `rl-lifecycle paper pnl` recomputes them).
CREATE TABLE IF NOT EXISTS paper_segments (
    market           text        NOT NULL,
    champion_version integer     NOT NULL,
    segment_from     timestamptz NOT NULL,
    segment_to       timestamptz NOT NULL,
    bars             integer     NOT NULL,
    total_return     double precision NOT NULL,
    max_drawdown     double precision NOT NULL,
    trades           integer     NOT NULL,
    drawdown_limit   double precision,          -- NULL: no band (no evaluation report with curves)
    breached         boolean     NOT NULL DEFAULT false,
    current          boolean     NOT NULL DEFAULT false,  -- the segment of the champion in force
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, champion_version, segment_from)
);
