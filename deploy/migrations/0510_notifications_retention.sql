-- Notifications and their deliveries are kept for TOLLGATE_NOTIFY_RETENTION (90 days by
-- default, never less than 62, so that a notification outlives the period it belongs to and
-- its unique key keeps a replay from recording it again), then pruned by the notifier.
CREATE INDEX notifications_created ON notifications (created_at, seq);
