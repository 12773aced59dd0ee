"""Budget notifications: endpoints, the outbox, rendering, delivery (reports' notifier)."""
