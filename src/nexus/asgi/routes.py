"""The cold endpoints' router: fixed paths, and ``/prefix/{name}`` for the few that take one.

A table is all fifteen-odd endpoints need; a framework's router would bring its own
plain-text 404 and 405 pages, and here every error must be OpenAI-shaped JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

import orjson

from nexus.asgi import Headers, Receive, Scope, Send
from nexus.asgi.io import BASE_HEADERS, JSON, header, read_body, respond, respond_error
from nexus.errors import InvalidRequest, MethodNotAllowed, NexusError, NotFound

log = logging.getLogger("nexus")


class Request:
    """What a cold endpoint reads of its request."""

    __slots__ = ("_query", "params", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params  # the ``{name}`` part of the path, decoded
        self._query: dict[str, list[str]] | None = None

    @property
    def method(self) -> str:
        return self.scope["method"]  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        return self.scope["path"]  # type: ignore[no-any-return]

    @property
    def client(self) -> str:
        client = self.scope.get("client")
        return client[0] if client else ""

    def header(self, name: str) -> str | None:
        return header(self.scope, name.lower().encode("latin-1"))

    def query(self, name: str) -> str | None:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = parse_qs(raw, keep_blank_values=True)
        values = self._query.get(name)
        return values[-1] if values else None

    async def body(self, limit: int = 1024 * 1024, seconds: float = 30.0) -> bytes:
        return await read_body(self.scope, self.receive, limit, seconds)

    async def json(self, limit: int = 1024 * 1024) -> object:
        raw = await self.body(limit)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("body must be a JSON object") from None


@dataclass(slots=True)
class Response:
    body: bytes
    status: int = 200
    ctype: bytes = JSON
    headers: Headers = field(default_factory=list)

    @classmethod
    def json(cls, data: object, status: int = 200) -> Response:
        return cls(orjson.dumps(data), status)

    def with_header(self, name: bytes, value: bytes) -> Response:
        self.headers.append((name, value))
        return self

    async def __call__(self, send: Send) -> None:
        await respond(send, self.status, self.body, self.headers, self.ctype)


Handler = Callable[[Request], Awaitable[Response]]
Unmatched = Callable[[Scope], None]  # told of every request no route matched


class Router:
    def __init__(self, unmatched: Unmatched | None = None) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        self.prefixed: list[tuple[str, str, dict[str, Handler]]] = []  # (prefix, name, ...)
        self.unmatched = unmatched

    def add(self, method: str, path: str, handler: Handler) -> None:
        """``path`` is exact, or ends in ``/{name}`` (one segment) or ``/{name:path}``
        (the rest of the path)."""
        if path.endswith("}"):
            prefix, _, name = path[:-1].rpartition("/{")
            for known, known_name, methods in self.prefixed:
                if known == prefix + "/" and known_name == name:
                    methods[method] = handler
                    return
            self.prefixed.append((prefix + "/", name, {method: handler}))
        else:
            self.exact.setdefault(path, {})[method] = handler

    def match(self, path: str) -> tuple[dict[str, Handler], dict[str, str]] | None:
        methods = self.exact.get(path)
        if methods is not None:
            return methods, {}
        for prefix, name, handlers in self.prefixed:
            if path.startswith(prefix) and len(path) > len(prefix):
                rest = path[len(prefix) :]
                key, _, kind = name.partition(":")
                if kind == "path" or "/" not in rest:
                    return handlers, {key: unquote(rest)}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        found = self.match(path)
        try:
            if found is None:
                if self.unmatched is not None:
                    self.unmatched(scope)
                raise NotFound(f"no such endpoint: {method} {_shown(path)}")
            methods, params = found
            handler = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
            if handler is None:
                allowed = ", ".join(sorted(methods))
                raise MethodNotAllowed(
                    f"{method} is not allowed on {_shown(path)} (allowed: {allowed})",
                    headers={"Allow": allowed},
                )
            response = await handler(Request(scope, receive, params))
        except NexusError as exc:
            await respond_error(send, exc)
            return
        except Exception:
            log.exception("unhandled error on %s %s", method, _shown(path))
            await respond_error(send, NexusError("internal error in Nexus", code="internal_error"))
            return
        await response(send)


def _shown(path: str) -> str:
    """A client's path as it may appear in an error or a log line: short, printable."""
    text = path[:200]
    return "".join(c if c.isprintable() else "?" for c in text)


__all__ = ["BASE_HEADERS", "Handler", "Request", "Response", "Router"]
