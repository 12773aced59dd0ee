"""One suite per storage Protocol, run over the in-memory fake and its PostgreSQL twin."""
