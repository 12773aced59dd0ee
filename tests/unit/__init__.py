"""Unit tests: no I/O, fakes only."""
