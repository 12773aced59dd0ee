-- The share of a user's limit at which a budget warning is due (1 to 99 percent); NULL turns
-- warnings off. The notice at the limit itself is always due.
ALTER TABLE limits_config
    ADD COLUMN warning_threshold_percent integer DEFAULT 85
        CHECK (warning_threshold_percent BETWEEN 1 AND 99);
