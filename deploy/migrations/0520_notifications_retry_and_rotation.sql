-- An admin may send a failed delivery again: it is pending once more, due at once, and its
-- retry window (TOLLGATE_NOTIFY_RETRY_FOR) starts again from `retry_from`.
ALTER TABLE notification_deliveries ADD COLUMN retry_from timestamptz;

-- A rotated endpoint secret keeps signing beside the new one until `previous_secret_until`,
-- so a receiver can switch to the new secret without refusing a single delivery.
ALTER TABLE notification_webhooks ADD COLUMN previous_secret text;
ALTER TABLE notification_webhooks ADD COLUMN previous_secret_until timestamptz;
