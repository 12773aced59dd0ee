"""Libraries shared by every Tollgate service."""
