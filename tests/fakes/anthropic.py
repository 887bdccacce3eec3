"""FakeAnthropic: the Anthropic Messages API on a FakeServer, plus `CloudFake`, its base.

Endpoints: ``POST /v1/messages`` (JSON or SSE with ``event:`` lines), ``POST
/v1/messages/count_tokens``, ``GET /v1/models`` (paged: data, has_more, first_id,
last_id) and ``GET /v1/models/{id}``. Shapes follow the API reference and the official
``anthropic`` SDK's types; tests/unit/test_cloud_fakes.py proves the SDK parses them.

Authentication: ``x-api-key`` must equal `api_key` and ``anthropic-version`` must be
present (any value). ``Authorization: Bearer <key>`` is refused unless `accept_bearer`
(the 2.x SDK sends its api_key that way, Nexus is expected to send ``x-api-key``).
Every request is recorded with its headers in `requests`.

Answers are deterministic (see `FakeAnthropic`): an echo of the last user text, a
``tool_use`` of the first tool when tools are given, a text naming the tool result after a
``tool_result``; ``max_tokens`` and ``stop_sequences`` are honoured word by word. Requests
are validated like the real API for the things a gateway can get wrong (unknown fields,
``max_tokens``, roles, block types, image sources, tool_use / tool_result pairing) and
refused with 400 ``invalid_request_error``.

Misbehaviour: `chat_behavior` / `health_behavior` as in server.py (a stream's
CUT_STREAM / STALL_STREAM count `cut_after` events from the first content_block_delta);
`error_status` answers every API call with that status in Anthropic's shape (529
``overloaded_error``...); `stream_error` ends a stream after `cut_after` events with an
``event: error`` of that status's type (the SDK raises it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from aiohttp import web

from . import shapes
from .models import Behavior, FakeModel, ReceivedRequest
from .server import _PRE_ANSWER, FakeServer, Handler, Route, json_response

ApiHandler = Callable[[web.Request, Behavior], Awaitable[web.StreamResponse]]

IMAGE_TOKENS = 85  # what one image adds to the fake's token counts


# ------------------------------------------------------------------ shared helpers
def example_from_schema(schema: Any, name: str = "value") -> Any:
    """A deterministic value for a JSON / OpenAPI schema: objects get their required keys."""
    if not isinstance(schema, dict):
        return f"{name}-example"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return example_from_schema(options[0], name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower() if kind else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        keys = [k for k in required if isinstance(k, str)] if isinstance(required, list) else []
        return {k: example_from_schema(props.get(k), k) for k in keys}
    if kind == "array":
        return [example_from_schema(schema.get("items"), name)]
    simple: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
    return simple.get(kind, f"{name}-example")


def split_words(text: str, pieces: int) -> list[str]:
    """`text` in at most `pieces` non-empty consecutive parts, cut between words."""
    words = re.findall(r"\s*\S+\s*", text)
    if not words:
        return [text] if text else []
    n, pieces = len(words), max(1, min(pieces, len(words)))
    return ["".join(words[i * n // pieces : (i + 1) * n // pieces]) for i in range(pieces)]


def word_count(text: str) -> int:
    return len(text.split())


def truncate_words(text: str, limit: int) -> str:
    """The first `limit` words of `text`, keeping its spacing."""
    spans = list(re.finditer(r"\S+", text))
    if len(spans) <= limit:
        return text
    return text[: spans[limit - 1].end()] if limit > 0 else ""


def sniff_image(raw: bytes) -> str | None:
    """The media type the bytes really are (PNG, JPEG, GIF, WebP), or None."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class CloudFake(FakeServer):
    """What the cloud API fakes share: scripted replies, error switches, SSE delivery.

    Knobs (all reset by `reset()`): `reply_text` (the exact text of every text answer),
    `tool_input` (the arguments of every tool call instead of the schema's example),
    `error_status` (every API call answers that status in the provider's error shape),
    `stream_error` (a stream ends with the provider's in-stream error of that status
    after `cut_after` events), `refuse` (the model declines: Anthropic's stop_reason
    "refusal" with no content, Gemini's finishReason "SAFETY" with an empty text).
    `images` lists every image the fake was sent.
    """

    sse_content_type: ClassVar[str] = "text/event-stream"
    default_models: ClassVar[tuple[FakeModel, ...]] = ()

    def __init__(self, models: list[FakeModel] | None, *, api_key: str, stream_chunks: int) -> None:
        super().__init__()
        self.models: list[FakeModel] = list(models) if models else list(self.default_models)
        self.api_key = api_key
        self.stream_chunks = stream_chunks
        self.reply_text: str | None = None
        self.tool_input: dict[str, Any] | None = None
        self.error_status: int | None = None
        self.stream_error: int | None = None
        self.refuse = False
        self.images: list[dict[str, Any]] = []

    def reset(self) -> None:
        super().reset()
        self.reply_text = None
        self.tool_input = None
        self.error_status = None
        self.stream_error = None
        self.refuse = False
        self.images.clear()

    def find_model(self, name: str) -> FakeModel | None:
        return next((m for m in self.models if m.id == name), None)

    # ------------------------------------------------------------- errors
    def status_error(self, status: int) -> web.Response:
        """The answer for `error_status`: the provider's shape, Retry-After on 429."""
        resp = self.error_response(status, self.default_error_message(status))
        if status == 429:
            resp.headers["Retry-After"] = "7"
        return resp

    def default_error_message(self, status: int) -> str:
        return f"fake {self.kind} error {status}"

    def stream_error_frame(self, status: int) -> bytes:
        raise NotImplementedError

    # ------------------------------------------------------------ plumbing
    def _api(self, handler: ApiHandler) -> Handler:
        """Wrap an API call: counted in `active_requests`, `chat_behavior` and `error_status`."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.active_requests += 1
            try:
                behavior = self.chat_behavior
                if behavior in _PRE_ANSWER:
                    return await self._misbehave(request, behavior)
                if self.error_status is not None:
                    return self.status_error(self.error_status)
                return await handler(request, behavior)
            finally:
                self.active_requests -= 1

        return wrapped

    async def _payload(self, request: web.Request) -> dict[str, Any] | None:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None
        return payload if isinstance(payload, dict) else None

    async def _sse(
        self,
        request: web.Request,
        head: list[bytes],
        body: list[bytes],
        behavior: Behavior,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Send `head` + `body` frames; cuts, stalls and errors count `body` frames only."""
        headers = {"Cache-Control": "no-cache", **(headers or {})}
        if behavior is Behavior.TRUNCATED:
            full = web.Response(body=b"".join(head + body), headers=headers)
            full.content_type = self.sse_content_type
            return await self._deliver(request, full, behavior)
        error = None if self.stream_error is None else self.stream_error_frame(self.stream_error)
        cut = error is not None or behavior in (Behavior.CUT_STREAM, Behavior.STALL_STREAM)
        frames = (
            head + (body[: max(0, self.cut_after)] if cut else body) + ([error] if error else [])
        )
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = self.sse_content_type
        slow = behavior is Behavior.SLOW
        self.active_streams += 1
        try:
            if slow:
                await self._sleep(request, self.delay)
            await resp.prepare(request)
            if behavior is Behavior.HEADERS_THEN_STALL:
                await self._stall(request)
            for i, frame in enumerate(frames):
                if slow and i:
                    await self._sleep(request, self.delay)
                await resp.write(frame)
            if error is None and behavior is Behavior.CUT_STREAM:
                await asyncio.sleep(0.05)  # let the sent events reach the peer
                self._abort(request)
                return resp
            if error is None and behavior is Behavior.STALL_STREAM:
                await self._stall(request)
            await resp.write_eof()
            return resp
        except ConnectionError:
            if not self._stopping:
                self.cancelled_streams += 1
            return resp
        finally:
            self.active_streams -= 1


