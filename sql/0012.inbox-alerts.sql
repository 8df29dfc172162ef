-- Inbox alerts (rl_lifecycle/ops/alerts.py): a candle file the inbox rejected (or refused) is an alert of
-- kind `inbox_rejected`, keyed per file (`inbox:<market>/<file>:<size>:<mtime_ns>`), with the market in
-- `market` and `partition_key`; `run_id` is empty (no run), `run_url` the inbox sensor's page. A later
-- import of a file of the same name into the same market resolves it.
-- depends: 0011.cpcv-backtests

ALTER TABLE alerts DROP CONSTRAINT IF EXISTS alerts_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_kind_check CHECK (kind IN ('check_failed', 'run_failed', 'inbox_rejected'));
