"""The cold side of the foreign APIs Nexus serves: Ollama's listings (``/api/tags``,
``/api/show``, ``/api/ps``, ``/api/version``) and Anthropic's ``/v1/messages/count_tokens``.
Errors here are in each API's own shape, as their clients expect."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from nexus import __version__, tokens
from nexus.api.status import TENANT
from nexus.asgi.routes import Request, Response, Router
from nexus.backends import ProbeError, tokenize
from nexus.dialects import anthropic, ollama
from nexus.errors import InvalidRequest
from nexus.registry import Backend, Model
from nexus.state import AppState
from nexus.tenants.model import Tenant

PS_TIMEOUT = 2.0  # /api/ps asks every Ollama backend; a slow one must not hold the answer


TOKENIZED = ("openai", "anthropic")  # providers whose tokens are counted offline


class ForeignListings:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def add_routes(self, router: Router) -> None:
        router.add("GET", "/api/tags", self.tags)
        router.add("POST", "/api/show", self.show)
        router.add("GET", "/api/ps", self.ps)
        router.add("GET", "/api/version", self.version)
        router.add("POST", "/v1/messages/count_tokens", self.count_tokens)

    def _served(self, request: Request) -> list[tuple[Backend, Model]]:
        """Models of healthy backends (auth on: those the caller's tenant may use)."""
        tenant: Tenant | None = request.scope.get(TENANT)
        return [
            (b, m)
            for b in self.state.registry.get_healthy_backends()
            for m in b.models.values()
            if tenant is None or tenant.allows(m.id)
        ]

    async def tags(self, request: Request) -> Response:
        models = [model for _, model in self._served(request)]
        return Response.json(ollama.tags(models, modified_at=_now()))

    async def show(self, request: Request) -> Response:
        body = await _json(request)
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        for _, model in self._served(request):
            if model.id == name:
                return Response.json(ollama.show(model, modified_at=_now()))
        return Response(ollama.error_body(f"model '{str(name)[:200]}' not found"), status=404)

    async def ps(self, request: Request) -> Response:
        """What the Ollama backends say they have loaded, asked now, all at once."""
        boxes = [b for b in self.state.registry.get_healthy_backends() if b.type == "ollama"]
        answers = await asyncio.gather(*(self._loaded(b) for b in boxes))
        return Response.json(ollama.ps([entry for entries in answers for entry in entries]))

    async def _loaded(self, backend: Backend) -> list[Any]:
        try:
            async with asyncio.timeout(PS_TIMEOUT):
                listing = await self.state.health.client.fetch(backend, "GET", "/api/ps")
        except (ProbeError, TimeoutError):
            return []
        models = listing.get("models") if isinstance(listing, dict) else None
        return models if isinstance(models, list) else []

    async def version(self, request: Request) -> Response:
        return Response.json(ollama.version(__version__))

    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's token count, from the tokenizer registry: exact from the serving
        llama.cpp or vLLM backend's own /tokenize, or where an offline tokenizer exists;
        Claude's approximation; or the estimate (the header says which)."""
        body = await _json(request)
        try:
            anthropic.from_messages_request(
                {**body, "max_tokens": 1} if isinstance(body, dict) else body
            )
        except InvalidRequest as exc:
            return Response(anthropic.error_body(400, exc.message), status=400)
        model = str(body.get("model"))
        text = anthropic.prompt_text(body)
        holders = self.state.registry.get_backends_for_model(model)
        for backend in filter(tokenize.can_tokenize, holders):
            counted = await tokenize.count(self.state.health.client, backend, model, text)
            if counted is not None:
                tokens.COUNTED["exact"] += counted
                return Response.json({"input_tokens": counted}).with_header(
                    b"x-nexus-token-count", b"exact"
                )
        # The provider of a cloud backend serving the model names its tokenizer.
        fallback = "anthropic" if model.startswith("claude") else "other"
        provider = next((b.type for b in holders if b.type in TOKENIZED), fallback)
        count = tokens.count_text(text, provider=provider, model=model)
        return Response.json(
            {"input_tokens": count.tokens},
        ).with_header(b"x-nexus-token-count", count.method.encode())


async def _json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
