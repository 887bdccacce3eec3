"""Backend adapters, one per family, chosen by the backend's ``type``."""

from __future__ import annotations

from nexus.backends.base import Adapter, Listing, ProbeClient, ProbeError
from nexus.backends.cloud import AnthropicAdapter, GoogleAdapter
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
        "anthropic": AnthropicAdapter(),
        "google": GoogleAdapter(),
        "generic": generic,
    }


async def detect_type(client: ProbeClient, backend: Backend) -> str:
    """Guess a backend's family from the endpoints it answers (for ``backends add``)."""
    probes = (
        ("ollama", "/api/tags"),
        ("lmstudio", "/api/v0/models"),
        ("llamacpp", "/props"),
    )
    for kind, path in probes:
        try:
            await client.fetch(backend, "GET", path)
            return kind
        except (ProbeError, TimeoutError):
            continue
    try:
        data = await client.fetch(backend, "GET", "/v1/models")
        entries = data.get("data", []) if isinstance(data, dict) else []
        owners = {e.get("owned_by") for e in entries if isinstance(e, dict)}
        return "vllm" if "vllm" in owners else "generic"
    except (ProbeError, TimeoutError):
        return "generic"


__all__ = [
    "Adapter",
    "Backend",
    "Listing",
    "ProbeClient",
    "ProbeError",
    "detect_type",
    "make_adapters",
]
