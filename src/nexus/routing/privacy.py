"""Privacy zones (F13): what runs on the user's own machines never leaves them.

A request's zone is decided before routing, from the backends serving the requested model:
``restricted`` when any of them is restricted, else ``open``. A request is only ever sent
to backends of its own zone, whatever failover, fallbacks or overflow follow. The one
exception is the admin's to make (``[routing.privacy] cross_zone_overflow =
"fresh-context"``): a restricted chat request no restricted backend can take may go to an
open backend with its history stripped (:func:`fresh_context`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nexus.registry import Backend

RESTRICTED = "restricted"
OPEN = "open"
FRESH_CONTEXT = "fresh-context"
SYSTEM_ROLES = ("system", "developer")


def request_zone(holders: Sequence[Backend]) -> str:
    for backend in holders:
        if backend.zone == RESTRICTED:
            return RESTRICTED
    return OPEN


def zone_reason(zone: str, holders: Sequence[Backend]) -> str:
    """Why the request has its zone, for the DEBUG log."""
    if zone == RESTRICTED:
        names = ", ".join(b.name for b in holders if b.zone == RESTRICTED)
        return f"served by restricted backend(s) {names}"
    if not holders:
        return "no backend serves it"
    return "only open backends serve it"


def fresh_context(body: dict[str, Any]) -> dict[str, Any]:
    """The request with only its system message(s) and its last user message: no earlier
    turns, no assistant answers, no tool calls or results."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    kept = [m for m in messages if isinstance(m, dict) and m.get("role") in SYSTEM_ROLES]
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            kept.append(message)
            break
    return {**body, "messages": kept}
