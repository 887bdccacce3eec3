"""Ollama: ``GET /api/tags`` lists models; ``POST /api/show`` tells capabilities and context.

``/api/show`` is asked once per model digest (the digest changes when the model does), not
every probe cycle: a box with twenty models should not get twenty extra calls every 30 s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nexus.backends.base import Listing, ProbeClient, ProbeError, as_int, require_list
from nexus.registry import Backend, Model


class OllamaAdapter:
    def __init__(self) -> None:
        # (model name, digest) -> Model, shared by every Ollama backend: same digest, same model.
        self._show_cache: dict[tuple[str, str], Model] = {}

    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        tags = await client.fetch(backend, "GET", "/api/tags")
        entries = [e for e in require_list(tags, "models", "/api/tags") if isinstance(e, dict)]
        shows = await asyncio.gather(*(self._model(client, backend, entry) for entry in entries))
        return Listing([m for m in shows if m is not None])

    async def _model(
        self, client: ProbeClient, backend: Backend, entry: dict[str, Any]
    ) -> Model | None:
        name = entry.get("name") or entry.get("model")
        if not isinstance(name, str) or not name:
            return None
        digest = str(entry.get("digest") or "")
        key = (name, digest)
        cached = self._show_cache.get(key) if digest else None
        if cached is not None:
            return cached
        try:
            show = await client.fetch(backend, "POST", "/api/show", body={"model": name})
        except ProbeError:
            show = None  # an old or odd Ollama: keep the model with unknown capabilities
        model = parse_show(name, entry, show if isinstance(show, dict) else {})
        if digest and show is not None:
            self._show_cache[key] = model
        return model


def parse_show(name: str, entry: dict[str, Any], show: dict[str, Any]) -> Model:
    details = show.get("details") or entry.get("details") or {}
    families = details.get("families") or [] if isinstance(details, dict) else []
    info = show.get("model_info") or {}
    context = None
    if isinstance(info, dict):
        for key, value in info.items():
            if key.endswith(".context_length"):
                context = as_int(value)
                break
    caps = show.get("capabilities")
    if isinstance(caps, list):
        embedding = "embedding" in caps
        return Model(
            id=name,
            name=name,
            context_length=context,
            supports_chat="completion" in caps,
            supports_vision="vision" in caps,
            supports_tools="tools" in caps,
            supports_json_mode="completion" in caps,
            supports_embeddings=embedding,
        )
    # Ollama before 0.6 has no capabilities list: infer vision from the CLIP projector.
    vision = any(f in ("clip", "mllama") for f in families if isinstance(f, str))
    is_bert = any(isinstance(f, str) and "bert" in f for f in families)
    return Model(
        id=name,
        name=name,
        context_length=context,
        supports_chat=not is_bert,
        supports_vision=vision or None,
        supports_tools=None,
        supports_json_mode=True,
        supports_embeddings=None,
    )
