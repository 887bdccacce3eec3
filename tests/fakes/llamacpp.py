"""FakeLlamaCpp: llama.cpp's llama-server (or llama-cpp-python with flags)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .base import FakeBackend
from .models import FakeModel
from .ollama import N_VOCAB, PARAMS, size_of
from .server import Route, json_response


class FakeLlamaCpp(FakeBackend):
    """llama.cpp's llama-server (one model: models[0]).

    has_health=False / has_props=False emulate llama-cpp-python (FastAPI,
    404 {"detail": "Not Found"}); `loading = True` makes /health and the
    inference endpoints answer 503 "Loading model".
    """

    kind = "llamacpp"
    owned_by = "llamacpp"
    fingerprint = "b6500-fake"

    def __init__(
        self,
        models: list[FakeModel] | None = None,
        *,
        has_health: bool = True,
        has_props: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(models, **kwargs)
        self.has_health = has_health
        self.has_props = has_props
        self.loading = False

    @property
    def model(self) -> FakeModel:
        return self.models[0]

    def served_models(self) -> list[FakeModel]:
        return self.models[:1]

    def _extra_routes(self) -> list[Route]:
        return [
            ("GET", "/health", self._probe(self._health, native=True)),
            ("GET", "/props", self._probe(self._props, native=True)),
            ("POST", "/tokenize", self._tokenize),
        ]

    async def _tokenize(self, request: web.Request) -> web.Response:
        """llama-server's /tokenize: {"content": text} -> {"tokens": [ids]} (one token per
        whitespace-separated word here, so tests know the count)."""
        if not self.has_health:  # llama-cpp-python has no /tokenize
            return json_response({"detail": "Not Found"}, status=404)
        body = await request.json()
        words = str(body.get("content", "")).split()
        return json_response({"tokens": list(range(len(words)))})

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        if not self.has_health:  # llama-cpp-python
            return json_response({"detail": "Not Found"}, status=404)
        return json_response(
            {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
            status=404,
        )

    def unavailable(self) -> web.Response | None:
        if not self.loading:
            return None
        return json_response(
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            status=503,
        )

    async def _health(self, request: web.Request) -> web.StreamResponse:
        if not self.has_health:
            return self._not_found(request)
        return self.unavailable() or json_response({"status": "ok"})

    async def _props(self, request: web.Request) -> web.StreamResponse:
        if not self.has_props:
            return self._not_found(request)
        model = self.model
        settings = {
            "id": 0,
            "id_task": -1,
            "n_ctx": model.context_length,
            "speculative": False,
            "is_processing": False,
            "params": {
                "n_predict": -1,
                "temperature": 0.8,
                "top_k": 40,
                "top_p": 0.95,
                "min_p": 0.05,
                "stream": True,
            },
            "prompt": "",
            "next_token": {"has_next_token": True, "n_remain": -1},
        }
        return json_response(
            {
                "default_generation_settings": settings,
                "total_slots": 1,
                "model_path": f"/models/{model.id}.gguf",
                "modalities": {"vision": model.vision, "audio": False},
                "chat_template": "{% for message in messages %}{{ message.content }}{% endfor %}",
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "build_info": "b6500-fake",
            }
        )

    async def _v1_models(self, request: web.Request) -> web.Response:
        model = self.model
        caps = ["completion"] + (["multimodal"] if model.vision else [])
        ollama_like = {
            "name": model.id,
            "model": model.id,
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": caps,
            "parameters": "",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": [""],
                "parameter_size": "",
                "quantization_level": "",
            },
        }
        return json_response(
            {"models": [ollama_like], "object": "list", "data": [self.v1_model_entry(model)]}
        )

    def v1_model_entry(self, model: FakeModel) -> dict[str, Any]:
        meta = {
            "vocab_type": 2,
            "n_vocab": N_VOCAB,
            "n_ctx_train": model.context_length,
            "n_embd": 4096,
            "n_params": PARAMS,
            "size": size_of(model),
        }
        return {
            "id": model.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "meta": meta,
        }

    def decorate_completion(self, body: dict[str, Any], model: FakeModel) -> None:
        body["timings"] = {
            "prompt_n": body["usage"]["prompt_tokens"],
            "prompt_ms": 12.5,
            "predicted_n": body["usage"]["completion_tokens"],
            "predicted_ms": 80.0,
            "predicted_per_second": 150.0,
        }
