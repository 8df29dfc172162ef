-- Markets, candles and quarantined candle rows.
-- depends:

-- Turns a table into a TimescaleDB hypertable when the extension can be loaded; otherwise a no-op,
-- leaving a plain table with the same keys and indexes.
CREATE OR REPLACE FUNCTION rl_make_hypertable(target regclass, time_column text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RETURN false;
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        EXECUTE format('SELECT create_hypertable(%L::regclass, %L, if_not_exists => true, migrate_data => true)',
                       target, time_column);
        RETURN true;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'timescaledb present but unusable (%), % stays a plain table', SQLERRM, target;
        RETURN false;
    END;
END;
$$;

CREATE TABLE IF NOT EXISTS markets (
    pair            text        NOT NULL CHECK (pair ~ '^[A-Z0-9]{2,20}$'),
    interval        text        NOT NULL CHECK (interval IN ('1m','3m','5m','15m','30m','1h','2h','4h','6h','12h','1d')),
    source          text        NOT NULL DEFAULT 'import' CHECK (source IN ('import', 'synthetic')),
    synthetic_seed  integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pair, interval),
    CHECK ((source = 'synthetic') = (synthetic_seed IS NOT NULL))
);

CREATE TABLE IF NOT EXISTS market_candles (
    pair        text             NOT NULL,
    interval    text             NOT NULL,
    ts          timestamptz      NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL,
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (pair, interval, ts),
    FOREIGN KEY (pair, interval) REFERENCES markets (pair, interval)
);

DO $$ BEGIN PERFORM rl_make_hypertable('market_candles', 'ts'); END $$;

CREATE TABLE IF NOT EXISTS candles_quarantine (
    id             bigserial   PRIMARY KEY,
    pair           text        NOT NULL,
    interval       text        NOT NULL,
    source         text        NOT NULL,
    source_sha256  text        NOT NULL,
    row_number     integer     NOT NULL,
    ts_raw         text,
    raw            jsonb       NOT NULL,
    reasons        text[]      NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pair, interval, source_sha256, row_number)
);
