"""ASGI plumbing: what uvicorn hands us, read and answered without a framework.

The hot endpoints (chat, embeddings and the other proxied ones) are bare ASGI callables
reached by one dict lookup on the path; the cold ones (health, models, stats, metrics,
admin, dashboard) go through :class:`nexus.asgi.routes.Router`, a table of fixed paths and
a few ``/prefix/{name}`` patterns. Everything a client can see is OpenAI-shaped JSON, down
to the 400 uvicorn would answer for unparseable HTTP (see :mod:`nexus.asgi.protocol`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

__all__ = ["ASGIApp", "Headers", "Message", "Receive", "Scope", "Send"]
