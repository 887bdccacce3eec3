"""Routing: request inspection, aliases, fallbacks and backend selection."""
