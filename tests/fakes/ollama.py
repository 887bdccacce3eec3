"""FakeOllama: Ollama's native /api/* endpoints plus its OpenAI-compatible /v1 API.

Native API (shapes from ollama/ollama `server/routes.go`, `api/types.go`, `docs/api.md`):

* ``POST /api/chat`` and ``POST /api/generate``: streamed as NDJSON (``application/x-ndjson``)
  unless ``"stream": false``; ``done: false`` lines, then one ``done: true`` line with
  ``done_reason`` and the metrics.  ``format`` ("json" or a JSON schema), ``options``
  (``num_predict`` truncates: ``done_reason: "length"``), ``images``, ``tools`` (a tool call
  when the last message is the user's), ``suffix`` (fill-in-the-middle), ``raw``, ``think``.
  An empty prompt / message list loads the model (``done_reason: "load"``); with
  ``keep_alive: 0`` it unloads it (``"unload"``).
* ``POST /api/embed`` (``input`` -> ``embeddings``) and ``POST /api/embeddings`` (``prompt`` ->
  ``embedding``): unit vectors derived from a hash of the text (see `embedding_for`).
* ``GET /api/ps``: the models resident in the fake's VRAM.  A model becomes resident when it
  serves a request (native or OpenAI-compatible) or a load request, and stays for its
  ``keep_alive`` (Go duration string, seconds as a number, negative = forever, default
  `default_keep_alive`), counted from the end of its last request on `clock`.  A model that
  does not fit in the free VRAM is refused with Ollama's 500
  ``model requires more system memory (X GiB) than is available (Y GiB)``.
  Loads take `load_seconds` (wall clock) one at a time, as Ollama's scheduler does; other
  resident models keep serving meanwhile and requests for the loading model wait.
* ``POST /api/pull`` (progress lines, or the last one with ``"stream": false``) for the names
  in `pullable`; ``DELETE /api/delete``.

Misbehaviour: `chat_behavior` applies to chat/generate/embed/embeddings as it does to the
OpenAI endpoints (errors as ``{"error": "..."}``; CUT_STREAM / STALL_STREAM after `cut_after`
NDJSON lines); `pull_behavior` to pull and delete; `stream_error_after` makes chat/generate
send an ``{"error": ...}`` line after that many lines (a 500 when nothing was sent yet).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterator, MutableSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from aiohttp import web

from . import shapes
from .base import FakeBackend
from .models import Behavior, FakeModel
from .server import _PRE_ANSWER, Handler, PeerGone, Route, json_response

PARAMS = 8_030_261_248
N_VOCAB = 128_256
GiB = 2**30
FOREVER = math.inf
# Go's time.Duration(math.MaxInt64): what Ollama adds to "now" for a negative keep_alive
_FOREVER_SPAN = timedelta(microseconds=(2**63 - 1) // 1000)
DEFAULT_STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
PULL_NOT_FOUND = "pull model manifest: file does not exist"
NDJSON = "application/x-ndjson"

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # Go accepts both micro signs
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([^\d.]*)")
_TOKEN = re.compile(r"\s*\S+")


def size_of(model: FakeModel) -> int:
    """A stable, plausible file size in bytes."""
    return 1_000_000_000 + int(model.digest[:6], 16) * 1000


def default_vram_size(model: FakeModel) -> int:
    """Default VRAM footprint of a model: 1 to 4 GiB, stable per id."""
    return GiB + int(model.digest[6:14], 16) % (3 * GiB)


def human_bytes(n: int) -> str:
    """Ollama's format.HumanBytes2 (binary units, one decimal)."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _go_quote(text: str) -> str:
    return orjson.dumps(text).decode()


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("5m", "1h30m", "300ms", "0"); ValueError with Go's
    own message (``time: invalid duration "x"``, ``time: missing unit in duration "300"``)."""
    quoted = _go_quote(text)
    s, sign = text, 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total, pos = 0.0, 0
    while pos < len(s):
        match = _GO_PART.match(s, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {quoted}")
        number, unit = match.groups()
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _GO_UNITS:
            raise ValueError(f"time: unknown unit {_go_quote(unit)} in duration {quoted}")
        total += float(number) * _GO_UNITS[unit]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive as Ollama reads it: seconds, `FOREVER` when negative, None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        kind = {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}
        raise ValueError(f"Unsupported type: '{kind.get(type(value), type(value).__name__)}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER if seconds < 0 else seconds


def rfc3339(t: float) -> str:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction trimmed)."""
    moment = datetime.fromtimestamp(t, UTC)
    return _rfc3339_dt(moment)


