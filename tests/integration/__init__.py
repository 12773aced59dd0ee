"""Integration tests against the real broker and PostgreSQL."""
