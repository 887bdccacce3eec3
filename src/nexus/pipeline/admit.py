"""Admit: the checks a request passes before any work is spent on it (its body unread).

Refusals here are cheap and early: shutting down, too many requests in flight, a body type
a cross-site page could have sent. Tenants' keys, rate limits and quotas join here.
"""

from __future__ import annotations

from nexus.asgi.guards import check_api_body
from nexus.errors import Overloaded, ShuttingDown
from nexus.pipeline.exchange import Exchange
from nexus.state import AppState


def admit(state: AppState, ex: Exchange) -> None:
    if state.draining:
        raise ShuttingDown("Nexus is shutting down; retry on another instance")
    limit = state.config.server.max_concurrent_requests
    if state.in_flight > limit:  # this request is already counted
        raise Overloaded(f"more than {limit} requests in flight")
    check_api_body(ex.scope)
