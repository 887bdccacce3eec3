"""FakeBackend: OpenAI-compatible chat, embeddings and /v1/models on a FakeServer.

See `server.py` for the meaning of each `Behavior`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from aiohttp import web

from . import shapes
from .models import Behavior, FakeModel
from .server import _PRE_ANSWER, FakeServer, Route, json_response


class FakeBackend(FakeServer):
    """Base fake: OpenAI-compatible chat, embeddings and /v1/models."""

    kind: ClassVar[str] = "openai"
    owned_by: ClassVar[str] = "system"
    fingerprint: ClassVar[str | None] = "fp_fake"  # None: use the requested model id
    default_completion_tokens: ClassVar[int] = 12
    sse_content_type: ClassVar[str] = "text/event-stream"

    def __init__(
        self,
        models: list[FakeModel] | None = None,
        *,
        stream_chunks: int = 5,
        framing: str = "lf",
        split_writes: bool = False,
        coalesce: bool = False,
        send_done: bool = True,
    ) -> None:
        if framing not in ("lf", "crlf"):
            raise ValueError(f"framing must be 'lf' or 'crlf', not {framing!r}")
        self.models: list[FakeModel] = list(models) if models else [FakeModel("fake-model")]
        self.stream_chunks = stream_chunks
        self.framing = framing
        self.split_writes = split_writes
        self.coalesce = coalesce
        self.send_done = send_done
        super().__init__()
        self.created: int = 1_730_000_000
        self.completions_status: int = 0  # answer /v1/completions with this status (0: serve)
        self.loaded: set[str] = set()  # ids of models that answered chat/embeddings

    def reset(self) -> None:
        super().reset()
        self.loaded.clear()

    def _routes(self) -> list[Route]:
        routes: list[Route] = [
            ("POST", "/v1/chat/completions", self._chat),
            ("POST", "/v1/embeddings", self._embeddings),
            ("POST", "/v1/completions", self._completions),
            ("GET", "/v1/models", self._probe(self._v1_models)),
        ]
        return routes + self._extra_routes()

    # -------------------------------------------------------------- models
    def served_models(self) -> list[FakeModel]:
        return self.models

    def find_model(self, name: str) -> FakeModel | None:
        return next((m for m in self.served_models() if m.id == name), None)

    def model_not_found(self, name: str) -> web.Response:
        return self.error_response(404, f"The model `{name}` does not exist.", param="model")

    async def _v1_models(self, request: web.Request) -> web.Response:
        return json_response(
            {"object": "list", "data": [self.v1_model_entry(m) for m in self.served_models()]}
        )

    def v1_model_entry(self, model: FakeModel) -> dict[str, Any]:
        return {
            "id": model.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
        }

    def unavailable(self) -> web.Response | None:
        """Hook: a response that pre-empts chat/embeddings (e.g. model loading)."""
        return None

    async def _json_payload(
        self, request: web.Request
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None, self.error_response(400, "Invalid JSON body")
        if not isinstance(payload, dict):
            return None, self.error_response(400, "Request body must be a JSON object")
        return payload, None

    def _resolve(self, payload: dict[str, Any]) -> tuple[FakeModel | None, web.Response | None]:
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            return None, self.error_response(400, "`model` is required", param="model")
        model = self.find_model(name)
        if model is None:
            return None, self.model_not_found(name)
        return model, None

    # ---------------------------------------------------------- completions
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """Legacy ``/v1/completions``; ``completions_status`` (e.g. 404) refuses them, as a
        server without that endpoint does."""
        if self.completions_status:
            message = f"Invalid URL (POST {request.path})"
            return self.error_response(self.completions_status, message)
        payload, err = await self._json_payload(request)
        if payload is None:
            return err  # type: ignore[return-value]
        model, err = self._resolve(payload)
        if model is None:
            return err  # type: ignore[return-value]
        text = self.answer_text(model.id)
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": self.created,
            "model": model.id,
        }
        if not payload.get("stream"):
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
            usage = shapes.usage(4, 6)
            return json_response({**base, "choices": [choice], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece, finish in ((text, None), ("", "stop")):
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    # ---------------------------------------------------------------- chat
    def answer_text(self, model_name: str) -> str:
        return f"Hello from {self.kind}:{self.port} ({model_name})"

    def decorate_completion(self, body: dict[str, Any], model: FakeModel) -> None:
        """Hook: add kind-specific fields to a non-streamed chat completion."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.active_requests += 1
        self.peak_requests = max(self.peak_requests, self.active_requests)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return await self._chat_inner(request)
        finally:
            self.active_requests -= 1

    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        behavior = self.chat_behavior
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior)
        if (busy := self.unavailable()) is not None:
            return busy
        payload, err = await self._json_payload(request)
        if payload is None:
            return err or self.error_response(400, "bad request")
        model, err = self._resolve(payload)
        if model is None:
            return err or self.error_response(400, "bad request")
        if model.embedding:
            return self.error_response(400, f'"{model.id}" does not support chat', param="model")
        self.loaded.add(model.id)
        requested = str(payload["model"])
        common: dict[str, Any] = {
            "payload": payload,
            "model": requested,
            "content": self.answer_text(requested),
            "created": self.created,
            "fingerprint": self.fingerprint or requested,
            "default_completion_tokens": self.default_completion_tokens,
        }
        if not payload.get("stream"):
            body = shapes.chat_completion(**common)
            self.decorate_completion(body, model)
            return await self._deliver(request, json_response(body), behavior)
        chunks = shapes.chat_chunks(**common, n_chunks=self.stream_chunks)
        return await self._stream(request, [orjson.dumps(c) for c in chunks], behavior)

    async def _stream(
        self, request: web.Request, events: list[bytes], behavior: Behavior
    ) -> web.StreamResponse:
        sep = b"\r\n\r\n" if self.framing == "crlf" else b"\n\n"
        frames = [b"data: " + e + sep for e in events]
        done = [b"data: [DONE]" + sep] if self.send_done else []
        if behavior is Behavior.TRUNCATED:
            full = web.Response(body=b"".join(frames + done), content_type=self.sse_content_type)
            return await self._deliver(request, full, behavior)
        resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
        resp.content_type = self.sse_content_type
        slow = behavior is Behavior.SLOW
        self.active_streams += 1
        try:
            if slow:
                await self._sleep(request, self.delay)
            await resp.prepare(request)
            if behavior is Behavior.HEADERS_THEN_STALL:
                await self._stall(request)
            if behavior in (Behavior.CUT_STREAM, Behavior.STALL_STREAM):
                frames = frames[: max(0, self.cut_after)]
                done = []
            await self._write_frames(request, resp, frames + done, slow=slow)
            if behavior is Behavior.CUT_STREAM:
                await asyncio.sleep(0.05)  # let the sent events reach the peer
                self._abort(request)
                return resp
            if behavior is Behavior.STALL_STREAM:
                await self._stall(request)
            await resp.write_eof()
            return resp
        except ConnectionError:
            if not self._stopping:
                self.cancelled_streams += 1
            return resp
        finally:
            self.active_streams -= 1

    async def _write_frames(
        self, request: web.Request, resp: web.StreamResponse, frames: list[bytes], *, slow: bool
    ) -> None:
        if self.coalesce:
            if frames:
                await resp.write(b"".join(frames))
            return
        for i, frame in enumerate(frames):
            if slow and i:
                await self._sleep(request, self.delay)
            if not self.split_writes:
                await resp.write(frame)
                continue
            for j in range(0, len(frame), 3):
                await resp.write(frame[j : j + 3])
                await asyncio.sleep(0)  # give the reader a chance to see the fragment

    # ---------------------------------------------------------- embeddings
    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        self.active_requests += 1
        try:
            return await self._embeddings_inner(request)
        finally:
            self.active_requests -= 1

    async def _embeddings_inner(self, request: web.Request) -> web.StreamResponse:
        behavior = self.chat_behavior
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior)
        if (busy := self.unavailable()) is not None:
            return busy
        payload, err = await self._json_payload(request)
        if payload is None:
            return err or self.error_response(400, "bad request")
        model, err = self._resolve(payload)
        if model is None:
            return err or self.error_response(400, "bad request")
        inputs = shapes.normalize_embedding_input(payload.get("input"))
        if inputs is None:
            return self.error_response(
                400,
                "`input` must be a string, a list of strings or a list of tokens",
                param="input",
            )
        self.loaded.add(model.id)
        fmt = "base64" if payload.get("encoding_format") == "base64" else "float"
        body = shapes.embeddings_response(inputs, str(payload["model"]), encoding_format=fmt)
        return await self._deliver(request, json_response(body), behavior)
