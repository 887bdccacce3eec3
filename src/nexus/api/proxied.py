"""The proxied (hot) endpoints: reached by one dict lookup on the path, each a run of the
request pipeline. Foreign APIs (Anthropic's Messages, Ollama's native API)
are the same pipeline with an inbound dialect: their requests become OpenAI's, and answers
go back in the client's shape (or untouched, from a backend speaking that API itself)."""

from __future__ import annotations

from nexus.asgi.routes import Request, Response, Router
from nexus.pipeline import Endpoint
from nexus.pipeline.inbound import AnthropicMessages, OllamaEmbedding, OllamaGeneration
from nexus.routing.requirements import inspect_chat, inspect_completions, inspect_embeddings

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (
    Endpoint("chat", CHAT, inspect_chat),
    Endpoint("embeddings", EMBEDDINGS, inspect_embeddings),
    Endpoint("completions", "/v1/completions", inspect_completions),
    Endpoint("messages", CHAT, inspect_chat, "/v1/messages", AnthropicMessages()),
    Endpoint("ollama-chat", CHAT, inspect_chat, "/api/chat", OllamaGeneration("chat")),
    Endpoint("ollama-generate", CHAT, inspect_chat, "/api/generate", OllamaGeneration("generate")),
    Endpoint(
        "ollama-embed", EMBEDDINGS, inspect_embeddings, "/api/embed", OllamaEmbedding("embed")
    ),
    Endpoint(
        "ollama-embeddings",
        EMBEDDINGS,
        inspect_embeddings,
        "/api/embeddings",
        OllamaEmbedding("embeddings"),
    ),
)


def hot_routes() -> dict[str, Endpoint]:
    """The path a client calls -> its endpoint (the app hands it to the pipeline)."""
    return {endpoint.client_path: endpoint for endpoint in ENDPOINTS}


def add_routes(router: Router) -> None:
    """The hot paths, known to the cold router too: a GET on one is a 405 naming POST."""

    async def unreachable(request: Request) -> Response:  # pragma: no cover - App routes POST
        raise AssertionError("POST on a proxied path never reaches the cold router")

    for endpoint in ENDPOINTS:
        router.add("POST", endpoint.client_path, unreachable)
