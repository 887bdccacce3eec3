"""HTTP endpoints, one module per family: proxied (the hot path), status, admin."""
