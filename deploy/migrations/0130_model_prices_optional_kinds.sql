-- A price may leave a kind of token unset (NULL), as Coder's model cost configuration may:
-- tokens of an unset kind are free beside priced ones, and usage only of unset kinds is
-- unpriced. Rows stored before keep every kind set (a cache price omitted then was 0).
ALTER TABLE model_prices
    ALTER COLUMN input_price_per_million DROP NOT NULL,
    ALTER COLUMN output_price_per_million DROP NOT NULL,
    ALTER COLUMN cache_read_price_per_million DROP NOT NULL,
    ALTER COLUMN cache_write_price_per_million DROP NOT NULL,
    ADD CONSTRAINT model_prices_some_kind_priced CHECK (
        input_price_per_million IS NOT NULL OR output_price_per_million IS NOT NULL
        OR cache_read_price_per_million IS NOT NULL OR cache_write_price_per_million IS NOT NULL
    );
