"""Counting tokens with a backend's own tokenizer: llama.cpp's and vLLM's ``/tokenize``.

The exact count for a model Nexus has no tokenizer for (a GGUF on llama-server, a Hugging
Face model on vLLM), at the price of a round trip: used where a count is asked for
(``/v1/messages/count_tokens``), never on a proxied request's path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nexus.backends.base import ProbeClient, ProbeError
from nexus.registry import Backend

TIMEOUT_SECONDS = 2.0
# How each server is asked: llama-server takes the text as "content"; vLLM, the model and
# the text as "prompt" (and answers a "count" too).
REQUESTS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "llamacpp": lambda model, text: {"content": text},
    "vllm": lambda model, text: {"model": model, "prompt": text},
}


def can_tokenize(backend: Backend) -> bool:
    return backend.type in REQUESTS and backend.routable


async def count(client: ProbeClient, backend: Backend, model: str, text: str) -> int | None:
    """Tokens of ``text`` as ``backend`` counts them for ``model``; None if it cannot say."""
    build = REQUESTS.get(backend.type)
    if build is None:
        return None
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            answer = await client.fetch(backend, "POST", "/tokenize", body=build(model, text))
    except (ProbeError, TimeoutError):
        return None
    if not isinstance(answer, dict):
        return None
    if isinstance(answer.get("count"), int):
        return int(answer["count"])
    ids = answer.get("tokens")
    return len(ids) if isinstance(ids, list) else None
