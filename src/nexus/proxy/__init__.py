"""Forwarding a routed request to a backend: failover, SSE relay, timeouts."""
