-- Change stamps: every written candle row carries the wall-clock time of its write, so a window's
-- (first input ts, input rows, latest write) stamp changes whenever one of its input candles
-- changes. Dataset builds compare stamps first and fall back to the candle checksum.
-- depends: 0003.datasets

CREATE OR REPLACE FUNCTION rl_stamp_candle_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- clock_timestamp, not now(): writers of a market are serialised by an advisory lock, so a
    -- later writer's stamp is later than everything committed before it.
    NEW.ingested_at := clock_timestamp();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS market_candles_stamp ON market_candles;
CREATE TRIGGER market_candles_stamp BEFORE INSERT OR UPDATE ON market_candles
    FOR EACH ROW EXECUTE FUNCTION rl_stamp_candle_write();

ALTER TABLE rl_feature_windows ADD COLUMN IF NOT EXISTS input_start timestamptz;
ALTER TABLE rl_feature_windows ADD COLUMN IF NOT EXISTS candles_written_at timestamptz;
