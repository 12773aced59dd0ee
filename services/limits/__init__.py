"""Limits: per-user spend in memory and the check before every chat message."""
