"""The Spend console: sign-in, sessions, the pages and the API gateway they call through."""
