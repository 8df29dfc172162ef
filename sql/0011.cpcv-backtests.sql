-- A CPCV split backtests each group it tests on its own: a report row per backtest, with the split
-- whose model traded it and the group it tested. NULL for walk-forward rows (the fold is the row).
-- depends: 0010.alert-failure-times

ALTER TABLE evaluation_folds ADD COLUMN IF NOT EXISTS split_index integer;
ALTER TABLE evaluation_folds ADD COLUMN IF NOT EXISTS test_group integer;
