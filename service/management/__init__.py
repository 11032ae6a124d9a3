"""Use cases: what the routes call; each owns one thing the API does."""
