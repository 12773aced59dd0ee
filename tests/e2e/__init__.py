"""End-to-end tests: services as processes, driven over HTTP."""
