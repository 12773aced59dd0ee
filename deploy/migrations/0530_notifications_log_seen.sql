-- Where limits stood in the log when it recorded a notification: {"topic", "epoch",
-- "positions": {partition: next offset}}. The notifier renders a notification once reports'
-- projection has read that far (or after TOLLGATE_NOTIFY_DIRECTORY_WAIT), so the directory it
-- renders from holds every fact limits had seen: an owner added just before, whose entry went
-- to another partition, gets the admin email too.
ALTER TABLE notifications ADD COLUMN log_seen jsonb;
