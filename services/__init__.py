"""Tollgate's services, one package each."""
