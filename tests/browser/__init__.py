"""Browser tests of the console: headless Chromium against the services with simulated data."""
