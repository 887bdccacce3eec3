"""The proxied (hot) endpoints: bare ASGI callables, reached by one dict lookup on the path,
each a run of the request pipeline with its own inspection of the body."""

from __future__ import annotations

from nexus.asgi import ASGIApp, Receive, Scope, Send
from nexus.asgi.routes import Request, Response, Router
from nexus.pipeline import Endpoint, Pipeline
from nexus.routing.requirements import inspect_chat, inspect_embeddings

ENDPOINTS = (
    Endpoint("chat", "/v1/chat/completions", inspect_chat),
    Endpoint("embeddings", "/v1/embeddings", inspect_embeddings),
)


def hot_routes(pipeline: Pipeline) -> dict[str, ASGIApp]:
    def bind(endpoint: Endpoint) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await pipeline.handle(endpoint, scope, receive, send)

        return app

    return {endpoint.path: bind(endpoint) for endpoint in ENDPOINTS}


def add_routes(router: Router) -> None:
    """The hot paths, known to the cold router too: a GET on one is a 405 naming POST."""

    async def unreachable(request: Request) -> Response:  # pragma: no cover - App routes POST
        raise AssertionError("POST on a proxied path never reaches the cold router")

    for endpoint in ENDPOINTS:
        router.add("POST", endpoint.path, unreachable)
