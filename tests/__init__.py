"""Tollgate's test suite."""
