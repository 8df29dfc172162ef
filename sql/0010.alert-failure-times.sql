-- When each alerted failure happened (the failed check evaluation's event, the failed run's end), so
-- that a later pass resolves only the failures before it: the alert sensors tick independently and
-- may see an older passing run after a newer failing one. NULL for alerts recorded before this column.
-- depends: 0009.alerts

ALTER TABLE alerts ADD COLUMN IF NOT EXISTS failed_at timestamptz;
