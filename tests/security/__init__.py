"""Bad input and security tests against the running services."""
