"""OpenAI-compatible servers: vLLM, llama.cpp, LM Studio, exo and anything generic.

They all list models at ``GET /v1/models``; each family adds its own way of telling the
context length (vLLM ``max_model_len``, llama.cpp ``/props`` ``n_ctx``, LM Studio
``/api/v0/models`` ``max_context_length``). JSON mode is supported by all of them.
"""

from __future__ import annotations

from typing import Any

from nexus.backends.base import Listing, ProbeClient, ProbeError, as_int, require_list
from nexus.registry import Backend, Model

CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length")


def parse_openai_models(payload: Any, default_context: int | None = None) -> list[Model]:
    models = []
    for entry in require_list(payload, "data", "/v1/models"):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        context = next((as_int(entry.get(k)) for k in CONTEXT_KEYS if entry.get(k)), None)
        meta = entry.get("meta")
        if context is None and isinstance(meta, dict):
            context = as_int(meta.get("n_ctx_train"))
        models.append(
            Model(
                id=entry["id"],
                name=entry["id"],
                context_length=default_context or context,
                supports_json_mode=True,
            )
        )
    return models


class OpenAICompatAdapter:
    """vLLM, exo, generic: everything is in ``/v1/models``."""

    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        return Listing(parse_openai_models(await client.fetch(backend, "GET", "/v1/models")))


class LlamaCppAdapter:
    """llama.cpp ``llama-server`` and ``llama-cpp-python``.

    ``/health`` answers 503 while the model loads; llama-cpp-python has no ``/health`` at
    all (404), so a 404 there falls through to ``/v1/models``. ``/props`` gives the context
    the server actually runs with, which beats the training context in ``/v1/models``, and
    ``total_slots``: how many requests it generates for at once (more wait in its queue).
    """

    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        await client.fetch(backend, "GET", "/health", allow_404=True)
        props = await client.fetch(backend, "GET", "/props", allow_404=True)
        n_ctx: int | None = None
        vision: bool | None = None
        slots: int | None = None
        if isinstance(props, dict):
            slots = as_int(props.get("total_slots"))
            settings = props.get("default_generation_settings")
            if isinstance(settings, dict):
                n_ctx = as_int(settings.get("n_ctx"))
            n_ctx = n_ctx or as_int(props.get("n_ctx"))
            modalities = props.get("modalities")
            if isinstance(modalities, dict) and isinstance(modalities.get("vision"), bool):
                vision = modalities["vision"]
        models = parse_openai_models(await client.fetch(backend, "GET", "/v1/models"), n_ctx)
        for model in models:
            model.supports_vision = vision
        return Listing(models, slots)


class LMStudioAdapter:
    """LM Studio's ``/api/v0/models`` tells type (llm, vlm, embeddings) and context."""

    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        payload = await client.fetch(backend, "GET", "/api/v0/models", allow_404=True)
        if payload is None:
            return await OpenAICompatAdapter().probe(client, backend)
        models = []
        for entry in require_list(payload, "data", "/api/v0/models"):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            kind = entry.get("type")
            embeddings = kind == "embeddings"
            models.append(
                Model(
                    id=entry["id"],
                    name=entry["id"],
                    context_length=as_int(entry.get("max_context_length")),
                    supports_chat=not embeddings,
                    supports_vision=kind == "vlm" if kind else None,
                    supports_json_mode=not embeddings,
                    supports_embeddings=embeddings if kind else None,
                )
            )
        return Listing(models)


__all__ = ["LMStudioAdapter", "LlamaCppAdapter", "OpenAICompatAdapter", "ProbeError"]
