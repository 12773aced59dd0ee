-- The model price table ingest stamps chat usage with; dollars per million tokens.
CREATE TABLE model_prices (
    model                         text PRIMARY KEY,
    input_price_per_million       numeric(13, 6) NOT NULL CHECK (input_price_per_million >= 0),
    output_price_per_million      numeric(13, 6) NOT NULL CHECK (output_price_per_million >= 0),
    cache_read_price_per_million  numeric(13, 6) NOT NULL CHECK (cache_read_price_per_million >= 0),
    cache_write_price_per_million numeric(13, 6) NOT NULL CHECK (cache_write_price_per_million >= 0),
    updated_at                    timestamptz NOT NULL DEFAULT now()
);

-- One row whose version moves on every change, so replicas notice deletes as well as updates
-- with one cheap read.
CREATE TABLE model_prices_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO model_prices_version (singleton, version) VALUES (true, 0);
