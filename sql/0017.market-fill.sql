-- Fill convention per market (issue 17, point 3): where the position decided at a bar's close is filled.
-- `close`: at that bar's close (a market open around the clock: the next bar opens at that instant; the
-- default for `crypto`). `next_open`: at the next bar's open (the default for `fx` and exchange calendars:
-- a bar's close may be the market's close, and a decision made from it can only trade when it reopens).
-- `rl-lifecycle market add ... --fill close|next_open`, `market set-fill KEY close|next_open|default`.
-- Existing markets get their calendar's default. A dataset records the fill it was built under (its spec's
-- `fill`, part of dataset_hash when not `close`), so models and evaluations follow it; a dataset built
-- under another fill than the market's is refused by name.
-- depends: 0014.market-span-windows

ALTER TABLE markets ADD COLUMN IF NOT EXISTS fill text;
UPDATE markets SET fill = CASE WHEN calendar = 'crypto' THEN 'close' ELSE 'next_open' END WHERE fill IS NULL;
ALTER TABLE markets ALTER COLUMN fill SET NOT NULL;
ALTER TABLE markets DROP CONSTRAINT IF EXISTS markets_fill_check;
ALTER TABLE markets ADD CONSTRAINT markets_fill_check CHECK (fill IN ('close', 'next_open'));
