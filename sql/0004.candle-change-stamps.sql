-- Change stamps: every written candle row takes the next value of a sequence, so a window's
-- (first input ts, input rows, highest write_seq) stamp moves whenever one of its input candles
-- changes. Dataset builds compare stamps first and fall back to the candle checksum.
-- depends: 0003.datasets

CREATE SEQUENCE IF NOT EXISTS market_candles_write_seq;

ALTER TABLE market_candles ADD COLUMN IF NOT EXISTS write_seq bigint;

CREATE OR REPLACE FUNCTION rl_stamp_candle_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A sequence only grows (a wall clock can step back). Writers of a market hold an advisory
    -- lock until commit, so a later writer's values exceed everything committed before it.
    NEW.write_seq := nextval('market_candles_write_seq');
    NEW.ingested_at := now();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS market_candles_stamp ON market_candles;
CREATE TRIGGER market_candles_stamp BEFORE INSERT OR UPDATE ON market_candles
    FOR EACH ROW EXECUTE FUNCTION rl_stamp_candle_write();

ALTER TABLE rl_feature_windows ADD COLUMN IF NOT EXISTS input_start timestamptz;
ALTER TABLE rl_feature_windows ADD COLUMN IF NOT EXISTS candles_write_seq bigint;
