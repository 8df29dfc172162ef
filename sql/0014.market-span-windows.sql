-- Dataset spans per market (issue 17, point 6): a market's default number of windows a training dataset
-- spans, ending at its partition's window (`rl-lifecycle market add ... --span-windows N`). Three monthly
-- windows hold about 2,200 hourly bars but only about 63 daily ones; a daily market wants a longer span.
-- NULL: the project default (rl_lifecycle/datasets/spec.py DEFAULT_SPAN_WINDOWS, 3). The span is part of
-- the dataset spec (first_window .. last_window), hence of its dataset_hash.
-- depends: 0012.inbox-alerts

ALTER TABLE markets ADD COLUMN IF NOT EXISTS span_windows integer;
ALTER TABLE markets DROP CONSTRAINT IF EXISTS markets_span_windows_check;
ALTER TABLE markets ADD CONSTRAINT markets_span_windows_check CHECK (span_windows IS NULL OR span_windows BETWEEN 1 AND 120);
