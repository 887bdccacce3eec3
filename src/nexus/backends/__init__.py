"""Backend adapters, one per family, chosen by the backend's ``type``."""

from __future__ import annotations

import aiohttp

from nexus.backends.base import Adapter, ProbeError, describe_client_error
from nexus.backends.ollama import OllamaAdapter
from nexus.backends.openai_compat import LlamaCppAdapter, LMStudioAdapter, OpenAICompatAdapter
from nexus.registry import Backend


def make_adapters() -> dict[str, Adapter]:
    generic = OpenAICompatAdapter()
    return {
        "ollama": OllamaAdapter(),
        "vllm": generic,
        "llamacpp": LlamaCppAdapter(),
        "lmstudio": LMStudioAdapter(),
        "exo": generic,
        "openai": generic,
        "generic": generic,
    }


async def detect_type(session: aiohttp.ClientSession, url: str) -> str:
    """Guess a backend's family from the endpoints it answers (for ``backends add``)."""
    probes = (
        ("ollama", "/api/tags"),
        ("lmstudio", "/api/v0/models"),
        ("llamacpp", "/props"),
    )
    for kind, path in probes:
        try:
            async with session.get(url.rstrip("/") + path) as resp:
                if resp.status == 200:
                    return kind
        except (aiohttp.ClientError, TimeoutError, OSError):
            continue
    try:
        async with session.get(url.rstrip("/") + "/v1/models") as resp:
            if resp.status == 200:
                data = await resp.json(content_type=None)
                owners = {e.get("owned_by") for e in data.get("data", []) if isinstance(e, dict)}
                return "vllm" if "vllm" in owners else "generic"
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError):
        pass
    return "generic"


__all__ = [
    "Adapter",
    "Backend",
    "ProbeError",
    "describe_client_error",
    "detect_type",
    "make_adapters",
]