def _rfc3339_dt(moment: datetime) -> str:
    frac = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def embedding_for(text: str, dimensions: int | None = None) -> list[float]:
    """The unit vector FakeOllama's native endpoints answer for `text` (8 floats)."""
    vec = shapes.embedding_vector(text)
    if dimensions is not None and 0 < dimensions < len(vec):
        vec = vec[:dimensions]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


class ManualClock:
    """An injectable clock (`fake.clock = ManualClock()`): Unix seconds that move only when
    told to."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LoadRefused(Exception):
    """A model does not fit in the free VRAM (the message is Ollama's)."""


@dataclass(eq=False)
class Resident:
    """A model in the fake's VRAM (loaded, or loading while `ready` is not set)."""

    model: FakeModel
    size: int
    keep_alive: float  # seconds; FOREVER; 0 = unload when idle
    context_length: int
    expires_at: float = FOREVER  # clock time; meaningful only while idle (refs == 0)
    refs: int = 0  # requests using it (or waiting for it to load)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)  # end the load now
    failed: bool = False
    loader: asyncio.Task[None] | None = None


class LoadedModels(MutableSet[str]):
    """`fake.loaded`: call it for the ids loaded now (sorted); it is also the set-like view
    FakeBackend's OpenAI-compatible handlers update."""

    def __init__(self, fake: FakeOllama) -> None:
        self._fake = fake

    def __call__(self) -> list[str]:
        return self._fake.loaded_ids()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._fake.loaded_ids()

    def __iter__(self) -> Iterator[str]:
        return iter(self._fake.loaded_ids())

    def __len__(self) -> int:
        return len(self._fake.loaded_ids())

    def add(self, value: str) -> None:
        model = self._fake.find_model(value)
        if model is not None and model.id not in self._fake.resident:
            self._fake.preload(model.id, check_vram=False)

    def discard(self, value: str) -> None:
        self._fake.unload(value)

    def clear(self) -> None:
        self._fake.resident.clear()

    def __repr__(self) -> str:
        return f"LoadedModels({self._fake.loaded_ids()!r})"


class FakeOllama(FakeBackend):
    """Ollama: native /api/* endpoints plus the OpenAI-compatible /v1 ones."""

    kind = "ollama"
    owned_by = "library"
    fingerprint = "fp_ollama"
    modified_at: ClassVar[str] = "2025-06-01T12:00:00.000000000Z"
    loaded: LoadedModels  # type: ignore[assignment]  # callable, and set-like for FakeBackend

    def __init__(
        self,
        models: list[FakeModel] | None = None,
        *,
        vram_bytes: int = 24 * GiB,
        model_sizes: dict[str, int] | None = None,
        pullable: dict[str, int] | None = None,
        load_seconds: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(models, **kwargs)
        self.version = "0.12.3"
        self.show_calls: dict[str, int] = {}
        self.vram_bytes = vram_bytes
        self.model_sizes: dict[str, int] = dict(model_sizes or {})  # id -> bytes (tags and ps)
        self.pullable: dict[str, int] = dict(pullable or {})  # name -> size
        self.load_seconds = load_seconds
        self.default_keep_alive: float = 300.0  # OLLAMA_KEEP_ALIVE
        self.clock: Callable[[], float] = time.time
        self.resident: dict[str, Resident] = {}  # model id -> residency
        self.loaded = LoadedModels(self)
        self.images: list[str] = []  # every base64 image received by chat/generate
        self.pull_behavior: Behavior = Behavior.OK  # pull and delete
        self.pull_seconds: float = 0.0  # a pull takes this long, spread over its lines
        self.pull_steps: int = 4  # progress lines for the model layer
        self.stream_error_after: int | None = None  # chat/generate: {"error"} after N lines
        self.stream_error_message: str = DEFAULT_STREAM_ERROR
        self._load_lock = asyncio.Lock()
        self._load_tasks: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        super().reset()  # clears `loaded`, i.e. unloads everything
        self.images.clear()
        self.pull_behavior = Behavior.OK
        self.stream_error_after = None

    async def stop(self) -> None:
        for task in list(self._load_tasks):
            task.cancel()
        await super().stop()

    def _extra_routes(self) -> list[Route]:
        return [
            ("GET", "/", self._probe(self._root, native=True)),
            ("GET", "/api/tags", self._probe(self._tags, native=True)),
            ("POST", "/api/show", self._probe(self._show, native=True)),
            ("GET", "/api/version", self._probe(self._version, native=True)),
            ("GET", "/api/ps", self._probe(self._ps, native=True)),
            ("POST", "/api/chat", self._counted(self._api_chat)),
            ("POST", "/api/generate", self._counted(self._api_generate)),
            ("POST", "/api/embed", self._counted(self._api_embed)),
            ("POST", "/api/embeddings", self._counted(self._api_embeddings)),
            ("POST", "/api/pull", self._api_pull),
            ("DELETE", "/api/delete", self._api_delete),
        ]

    def _counted(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.active_requests += 1
            try:
                return await handler(request)
            finally:
                self.active_requests -= 1

        return wrapped

    def error_response(
        self, status: int, message: str, *, native: bool = False, param: str | None = None
    ) -> web.Response:
        if native:
            return json_response({"error": message}, status=status)
        body = shapes.error_body(status, message, param=param)
        body["error"]["type"] = "api_error" if status >= 500 else "invalid_request_error"
        return json_response(body, status=status)

    def _error(self, status: int, message: str) -> web.Response:
        return self.error_response(status, message, native=True)

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
            "size": self.model_sizes.get(model.id, size_of(model)),
            "digest": model.digest,
            "details": self.details(model),
        }

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return json_response({"models": [self._entry(m) for m in self.served_models()]})

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

    # ============================================================ residency
    def vram_size(self, model: FakeModel) -> int:
        """Bytes the model takes in VRAM: `model_sizes`, else `default_vram_size`."""
        return self.model_sizes.get(model.id, default_vram_size(model))

    def vram_used(self) -> int:
        self._expire()
        return sum(r.size for r in self.resident.values())

    def vram_free(self) -> int:
        return self.vram_bytes - self.vram_used()

    def loaded_ids(self) -> list[str]:
        """Ids of the models loaded now (not those still loading)."""
        self._expire()
        return sorted(k for k, r in self.resident.items() if r.ready.is_set())

    def loading(self) -> list[str]:
        """Ids of the models being loaded now."""
        self._expire()
        return sorted(k for k, r in self.resident.items() if not r.ready.is_set())

    def expire_all(self) -> None:
        """Unload every idle model now (those serving a request stay)."""
        for key, res in list(self.resident.items()):
            if res.refs == 0 and res.ready.is_set():
                del self.resident[key]

    def unload(self, name: str) -> None:
        """Unload `name` now, or when its requests end if it is busy."""
        model = self.find_model(name)
        res = self.resident.get(model.id if model is not None else name)
        if res is None:
            return
        res.keep_alive = 0.0
        if res.refs == 0:
            self.resident.pop(res.model.id, None)

    def finish_loading(self, name: str | None = None) -> None:
        """End the current (and queued) loads now instead of after `load_seconds`."""
        for key, res in self.resident.items():
            if name is None or key == name:
                res.finish.set()

    def preload(
        self, name: str, *, keep_alive: float | str | None = None, check_vram: bool = True
    ) -> None:
        """Make `name` resident without a request (test setup); LoadRefused if it does not
        fit (unless `check_vram` is False)."""
        model = self.find_model(name)
        if model is None:
            raise KeyError(name)
        res = self._reserve(model, parse_keep_alive(keep_alive), None, check_vram=check_vram)
        res.ready.set()
        self._release(res)

    def _expire(self) -> None:
        now = self.clock()
        for key, res in list(self.resident.items()):
            if res.refs == 0 and res.ready.is_set() and res.expires_at <= now:
                del self.resident[key]

    def _reserve(
        self,
        model: FakeModel,
        keep_alive: float | None,
        num_ctx: int | None,
        *,
        check_vram: bool = True,
    ) -> Resident:
        """Take a reference on the model's residency, starting its load when absent."""
        self._expire()
        res = self.resident.get(model.id)
        if res is not None:
            if keep_alive is not None:  # as Ollama: a request without keep_alive keeps the old
                res.keep_alive = keep_alive
            res.refs += 1
            return res
        size = self.vram_size(model)
        free = self.vram_bytes - sum(r.size for r in self.resident.values())
        if check_vram and size > free:
            raise LoadRefused(
                f"model requires more system memory ({human_bytes(size)}) "
                f"than is available ({human_bytes(max(0, free))})"
            )
        res = Resident(
            model=model,
            size=size,
            keep_alive=self.default_keep_alive if keep_alive is None else keep_alive,
            context_length=num_ctx or model.context_length,
            refs=1,
        )
        self.resident[model.id] = res
        return res

    def _start_load(self, res: Resident) -> None:
        if res.ready.is_set() or res.loader is not None:
            return
        res.loader = asyncio.get_running_loop().create_task(self._load(res))
        self._load_tasks.add(res.loader)
        res.loader.add_done_callback(self._load_tasks.discard)

    async def _load(self, res: Resident) -> None:
        try:
            async with self._load_lock:  # Ollama's scheduler loads one model at a time
                if self.load_seconds > 0 and not res.finish.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(res.finish.wait(), self.load_seconds)
        except asyncio.CancelledError:
            res.failed = True
            if self.resident.get(res.model.id) is res:
                del self.resident[res.model.id]
            raise
        finally:
            res.ready.set()

    async def _until_ready(self, request: web.Request | None, res: Resident) -> int:
        """Wait for the model's load; nanoseconds waited."""
        if res.ready.is_set():
            return 0
        self._start_load(res)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not res.ready.is_set():
            transport = request.transport if request is not None else None
            if request is not None and (transport is None or transport.is_closing()):
                raise PeerGone("peer went away")
            await asyncio.sleep(0.01)
        if res.failed:
            raise LoadRefused("model load was interrupted")
        return int((loop.time() - start) * 1e9)

    def _release(self, res: Resident) -> None:
        res.refs -= 1
        if res.refs > 0 or self.resident.get(res.model.id) is not res:
            return
        if res.keep_alive <= 0:
            del self.resident[res.model.id]
        else:
            res.expires_at = self.clock() + res.keep_alive

    def _ps_entry(self, res: Resident, now: float) -> dict[str, Any]:
        model = res.model
        # busy or loading: Ollama reports now + keep_alive (the timer starts when idle)
        expires = res.expires_at if res.refs == 0 else now + res.keep_alive
        if math.isinf(expires):
            expires_text = _rfc3339_dt(datetime.fromtimestamp(now, UTC) + _FOREVER_SPAN)
        else:
            expires_text = rfc3339(expires)
        return {
            "name": model.id,
            "model": model.id,
            "size": res.size,
            "digest": model.digest,
            "details": self.details(model),
            "expires_at": expires_text,
            "size_vram": res.size,
            "context_length": res.context_length,
        }

    async def _ps(self, request: web.Request) -> web.Response:
        self._expire()
        now = self.clock()
        residents = sorted(
            self.resident.values(),
            key=lambda r: -(r.expires_at if r.refs == 0 else now + r.keep_alive),
        )
        return json_response({"models": [self._ps_entry(r, now) for r in residents]})

    # ======================================== OpenAI-compatible path, resident too
    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        return await self._openai_resident(request, super()._chat_inner, chat=True)

    async def _embeddings_inner(self, request: web.Request) -> web.StreamResponse:
        return await self._openai_resident(request, super()._embeddings_inner, chat=False)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if self.completions_status:  # refused before any model is looked at
            return await super()._completions(request)
        return await self._openai_resident(request, super()._completions, chat=True)

    async def _openai_resident(
        self, request: web.Request, handler: Handler, *, chat: bool
    ) -> web.StreamResponse:
        """Load the model into VRAM around an OpenAI-compatible request."""
        if self.chat_behavior in _PRE_ANSWER:
            return await handler(request)
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return await handler(request)
        name = payload.get("model") if isinstance(payload, dict) else None
        model = self.find_model(name) if isinstance(name, str) else None
        if model is None or (chat and model.embedding):
            return await handler(request)
        try:
            res = self._reserve(model, None, None)
        except LoadRefused as exc:
            return self.error_response(500, str(exc))
        try:
            await self._until_ready(request, res)
            return await handler(request)
        except LoadRefused as exc:
            return self.error_response(500, str(exc))
        finally:
            self._release(res)

    # ====================================================== native helpers
    @staticmethod
    def _ok(data: Any) -> web.Response:
        return web.Response(
            body=orjson.dumps(data), content_type="application/json", charset="utf-8"
        )

    async def _native_payload(
        self, request: web.Request
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        body = await request.read()
        if not body:
            return None, self._error(400, "missing request body")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, self._error(400, "invalid character looking for beginning of value")
        if not isinstance(payload, dict):
            return None, self._error(
                400, "json: cannot unmarshal value into Go value of type api.Request"
            )
        return payload, None

    def _native_model(
        self, payload: dict[str, Any], missing: str
    ) -> tuple[FakeModel | None, web.Response | None]:
        name = payload.get("model") or payload.get("name")
        if not isinstance(name, str) or not name:
            return None, self._error(400, "model is required")
        model = self.find_model(name)
        if model is None:
            return None, self._error(404, missing.format(name=name))
        return model, None

    def _keep_alive(self, payload: dict[str, Any]) -> tuple[float | None, web.Response | None]:
        try:
            return parse_keep_alive(payload.get("keep_alive")), None
        except ValueError as exc:
            return None, self._error(400, str(exc))

    @staticmethod
    def _full_name(model_id: str) -> str:
        name = model_id if ":" in model_id else f"{model_id}:latest"
        return name if "/" in name else f"registry.ollama.ai/library/{name}"

    def _take_images(self, images: Any) -> str | None:
        """Record base64 images; an error text when one is malformed."""
        if images is None:
            return None
        if not isinstance(images, list):
            return "json: cannot unmarshal images into Go value of type []api.ImageData"
        for image in images:
            if not isinstance(image, str):
                return "json: cannot unmarshal images into Go value of type []api.ImageData"
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                return "illegal base64 data at input byte 0"
        self.images.extend(images)
        return None

    @staticmethod
    def _num_predict(payload: dict[str, Any]) -> int | None:
        options = payload.get("options")
        n = options.get("num_predict") if isinstance(options, dict) else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None

    @staticmethod
    def _num_ctx(payload: dict[str, Any]) -> int | None:
        options = payload.get("options")
        n = options.get("num_ctx") if isinstance(options, dict) else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def _instance(self, schema: Any, text: str, depth: int = 0) -> Any:
        """A value satisfying a (simple) JSON schema; strings are `text`."""
        if not isinstance(schema, dict) or depth > 8:
            return text
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self._instance(options[0], text, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None and isinstance(schema.get("properties"), dict):
            kind = "object"
        if kind == "object":
            props = schema.get("properties")
            props = props if isinstance(props, dict) else {}
            required = schema.get("required")
            keys = [k for k in required if isinstance(k, str)] if required else list(props)
            return {k: self._instance(props.get(k), text, depth + 1) for k in keys}
        if kind == "array":
            return [self._instance(schema.get("items"), text, depth + 1)]
        simple: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
        return simple.get(str(kind), text)

    def _formatted(self, fmt: Any, hello: str, echo: str) -> str:
        if fmt == "json":
            return orjson.dumps({"answer": hello, "echo": echo}).decode()
        if isinstance(fmt, dict):
            return orjson.dumps(self._instance(fmt, echo)).decode()
        return f"{hello}. You said: {echo}"

    def _tool_call(self, payload: dict[str, Any], echo: str) -> dict[str, Any]:
        tools = payload.get("tools")
        first = tools[0] if isinstance(tools, list) and tools else {}
        fn = first.get("function") if isinstance(first, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name") if isinstance(fn.get("name"), str) else "tool"
        params = fn.get("parameters")
        params = params if isinstance(params, dict) else {}
        props = params.get("properties")
        props = props if isinstance(props, dict) else {}
        required = params.get("required")
        keys = [k for k in required if isinstance(k, str)] if isinstance(required, list) else []
        arguments = {k: self._instance(props.get(k), echo) for k in keys}
        call_id = "call_" + hashlib.sha256(f"{name}{echo}".encode()).hexdigest()[:8]
        return {"id": call_id, "function": {"index": 0, "name": name, "arguments": arguments}}

    # ============================================== /api/chat, /api/generate
    async def _api_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native_generate(request, chat=True)

    async def _api_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native_generate(request, chat=False)

    async def _native_generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        behavior = self.chat_behavior
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior, native=True)
        payload, err = await self._native_payload(request)
        if payload is None:
            return err or self._error(400, "bad request")
        model, err = self._native_model(payload, "model '{name}' not found")
        if model is None:
            return err or self._error(400, "bad request")
        requested = str(payload.get("model") or payload.get("name"))
        keep_alive, err = self._keep_alive(payload)
        if err is not None:
            return err
        messages = payload.get("messages") if chat else None
        if chat:
            if messages is None:
                messages = []
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
            ):
                return self._error(
                    400, "json: cannot unmarshal messages into Go value of type []api.Message"
                )
            empty = not messages
        else:
            prompt = payload.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                return self._error(
                    400, "json: cannot unmarshal prompt into Go value of type string"
                )
            empty = not prompt
        if empty and keep_alive == 0:
            self.unload(model.id)
            return await self._deliver(
                request, self._ok(self._done_only(requested, chat, "unload")), behavior
            )
        if model.embedding:
            verb = "chat" if chat else "generate"
            return self._error(400, f'"{requested}" does not support {verb}')
        if chat and payload.get("tools") and not model.tools:
            return self._error(400, f"{self._full_name(model.id)} does not support tools")
        think = payload.get("think")
        if think is True or (isinstance(think, str) and think not in ("", "false")):
            return self._error(400, f'"{requested}" does not support thinking')
        if (
            not chat
            and payload.get("raw")
            and any(payload.get(k) for k in ("template", "system", "context"))
        ):
            return self._error(400, "raw mode does not support template, system, or context")
        fmt = payload.get("format")
        if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
            raw = _go_quote(orjson.dumps(fmt).decode())
            return self._error(
                500, f'invalid format: {raw}; expected "json" or a valid JSON Schema object'
            )
        images = [m.get("images") for m in messages or []] if chat else [payload.get("images")]
        for image_list in images:
            if (problem := self._take_images(image_list)) is not None:
                return self._error(400, problem)

        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            res = self._reserve(model, keep_alive, self._num_ctx(payload))
        except LoadRefused as exc:
            return self._error(500, str(exc))
        try:
            try:
                load_ns = await self._until_ready(request, res)
            except LoadRefused as exc:
                return self._error(500, str(exc))
            if empty:
                body = self._done_only(requested, chat, "load")
                return await self._deliver(request, self._ok(body), behavior)
            return await self._answer(request, payload, requested, chat, load_ns, started)
        finally:
            self._release(res)

    def _done_only(self, model: str, chat: bool, reason: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "created_at": rfc3339(self.clock())}
        if chat:
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body.update({"done": True, "done_reason": reason})
        return body

    async def _answer(
        self,
        request: web.Request,
        payload: dict[str, Any],
        requested: str,
        chat: bool,
        load_ns: int,
        started: float,
    ) -> web.StreamResponse:
        hello = self.answer_text(requested)
        tool_call: dict[str, Any] | None = None
        fmt = payload.get("format")
        if chat:
            messages: list[dict[str, Any]] = payload.get("messages") or []
            last = messages[-1]
            users = [m for m in messages if m.get("role") == "user"]
            echo = str(users[-1].get("content") or "") if users else ""
            if payload.get("tools") and last.get("role") == "user":
                tool_call = self._tool_call(payload, echo)
                text = ""
            elif last.get("role") == "tool":
                text = f"{hello}. The tool said: {last.get('content') or ''}"
            else:
                text = self._formatted(fmt, hello, echo)
            prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
            prompt_tokens = max(1, prompt_chars // 4 + 4 * len(messages))
        else:
            prompt = str(payload.get("prompt") or "")
            suffix = payload.get("suffix")
            if isinstance(suffix, str) and suffix:
                text = f"{hello}. You said: {prompt} Filling in before: {suffix}"
            else:
                text = self._formatted(fmt, hello, prompt)
            prompt_tokens = max(1, len(prompt) // 4 + 1)

        tokens = _TOKEN.findall(text)
        done_reason = "stop"
        limit = self._num_predict(payload)
        if tool_call is None and limit is not None and limit < len(tokens):
            tokens, done_reason = tokens[:limit], "length"
            text = "".join(tokens)
        eval_count = len(tokens) if tool_call is None else 12
        prompt_ns = prompt_tokens * 400_000
        eval_ns = eval_count * 20_000_000
        load_ns = max(load_ns, 1_250_000)
        elapsed_ns = int((asyncio.get_running_loop().time() - started) * 1e9)
        metrics = {
            "total_duration": max(elapsed_ns, load_ns + prompt_ns + eval_ns + 1_000_000),
            "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count,
            "eval_duration": eval_ns,
        }
        context: dict[str, Any] = {}
        if not chat and not payload.get("raw"):
            context["context"] = list(range(1, min(prompt_tokens + eval_count, 64) + 1))

        def line(content: str, *, done: bool, calls: bool = False) -> dict[str, Any]:
            body: dict[str, Any] = {"model": requested, "created_at": rfc3339(self.clock())}
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls and tool_call is not None:
                    message["tool_calls"] = [tool_call]
                body["message"] = message
            else:
                body["response"] = content
            body["done"] = done
            if done:
                body["done_reason"] = done_reason
                body.update(context)
                body.update(metrics)
            return body

        streamed = payload.get("stream") is not False  # Ollama streams unless told not to
        error_after = self.stream_error_after
        if not streamed:
            if error_after is not None:
                return self._error(500, self.stream_error_message)
            whole = line(text, done=True, calls=True)
            return await self._deliver(request, self._ok(whole), self.chat_behavior)
        lines: list[dict[str, Any]] = []
        if tool_call is not None:
            lines.append(line("", done=False, calls=True))
        elif tokens:
            n = min(max(1, self.stream_chunks), len(tokens))
            for i in range(n):
                piece = "".join(tokens[i * len(tokens) // n : (i + 1) * len(tokens) // n])
                lines.append(line(piece, done=False))
        lines.append(line("", done=True))
        encoded = [orjson.dumps(x) + b"\n" for x in lines]
        if error_after is not None:
            if error_after <= 0:
                return self._error(500, self.stream_error_message)
            encoded = [*encoded[:error_after], orjson.dumps({"error": self.stream_error_message})]
            encoded[-1] += b"\n"
        return await self._ndjson(request, encoded, self.chat_behavior)

    async def _ndjson(
        self,
        request: web.Request,
        lines: list[bytes],
        behavior: Behavior,
        *,
        interval: float = 0.0,
        after: Callable[[int], None] | None = None,
    ) -> web.StreamResponse:
        """Stream NDJSON lines, misbehaving as `behavior` says (see server.py);
        `after(i)` runs once line i is written."""
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior, native=True)
        if behavior is Behavior.TRUNCATED:
            full = web.Response(body=b"".join(lines), content_type=NDJSON)
            return await self._deliver(request, full, behavior)
        resp = web.StreamResponse(status=200)
        resp.content_type = NDJSON
        slow = behavior is Behavior.SLOW
        self.active_streams += 1
        try:
            if slow:
                await self._sleep(request, self.delay)
            await resp.prepare(request)
            if behavior is Behavior.HEADERS_THEN_STALL:
                await self._stall(request)
            if behavior in (Behavior.CUT_STREAM, Behavior.STALL_STREAM):
                lines = lines[: max(0, self.cut_after)]
            if self.coalesce and not slow and interval <= 0 and after is None:
                lines = [b"".join(lines)] if lines else []
            for i, data in enumerate(lines):
                if i and (slow or interval > 0):
                    await self._sleep(request, self.delay if slow else interval)
                await self._write_frames(request, resp, [data], slow=False)
                if after is not None:
                    after(i)
            if behavior is Behavior.CUT_STREAM:
                await asyncio.sleep(0.05)  # let the sent lines reach the peer
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

    # ================================================ /api/embed, /api/embeddings
    async def _api_embed(self, request: web.Request) -> web.StreamResponse:
        return await self._native_embed(request, legacy=False)

    async def _api_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._native_embed(request, legacy=True)

    async def _native_embed(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        behavior = self.chat_behavior
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior, native=True)
        payload, err = await self._native_payload(request)
        if payload is None:
            return err or self._error(400, "bad request")
        if legacy:
            prompt = payload.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                return self._error(
                    400, "json: cannot unmarshal prompt into Go value of type string"
                )
            inputs = [prompt] if prompt else []
        else:
            raw = payload.get("input")
            if isinstance(raw, str):
                inputs = [raw] if raw else []
            elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
                inputs = list(raw)
            elif raw is None:
                inputs = []
            else:
                return self._error(400, "invalid input type")
        missing = 'model "{name}" not found, try pulling it first' if legacy else None
        model, err = self._native_model(payload, missing or "model '{name}' not found")
        if model is None:
            return err or self._error(400, "bad request")
        requested = str(payload.get("model") or payload.get("name"))
        keep_alive, err = self._keep_alive(payload)
        if err is not None:
            return err
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            res = self._reserve(model, keep_alive, self._num_ctx(payload))
        except LoadRefused as exc:
            return self._error(500, str(exc))
        try:
            try:
                load_ns = max(await self._until_ready(request, res), 1_250_000)
            except LoadRefused as exc:
                return self._error(500, str(exc))
            if legacy:
                vector = embedding_for(inputs[0]) if inputs else []
                return await self._deliver(request, self._ok({"embedding": vector}), behavior)
            dims = payload.get("dimensions")
            dims = dims if isinstance(dims, int) and not isinstance(dims, bool) else None
            body: dict[str, Any] = {
                "model": requested,
                "embeddings": [embedding_for(text, dims) for text in inputs],
            }
            if inputs:
                tokens = sum(max(1, len(t.split())) for t in inputs)
                elapsed = int((loop.time() - started) * 1e9)
                body.update(
                    {
                        "total_duration": max(elapsed, load_ns + tokens * 300_000),
                        "load_duration": load_ns,
                        "prompt_eval_count": tokens,
                    }
                )
            return await self._deliver(request, self._ok(body), behavior)
        finally:
            self._release(res)

    # ====================================================== /api/pull, /api/delete
    def _pullable_size(self, name: str) -> int | None:
        for key in (name, f"{name}:latest", name.removesuffix(":latest")):
            if key in self.pullable:
                return self.pullable[key]
        model = self.find_model(name)
        if model is not None:
            return self.model_sizes.get(model.id, size_of(model))
        return None

    def _pull_lines(self, name: str, size: int, cached: bool) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        layers = [("model", size), ("template", 1_429), ("license", 7_711), ("params", 96)]
        for kind, total in layers:
            digest = "sha256:" + hashlib.sha256(f"{name}/{kind}".encode()).hexdigest()
            steps = 1 if cached or kind != "model" else max(1, self.pull_steps)
            for i in range(1, steps + 1):
                lines.append(
                    {
                        "status": f"pulling {digest[7:19]}",
                        "digest": digest,
                        "total": total,
                        "completed": total * i // steps,
                    }
                )
        lines += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        return lines

    def _register_pulled(self, name: str, size: int) -> None:
        model = self.find_model(name)
        if model is None:
            model = FakeModel(name if ":" in name else f"{name}:latest")
            self.models.append(model)
        self.model_sizes.setdefault(model.id, size)

    async def _api_pull(self, request: web.Request) -> web.StreamResponse:
        behavior = self.pull_behavior
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior, native=True)
        payload, err = await self._native_payload(request)
        if payload is None:
            return err or self._error(400, "bad request")
        name = payload.get("model") or payload.get("name")
        if not isinstance(name, str) or not name:
            return self._error(400, "invalid model name")
        size = self._pullable_size(name)
        streamed = payload.get("stream") is not False
        if size is None:
            if not streamed:
                return self._error(500, PULL_NOT_FOUND)
            lines = [b'{"status":"pulling manifest"}\n', orjson.dumps({"error": PULL_NOT_FOUND})]
            lines[-1] += b"\n"
            return await self._ndjson(request, lines, behavior)
        progress = self._pull_lines(name, size, cached=self.find_model(name) is not None)
        if not streamed:
            await self._sleep(request, self.pull_seconds)
            self._register_pulled(name, size)
            return await self._deliver(request, self._ok(progress[-1]), behavior)
        encoded = [orjson.dumps(x) + b"\n" for x in progress]
        last = len(encoded) - 1

        def after(i: int) -> None:
            if i == last:
                self._register_pulled(name, size)

        interval = self.pull_seconds / max(1, last)
        return await self._ndjson(request, encoded, behavior, interval=interval, after=after)

    async def _api_delete(self, request: web.Request) -> web.StreamResponse:
        behavior = self.pull_behavior
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior, native=True)
        payload, err = await self._native_payload(request)
        if payload is None:
            return err or self._error(400, "bad request")
        model, err = self._native_model(payload, "model '{name}' not found")
        if model is None:
            return err or self._error(400, "bad request")
        self.unload(model.id)
        self.models.remove(model)
        return await self._deliver(request, web.Response(status=200), behavior)
