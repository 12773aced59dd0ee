"""Ingest: validates, prices and logs usage events."""
