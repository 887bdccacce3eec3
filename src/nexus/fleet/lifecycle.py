"""What each backend type offers for loading and unloading models, behind one protocol.

One adapter per type that has a real API for it: Ollama (``nexus.fleet.ollama``), LM Studio
0.4+ (``nexus.fleet.lmstudio``) and llama.cpp's router mode (``nexus.fleet.llamacpp``). Every
other type answers 501 with the reason below: Nexus never pretends to load a model on a
server that cannot be told to. An adapter's ``load`` and ``unload`` return only once the
server itself shows the model loaded (or gone); anything else raises ``OperationFailed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from nexus.fleet.errors import NotSupported
from nexus.fleet.http import BackendHTTP
from nexus.registry import Backend

# A listing or a status answers in well under a second; this leaves room for a box that is
# busy loading a model.
STATUS_SECONDS = 10.0
POLL_SECONDS = 0.25  # how often a server is asked whether a load or an unload is done

# Told of a pull's progress: (status text, bytes done, bytes in all) as the server says.
Report = Callable[[str, int | None, int | None], None]

UNSUPPORTED = {
    "vllm": (
        "vLLM serves the one model it was started with; its /sleep and /wake_up endpoints "
        "exist only in development mode (VLLM_SERVER_DEV_MODE=1) and put the whole engine to "
        "sleep while it stays listed, and /v1/load_lora_adapter loads LoRA adapters, not models"
    ),
    "exo": (
        "exo places model instances across its cluster itself (POST /instance); Nexus does "
        "not drive exo's placement"
    ),
    "generic": "an OpenAI-compatible server has no API to load or unload models",
    "openai": "a cloud provider's models are always available: there is nothing to load",
    "anthropic": "a cloud provider's models are always available: there is nothing to load",
    "google": "a cloud provider's models are always available: there is nothing to load",
}


@dataclass(slots=True)
class Residency:
    """What a backend holds in memory now, and what its models take."""

    loaded: dict[str, int | None] = field(default_factory=dict)  # model -> bytes (None: unsaid)
    sizes: dict[str, int] = field(default_factory=dict)  # model -> bytes, for models it has


class Lifecycle(Protocol):
    kind: str  # the server as a person names it ("Ollama")
    pull_unsupported: str  # why it cannot pull a model ("" when it can)

    async def check(self, http: BackendHTTP, backend: Backend) -> None:
        """NotSupported when this server (not only its type) cannot load or unload."""
        ...

    async def load(self, http: BackendHTTP, backend: Backend, model: str) -> None: ...

    async def unload(self, http: BackendHTTP, backend: Backend, model: str) -> None: ...

    async def pull(
        self, http: BackendHTTP, backend: Backend, model: str, report: Report
    ) -> None: ...

    async def residency(self, http: BackendHTTP, backend: Backend) -> Residency: ...


def refusal(backend: Backend) -> NotSupported:
    reason = UNSUPPORTED.get(backend.type, "Nexus has no way to load models on it")
    return NotSupported(
        f"backend {backend.name} is of type {backend.type}, which cannot load or unload "
        f"models: {reason}"
    )


async def until(done: Callable[[], Awaitable[bool]]) -> None:
    """Ask ``done`` every POLL_SECONDS until it says yes; the operation's own time limit
    bounds the wait."""
    # Polling, because these servers offer nothing to wait on (llama.cpp's event stream
    # aside) and an operation asks a few times a second at most.
    while not await done():  # noqa: ASYNC110
        await asyncio.sleep(POLL_SECONDS)
