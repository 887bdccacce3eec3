"""The concrete fake inference servers: Ollama, vLLM, llama.cpp, LM Studio, OpenAI.

Each emulates the real response shapes of the server's probe endpoints on
top of the OpenAI-compatible chat/embeddings machinery of `FakeBackend`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .base import FakeBackend
from .llamacpp import FakeLlamaCpp
from .models import Behavior, FakeModel, HeaderDict, ReceivedRequest
from .ollama import FakeOllama
from .server import Route, json_response

__all__ = [
    "Behavior",
    "FakeBackend",
    "FakeLMStudio",
    "FakeLlamaCpp",
    "FakeModel",
    "FakeOllama",
    "FakeOpenAI",
    "FakeVLLM",
    "HeaderDict",
    "ReceivedRequest",
]


class FakeOpenAI(FakeBackend):
    """Generic OpenAI-compatible server (also stands in for exo)."""

    kind = "openai"
    owned_by = "system"


class FakeVLLM(FakeBackend):
    """vLLM's OpenAI-compatible server (FastAPI)."""

    kind = "vllm"
    owned_by = "vllm"

    def __init__(self, models: list[FakeModel] | None = None, **kwargs: Any) -> None:
        super().__init__(models, **kwargs)
        self.version = "0.11.0"

    def _extra_routes(self) -> list[Route]:
        return [
            ("GET", "/health", self._probe(self._health)),
            ("GET", "/version", self._probe(self._version)),
            ("POST", "/tokenize", self._tokenize),
        ]

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: {"model", "prompt"} -> {"count", "max_model_len", "tokens"}
        (one token per whitespace-separated word here, so tests know the count)."""
        body = await request.json()
        if self.find_model(str(body.get("model"))) is None:
            return self.model_not_found(str(body.get("model")))
        words = str(body.get("prompt", "")).split()
        return json_response(
            {"count": len(words), "max_model_len": 8192, "tokens": list(range(len(words)))}
        )

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response({"detail": "Not Found"}, status=404)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.version})

    def v1_model_entry(self, model: FakeModel) -> dict[str, Any]:
        permission = {
            "id": "modelperm-" + model.digest[:32],
            "object": "model_permission",
            "created": self.created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        return {
            "id": model.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "root": model.id,
            "parent": None,
            "max_model_len": model.context_length,
            "permission": [permission],
        }

    def decorate_completion(self, body: dict[str, Any], model: FakeModel) -> None:
        body["choices"][0]["stop_reason"] = None
        body["choices"][0]["message"]["reasoning_content"] = None
        body["prompt_logprobs"] = None
        body["kv_transfer_params"] = None


class FakeLMStudio(FakeBackend):
    """LM Studio: /api/v0 REST API plus the OpenAI-compatible /v1 endpoints.

    Like the real thing, an unknown endpoint answers **200** with
    {"error": "Unexpected endpoint or method. (GET /x). Returning 200 anyway"}.
    """

    kind = "lmstudio"
    owned_by = "organization_owner"
    fingerprint = None  # LM Studio reports the model id as system_fingerprint

    def _extra_routes(self) -> list[Route]:
        return [
            ("GET", "/api/v0/models", self._probe(self._v0_models)),
            ("GET", "/api/v0/models/{model_id:.+}", self._probe(self._v0_model)),
        ]

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        msg = f"Unexpected endpoint or method. ({request.method} {request.path})"
        return json_response({"error": f"{msg}. Returning 200 anyway"})

    def v1_model_entry(self, model: FakeModel) -> dict[str, Any]:
        return {"id": model.id, "object": "model", "owned_by": self.owned_by}

    def v0_entry(self, model: FakeModel) -> dict[str, Any]:
        kind = "embeddings" if model.embedding else "vlm" if model.vision else "llm"
        entry: dict[str, Any] = {
            "id": model.id,
            "object": "model",
            "type": kind,
            "publisher": "lmstudio-community",
            "arch": "llama",
            "compatibility_type": "gguf",
            "quantization": "Q4_K_M",
            "state": "loaded",
            "max_context_length": model.context_length,
            "loaded_context_length": model.context_length,
        }
        if model.tools and not model.embedding:
            entry["capabilities"] = ["tool_use"]
        return entry

    async def _v0_models(self, request: web.Request) -> web.Response:
        return json_response(
            {"object": "list", "data": [self.v0_entry(m) for m in self.served_models()]}
        )

    async def _v0_model(self, request: web.Request) -> web.Response:
        model = self.find_model(request.match_info["model_id"])
        if model is None:
            return json_response({"error": "Model not found"}, status=404)
        return json_response(self.v0_entry(model))
