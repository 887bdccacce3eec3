"""FakeOllama: Ollama's native /api/* endpoints plus its OpenAI-compatible /v1 API."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from . import shapes
from .base import FakeBackend
from .models import FakeModel
from .server import Route, json_response

PARAMS = 8_030_261_248
N_VOCAB = 128_256


def size_of(model: FakeModel) -> int:
    """A stable, plausible file size in bytes."""
    return 1_000_000_000 + int(model.digest[:6], 16) * 1000


class FakeOllama(FakeBackend):
    """Ollama: native /api/* endpoints plus the OpenAI-compatible /v1 ones."""

    kind = "ollama"
    owned_by = "library"
    fingerprint = "fp_ollama"
    modified_at: ClassVar[str] = "2025-06-01T12:00:00.000000000Z"

    def __init__(self, models: list[FakeModel] | None = None, **kwargs: Any) -> None:
        super().__init__(models, **kwargs)
        self.version = "0.12.3"
        self.show_calls: dict[str, int] = {}

    def _extra_routes(self) -> list[Route]:
        return [
            ("GET", "/", self._probe(self._root, native=True)),
            ("GET", "/api/tags", self._probe(self._tags, native=True)),
            ("POST", "/api/show", self._probe(self._show, native=True)),
            ("GET", "/api/version", self._probe(self._version, native=True)),
            ("GET", "/api/ps", self._probe(self._ps, native=True)),
        ]

    def error_response(
        self, status: int, message: str, *, native: bool = False, param: str | None = None
    ) -> web.Response:
        if native:
            return json_response({"error": message}, status=status)
        body = shapes.error_body(status, message, param=param)
        body["error"]["type"] = "api_error" if status >= 500 else "invalid_request_error"
        return json_response(body, status=status)

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="404 page not found")

    def find_model(self, name: str) -> FakeModel | None:
        """Like Ollama, "llama3" also names "llama3:latest"."""
        found = super().find_model(name)
        if found is None and ":" not in name:
            found = super().find_model(f"{name}:latest")
        return found

    def model_not_found(self, name: str) -> web.Response:
        return self.error_response(
            404, f'model "{name}" not found, try pulling it first', param="model"
        )

    def details(self, model: FakeModel) -> dict[str, Any]:
        families = ["llama", "clip"] if model.vision else ["llama"]
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": families,
            "parameter_size": "8.0B",
            "quantization_level": "Q4_K_M",
        }

    def capabilities(self, model: FakeModel) -> list[str]:
        caps = [] if model.embedding else ["completion"]
        if model.vision:
            caps.append("vision")
        if model.tools and not model.embedding:
            caps.append("tools")
        if model.embedding:
            caps.append("embedding")
        return caps

    def _entry(self, model: FakeModel) -> dict[str, Any]:
        return {
            "name": model.id,
            "model": model.id,
            "modified_at": self.modified_at,
            "size": size_of(model),
            "digest": model.digest,
            "details": self.details(model),
        }

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return json_response({"models": [self._entry(m) for m in self.served_models()]})

    async def _ps(self, request: web.Request) -> web.Response:
        running = []
        for model in self.served_models():
            if model.id in self.loaded:
                entry = self._entry(model)
                del entry["modified_at"]
                entry.update(
                    {
                        "expires_at": "2099-01-01T00:00:00.000000000Z",
                        "size_vram": entry["size"],
                        "context_length": model.context_length,
                    }
                )
                running.append(entry)
        return json_response({"models": running})

    async def _show(self, request: web.Request) -> web.Response:
        payload, _err = await self._json_payload(request)
        if payload is None:
            return self.error_response(400, "invalid request body", native=True)
        name = payload.get("model") or payload.get("name")
        if not isinstance(name, str) or not name:
            return self.error_response(400, "model is required", native=True)
        model = self.find_model(name)
        key = model.id if model is not None else name
        self.show_calls[key] = self.show_calls.get(key, 0) + 1
        if model is None:
            return self.error_response(404, f"model '{name}' not found", native=True)
        info: dict[str, Any] = {
            "general.architecture": "llama",
            "general.basename": model.id.split(":")[0],
            "general.file_type": 15,
            "general.parameter_count": PARAMS,
            "general.quantization_version": 2,
            "llama.attention.head_count": 32,
            "llama.block_count": 32,
            "llama.context_length": model.context_length,
            "llama.embedding_length": 4096,
            "tokenizer.ggml.model": "gpt2",
        }
        body: dict[str, Any] = {
            "license": "",
            "modelfile": (
                f'# Modelfile generated by "ollama show"\n'
                f"FROM /root/.ollama/models/blobs/sha256-{model.digest}\n"
                'TEMPLATE "{{ .Prompt }}"\n'
            ),
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": self.details(model),
            "model_info": info,
            "capabilities": self.capabilities(model),
            "modified_at": self.modified_at,
        }
        if model.vision:
            body["projector_info"] = {
                "clip.has_vision_encoder": True,
                "clip.vision.image_size": 560,
            }
        return json_response(body)