# ------------------------------------------------------------------ Anthropic shapes
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES: dict[int, str] = {
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape: {"type": "error", "error": {type, message}, "request_id"}."""
    return {
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": new_id("req_"),
    }


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_COUNT_FIELDS = frozenset(
    {
        "model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
        "context_management", "output_config", "output_format", "cache_control", "speed",
    }
)  # fmt: skip
_MESSAGE_FIELDS = _COUNT_FIELDS | {
    "max_tokens", "stream", "stop_sequences", "temperature", "top_k", "top_p", "metadata",
    "service_tier", "container", "inference_geo",
}  # fmt: skip
_USER_BLOCKS = frozenset({"text", "image", "document", "search_result", "tool_result"})
_ASSISTANT_BLOCKS = frozenset(
    {"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use",
     "web_search_tool_result"}
)  # fmt: skip
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")


def blocks_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's content as a list of blocks (a string is one text block)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def text_of(blocks: list[dict[str, Any]]) -> str:
    return " ".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return text_of([b for b in content if isinstance(b, dict)]) if isinstance(content, list) else ""


def _image_problem(block: dict[str, Any], where: str) -> str | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return f"{where}.source: Field required"
    kind = source.get("type")
    if kind == "url":
        url = source.get("url")
        ok = isinstance(url, str) and url.startswith(("http://", "https://"))
        return None if ok else f"{where}.source.url.url: Input should be a valid URL"
    if kind == "file":
        ok = isinstance(source.get("file_id"), str)
        return None if ok else f"{where}.source.file.file_id: Field required"
    if kind != "base64":
        return (
            f"{where}.source: Input tag '{kind}' found using 'type' does not match any of "
            "the expected tags: 'base64', 'file', 'url'"
        )
    media = source.get("media_type")
    if media not in _IMAGE_TYPES:
        return (
            f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    try:
        raw = base64.b64decode(str(source.get("data")), validate=True)
    except (binascii.Error, ValueError):
        return f"{where}.source.base64.data: Invalid base64 data"
    actual = sniff_image(raw)
    if actual is None:
        return f"{where}.source.base64.data: Could not process image"
    if actual != media:
        return (
            f"{where}.source.base64: The image was specified using the {media} media type, "
            f"but the image appears to be a {actual} image"
        )
    return None


def _block_problem(block: Any, where: str, role: str) -> str | None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return f"{where}: Input should be a valid dictionary or object to extract fields from"
    kind = block["type"]
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed:
        expected = ", ".join(f"'{t}'" for t in sorted(allowed))
        return (
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {expected}"
        )
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            return f"{where}.text: Field required"
        return None if text else "messages: text content blocks must be non-empty"
    if kind == "image":
        return _image_problem(block, where)
    if kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            return f"{where}.tool_use: `id` and `name` are required"
        return None if isinstance(block.get("input"), dict) else f"{where}.input: Field required"
    if kind == "tool_result":
        return _tool_result_problem(block, where)
    return None


def _tool_result_problem(block: dict[str, Any], where: str) -> str | None:
    if not isinstance(block.get("tool_use_id"), str):
        return f"{where}.tool_result.tool_use_id: Field required"
    content = block.get("content")
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}.tool_result.content: Input should be a valid list"
    for k, inner in enumerate(content):
        kind = inner.get("type") if isinstance(inner, dict) else None
        if kind not in ("text", "image", "document", "search_result"):
            return f"{where}.tool_result.content.{k}: Input tag '{kind}' is not allowed here"
        if kind == "image" and (problem := _image_problem(inner, f"{where}.content.{k}")):
            return problem
    return None


def _messages_problem(messages: Any, *, strict_turns: bool) -> str | None:
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = msg.get("content")
        if isinstance(content, str):
            if not content:
                return "messages: text content blocks must be non-empty"
            continue
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content: Input should be a non-empty string or list of blocks"
        for j, block in enumerate(content):
            if problem := _block_problem(block, f"messages.{i}.content.{j}", role):
                return problem
    if strict_turns:
        if messages[0]["role"] != "user":
            return 'messages: first message must use the "user" role'
        for prev, msg in itertools.pairwise(messages):
            if prev["role"] == msg["role"]:
                return (
                    'messages: roles must alternate between "user" and "assistant", but '
                    f'found multiple "{msg["role"]}" roles in a row'
                )
    return _pairing_problem(messages)


def _merged_turns(messages: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Consecutive messages of one role merged into one turn, as the real API does."""
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for msg in messages:
        if turns and turns[-1][0] == msg["role"]:
            turns[-1][1].extend(blocks_of(msg))
        else:
            turns.append((msg["role"], blocks_of(msg)))
    return turns


def _pairing_problem(messages: list[dict[str, Any]]) -> str | None:
    """Each tool_use answered by a tool_result in the next turn, and only those."""
    turns = _merged_turns(messages)
    for i, (role, blocks) in enumerate(turns):
        if role == "assistant":
            ids = [str(b["id"]) for b in blocks if b.get("type") == "tool_use"]
            if not ids or i + 1 == len(turns):
                continue
            answered = {b.get("tool_use_id") for b in turns[i + 1][1]}
            if missing := [x for x in ids if x not in answered]:
                return (
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message."
                )
            continue
        previous = turns[i - 1][1] if i else []
        known = {b.get("id") for b in previous if b.get("type") == "tool_use"}
        for j, block in enumerate(blocks):
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in known:
                return (
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                    "block must have a corresponding `tool_use` block in the previous message."
                )
    return None


def _tools_problem(tools: Any, choice: Any) -> str | None:
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        return "tools: Input should be a valid list"
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return f"tools.{i}: Input should be a valid dictionary"
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool (web_search_20250305, ...)
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            return f"tools.{i}.custom.input_schema: Field required"
        if schema.get("type") != "object":
            return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
        if name in names:
            return "tools: Tool names must be unique."
        names.add(name)
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        return (
            "tool_choice: Input tag found using 'type' does not match 'auto', 'any', 'tool', 'none'"
        )
    if kind == "tool" and choice.get("name") not in names:
        return f"tool_choice: Tool '{choice.get('name')}' not found in the provided tools"
    if kind in ("any", "tool") and not names:
        return "tool_choice: may only be specified while providing tools"
    return None


def _system_ok(system: Any) -> bool:
    if system is None or isinstance(system, str):
        return True
    return isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" for b in system
    )


def _params_problem(payload: dict[str, Any], *, count_only: bool) -> str | None:
    allowed = _COUNT_FIELDS if count_only else _MESSAGE_FIELDS
    for key in payload:
        if key not in allowed:
            return f"{key}: Extra inputs are not permitted"
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "model: Field required"
    if not count_only:
        max_tokens = payload.get("max_tokens")
        if max_tokens is None:
            return "max_tokens: Field required"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Input should be a valid integer"
        if max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
    system = payload.get("system")
    if not _system_ok(system):
        return "system: Input should be a valid string or a list of text blocks"
    stops = payload.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        return "stop_sequences: Input should be a valid list of strings"
    temperature = payload.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or not 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    return None


def request_problem(
    payload: dict[str, Any] | None, *, count_only: bool = False, strict_turns: bool = True
) -> str | None:
    """Why the real API would refuse this Messages (or count_tokens) body, or None."""
    if payload is None:
        return "Request body must be a JSON object"
    return (
        _params_problem(payload, count_only=count_only)
        or _messages_problem(payload.get("messages"), strict_turns=strict_turns)
        or _tools_problem(payload.get("tools"), payload.get("tool_choice"))
    )


def images_in(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every image block of the user turns (tool results included), in order."""
    found: list[dict[str, Any]] = []
    for msg in payload.get("messages") or []:
        for block in blocks_of(msg):
            if block.get("type") == "image":
                found.append(block)
            elif block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                found.extend(
                    b for b in block["content"] if isinstance(b, dict) and b.get("type") == "image"
                )
    return found


def count_input_tokens(payload: dict[str, Any]) -> int:
    """The fake's token count: words of every text, 3 per message, IMAGE_TOKENS per image."""
    system = payload.get("system")
    texts = [system if isinstance(system, str) else text_of(system or [])]
    messages = payload.get("messages") or []
    for msg in messages:
        for block in blocks_of(msg):
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                texts.append(json.dumps(block.get("input")))
            elif kind == "tool_result":
                texts.append(_tool_result_text(block))
    tools = payload.get("tools")
    tool_tokens = len(orjson.dumps(tools)) // 4 if tools else 0
    words = sum(word_count(t) for t in texts)
    return max(1, words + 3 * len(messages) + IMAGE_TOKENS * len(images_in(payload)) + tool_tokens)


@dataclass
class AnthropicReply:
    """What the fake answers: content blocks, stop reason and output token count."""

    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


class FakeAnthropic(CloudFake):
    """The Anthropic Messages API (see the module docstring).

    Scripting: `reply_text` replaces every text answer; `tool_input` the arguments of the
    tool call (default: built from the tool's ``input_schema`` required properties);
    `tool_preamble` puts a text block before the tool_use, as Claude often does;
    `cache_read_input_tokens` / `cache_creation_input_tokens` go into every usage.
    `strict_turns` (default True) refuses a first assistant turn and two turns of one
    role in a row; the real API merges such turns, so set it False to behave like it.
    """

    kind = "anthropic"
    default_models = (
        FakeModel("claude-sonnet-4-5", context_length=200_000, vision=True),
        FakeModel("claude-haiku-4-5", context_length=200_000, vision=True),
    )
    max_output_tokens: ClassVar[int] = 64_000
    created_at: ClassVar[str] = "2025-09-29T00:00:00Z"

    def __init__(
        self,
        models: list[FakeModel] | None = None,
        *,
        api_key: str = "sk-ant-test",
        accept_bearer: bool = False,
        strict_turns: bool = True,
        stream_chunks: int = 5,
    ) -> None:
        super().__init__(models, api_key=api_key, stream_chunks=stream_chunks)
        self.accept_bearer = accept_bearer
        self.strict_turns = strict_turns
        self.tool_preamble: str | None = None
        self.cache_read_input_tokens = 0
        self.cache_creation_input_tokens = 0

    def reset(self) -> None:
        super().reset()
        self.tool_preamble = None
        self.cache_read_input_tokens = 0
        self.cache_creation_input_tokens = 0

    def _routes(self) -> list[Route]:
        return [
            ("POST", "/v1/messages", self._api(self._messages)),
            ("POST", "/v1/messages/count_tokens", self._api(self._count_tokens)),
            ("GET", "/v1/models", self._probe(self._models)),
            ("GET", "/v1/models/{model_id}", self._probe(self._model)),
        ]

    # ------------------------------------------------------------ recorded
    @property
    def message_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def count_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages/count_tokens"]

    # -------------------------------------------------------------- errors
    def error_response(
        self, status: int, message: str, *, native: bool = False, param: str | None = None
    ) -> web.Response:
        body = error_body(status, message)
        return json_response(body, status=status, headers={"request-id": body["request_id"]})

    def default_error_message(self, status: int) -> str:
        return _ERROR_MESSAGES.get(status, super().default_error_message(status))

    def stream_error_frame(self, status: int) -> bytes:
        err = {"type": error_type(status), "message": self.default_error_message(status)}
        return sse_event("error", {"type": "error", "error": err})

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        return self.error_response(404, "Not Found")

    def _auth_problem(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key")
        bearer = request.headers.get("Authorization", "")
        if key is None and self.accept_bearer and bearer.startswith("Bearer "):
            key = bearer.removeprefix("Bearer ")
        if key is None:
            return self.error_response(401, "x-api-key header is required")
        if key != self.api_key:
            return self.error_response(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self.error_response(400, "anthropic-version: header is required")
        return None

    async def _checked(
        self, request: web.Request, *, count_only: bool
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        """The validated payload, or the error answer."""
        if denied := self._auth_problem(request):
            return None, denied
        payload = await self._payload(request)
        problem = request_problem(payload, count_only=count_only, strict_turns=self.strict_turns)
        if problem or payload is None:
            return None, self.error_response(400, problem or "invalid request")
        if self.find_model(payload["model"]) is None:
            return None, self.error_response(404, f"model: {payload['model']}")
        return payload, None

    # ---------------------------------------------------------------- models
    def model_entry(self, model: FakeModel) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model.id,
            "display_name": model.id.replace("-", " ").title(),
            "created_at": self.created_at,
            "max_input_tokens": model.context_length,
            "max_tokens": self.max_output_tokens,
            "lifecycle": "active",
        }

    async def _models(self, request: web.Request) -> web.Response:
        if denied := self._auth_problem(request):
            return denied
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return self.error_response(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return self.error_response(400, "limit: Input should be between 1 and 1000")
        ids = [m.id for m in self.models]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after in ids:
            start = ids.index(after) + 1
            page, has_more = self.models[start : start + limit], start + limit < len(ids)
        elif before in ids:
            end = ids.index(before)
            start = max(0, end - limit)
            page, has_more = self.models[start:end], start > 0
        else:
            page, has_more = self.models[:limit], limit < len(ids)
        return json_response(
            {
                "data": [self.model_entry(m) for m in page],
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    async def _model(self, request: web.Request) -> web.Response:
        if denied := self._auth_problem(request):
            return denied
        model = self.find_model(request.match_info["model_id"])
        if model is None:
            return self.error_response(404, f"model: {request.match_info['model_id']}")
        return json_response(self.model_entry(model))

    # --------------------------------------------------------------- answers
    async def _count_tokens(self, request: web.Request, behavior: Behavior) -> web.StreamResponse:
        payload, err = await self._checked(request, count_only=True)
        if payload is None:
            return err or self.error_response(400, "invalid request")
        body = {"input_tokens": count_input_tokens(payload)}
        return await self._deliver(request, json_response(body), behavior)

    async def _messages(self, request: web.Request, behavior: Behavior) -> web.StreamResponse:
        payload, err = await self._checked(request, count_only=False)
        if payload is None:
            return err or self.error_response(400, "invalid request")
        self.images.extend(images_in(payload))
        reply = self.plan_reply(payload)
        message = self.message_body(payload, reply)
        headers = {"request-id": new_id("req_")}
        if not payload.get("stream"):
            return await self._deliver(request, json_response(message, headers=headers), behavior)
        head, body = self.stream_events(message, reply)
        return await self._sse(request, head, body, behavior, headers)

    def plan_reply(self, payload: dict[str, Any]) -> AnthropicReply:
        if self.refuse:
            return AnthropicReply([], "refusal", None, 1)
        last = payload["messages"][-1]
        last_blocks = blocks_of(last) if last["role"] == "user" else []
        results = [b for b in last_blocks if b.get("type") == "tool_result"]
        if results:
            shown = "; ".join(_tool_result_text(b) for b in results)
            return self._text_reply(payload, self.reply_text or f"Tool result received: {shown}")
        tool = self._chosen_tool(payload)
        if tool is not None:
            return self._tool_reply(tool)
        return self._text_reply(payload, self.reply_text or self.echo_text(payload))

    @staticmethod
    def echo_text(payload: dict[str, Any]) -> str:
        user = [m for m in payload["messages"] if m["role"] == "user"]
        blocks = blocks_of(user[-1]) if user else []
        text = f"Echo: {text_of(blocks) or '(no text)'}"
        images = sum(1 for b in blocks if b.get("type") == "image")
        return f"{text} [{images} image(s)]" if images else text

    @staticmethod
    def _chosen_tool(payload: dict[str, Any]) -> dict[str, Any] | None:
        tools: list[dict[str, Any]] = [
            t for t in payload.get("tools") or [] if t.get("type") in (None, "custom")
        ]
        choice = payload.get("tool_choice") or {"type": "auto"}
        if not tools or choice.get("type") == "none":
            return None
        if choice.get("type") == "tool":
            return next(t for t in tools if t["name"] == choice.get("name"))
        return tools[0]

    def _text_reply(self, payload: dict[str, Any], text: str) -> AnthropicReply:
        stop_reason, stop_sequence = "end_turn", None
        hits = [(text.find(s), s) for s in payload.get("stop_sequences") or [] if s and s in text]
        if hits:
            pos, stop_sequence = min(hits)
            text, stop_reason = text[:pos], "stop_sequence"
        if word_count(text) > payload["max_tokens"]:
            text = truncate_words(text, payload["max_tokens"])
            stop_reason, stop_sequence = "max_tokens", None
        blocks = [{"type": "text", "text": text}] if text else []
        return AnthropicReply(blocks, stop_reason, stop_sequence, max(1, word_count(text)))

    def _tool_reply(self, tool: dict[str, Any]) -> AnthropicReply:
        args = (
            self.tool_input
            if self.tool_input is not None
            else example_from_schema(tool["input_schema"])
        )
        use = {"type": "tool_use", "id": new_id("toolu_"), "name": tool["name"], "input": args}
        blocks: list[dict[str, Any]] = [use]
        if self.tool_preamble:
            blocks.insert(0, {"type": "text", "text": self.tool_preamble})
        tokens = 10 + len(json.dumps(args)) // 4 + word_count(self.tool_preamble or "")
        return AnthropicReply(blocks, "tool_use", None, tokens)

    def usage(self, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message_body(self, payload: dict[str, Any], reply: AnthropicReply) -> dict[str, Any]:
        return {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": payload["model"],
            "content": reply.blocks,
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": self.usage(count_input_tokens(payload), reply.output_tokens),
        }

    def _deltas(self, block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A block's content_block_start value and its deltas."""
        if block["type"] == "text":
            pieces = split_words(block["text"], self.stream_chunks)
            return {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]
        start = {**block, "input": {}}
        raw = json.dumps(block["input"])
        parts = [""] + [p for p in shapes.split_text(raw, self.stream_chunks) if p]
        return start, [{"type": "input_json_delta", "partial_json": p} for p in parts]

    def stream_events(
        self, message: dict[str, Any], reply: AnthropicReply
    ) -> tuple[list[bytes], list[bytes]]:
        """(head, body): head = message_start, the first content_block_start and a ping."""
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": 1}
        head = [sse_event("message_start", {"type": "message_start", "message": start})]
        body: list[bytes] = []
        for index, block in enumerate(reply.blocks):
            first, deltas = self._deltas(block)
            event = {"type": "content_block_start", "index": index, "content_block": first}
            (body if index else head).append(sse_event("content_block_start", event))
            if not index:
                head.append(sse_event("ping", {"type": "ping"}))
            for delta in deltas:
                event = {"type": "content_block_delta", "index": index, "delta": delta}
                body.append(sse_event("content_block_delta", event))
            body.append(
                sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
        if not reply.blocks:
            head.append(sse_event("ping", {"type": "ping"}))
        delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
        final_usage = {
            k: usage[k]
            for k in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        }
        body.append(
            sse_event(
                "message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}
            )
        )
        body.append(sse_event("message_stop", {"type": "message_stop"}))
        return head, body
