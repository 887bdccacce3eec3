"""Anthropic Messages API <-> OpenAI chat completions, both directions, as pure functions.

**Outbound** (an ``anthropic`` cloud backend): :func:`to_messages_request`,
:func:`from_messages_response`, :class:`MessagesToChatStream`, :func:`error_message`,
:func:`parse_models`. **Inbound** (Nexus serving ``POST /v1/messages``):
:func:`from_messages_request`, :func:`to_messages_response`, :class:`ChatToMessagesStream`,
:func:`error_body`, :func:`prompt_text`.

What maps (OpenAI -> Anthropic; the inbound direction is the mirror image):

* ``system`` / ``developer`` messages -> top-level ``system`` text blocks (wherever they stood);
  user and assistant turns -> ``messages``, consecutive same-role turns merged into one;
  ``role: tool`` messages -> ``tool_result`` blocks in a user turn (Anthropic wants them first
  in that turn, so they are moved ahead of any text there).
* text parts -> text blocks (empty text dropped: Anthropic rejects empty text blocks);
  ``image_url`` parts -> image blocks (``data:`` URL -> base64 source, http(s) -> url source).
* assistant ``tool_calls`` -> ``tool_use`` blocks (arguments parsed; ids outside Anthropic's
  ``[A-Za-z0-9_-]`` alphabet are rewritten the same way in ``tool_use`` and ``tool_result``).
* ``tools`` (function) -> tools with ``input_schema``; ``tool_choice`` auto / none / required /
  named -> auto / none / any / tool; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``; ``stop`` -> ``stop_sequences``; ``max_completion_tokens`` or
  ``max_tokens`` -> ``max_tokens``; ``top_p``; ``user`` (or ``safety_identifier``) ->
  ``metadata.user_id``; ``stream``. A history with tool calls but no ``tools`` (legal in
  OpenAI, refused by Anthropic) declares the tools it names, with ``tool_choice: none``.
* ``temperature``: OpenAI allows 0..2, Anthropic 0..1. Values above 1 are **clamped** to 1, not
  scaled: every value both APIs accept keeps its meaning (0.7 stays 0.7), and 1 is the default
  of both. ``top_p`` is sent only below 1 and only without ``temperature``: Claude 4.5 and
  later refuse the pair. (The newest models refuse ``temperature`` itself; which model does is
  backend knowledge, not this module's: the backend must strip it for them.)

What does not map:

* Outbound, rejected with :class:`InvalidRequest`: ``response_format`` json_object/json_schema
  (JSON mode), ``n`` > 1, the legacy ``functions`` / ``function_call``, content parts other
  than text and images (audio, files), custom (non-function) tools.
* Outbound, dropped (no Anthropic meaning): ``frequency_penalty``, ``presence_penalty``,
  ``logit_bias``, ``logprobs``, ``top_logprobs``, ``seed``, ``store``, ``metadata``,
  ``service_tier``, ``prediction``, ``reasoning_effort``, ``modalities``, ``audio``,
  ``verbosity``, ``web_search_options``, ``prompt_cache_*``, ``moderation``,
  ``stream_options`` (the caller passes ``include_usage`` to the stream translator), message
  ``name``, image ``detail``, tool ``strict``.
* Answers: thinking, redacted thinking and server-tool blocks are not relayed to OpenAI
  clients (chat completions has no place for them).
* Inbound, rejected: server tools (web search, bash...), document / search_result / server-tool
  blocks, file image sources. Inbound, mapped: ``output_config.format`` (structured output) ->
  ``response_format`` json_schema. Inbound, dropped: ``top_k``, ``thinking``, ``output_config``
  effort, ``cache_control``, ``service_tier``, ``container``; thinking blocks in assistant
  turns (an OpenAI backend cannot read them, and a Claude Code session carried over from
  Anthropic sends them back). ``tool_result.is_error`` becomes an ``Error: `` prefix on the
  tool message (OpenAI has no flag); images inside a tool result move to the user message that
  follows (OpenAI tool messages carry text only).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from nexus.dialects import StreamFailed
from nexus.errors import InvalidRequest
from nexus.registry import Model

ANTHROPIC_VERSION = "2023-06-01"

Json = dict[str, Any]

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
_JSON_FORMATS = ("json_object", "json_schema")

# Anthropic stop_reason -> OpenAI finish_reason. pause_turn only follows server tools, which
# this translation never requests; a context window overflow is a length stop to a client.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}
_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic's documented error types. Nexus's 503 (no healthy backend, overloaded, draining)
# is "try again soon", which is what overloaded_error (529) tells Anthropic clients; a 502
# is a backend failure (api_error); 504 has its own type in the current API.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _count(value: Any) -> int:
    """A token count from a foreign body: a non-negative int, else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _chat_id(message_id: Any) -> str:
    if isinstance(message_id, str) and message_id:
        return "chatcmpl-" + message_id.removeprefix("msg_")
    return "chatcmpl-anthropic"


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_nexus"


# --------------------------------------------------------------------------------------------
# Outbound: OpenAI chat request -> Anthropic Messages request
# --------------------------------------------------------------------------------------------


def to_messages_request(
    body: dict[str, Any], *, model: str, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request body for ``model``."""
    _reject_unsupported(body)
    system, turns = _turns(body.get("messages"))
    out: Json = {
        "model": model,
        "max_tokens": _max_tokens(body, default_max_tokens),
        "messages": turns,
    }
    if system:
        out["system"] = system
    _sampling(body, out)
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body)
        if choice is not None:
            out["tool_choice"] = choice
    else:
        _history_tools(turns, out)
    if body.get("stream") is True:
        out["stream"] = True
    return out


def _reject_unsupported(body: Json) -> None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in _JSON_FORMATS:
        raise InvalidRequest(
            "JSON mode (response_format) is not supported by Anthropic backends",
            param="response_format",
        )
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise InvalidRequest("'n' other than 1 is not supported by Anthropic backends", param="n")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise InvalidRequest(f"'{legacy}' is deprecated; use 'tools'", param=legacy)


def _max_tokens(body: Json, default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer", param=key)
        return value
    return default


def _number(body: Json, key: str, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= hi:
        raise InvalidRequest(f"'{key}' must be a number between 0 and {hi:g}", param=key)
    return float(value)


def _sampling(body: Json, out: Json) -> None:
    temperature = _number(body, "temperature", 2)
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)  # clamped, not scaled: see module docstring
    top_p = _number(body, "top_p", 1)
    if top_p is not None and top_p < 1 and temperature is None:
        out["top_p"] = top_p  # never both: current Claude models refuse the pair
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
        if any(stop):
            out["stop_sequences"] = [s for s in stop if s]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}


def _turns(messages: Any) -> tuple[list[Json], list[Json]]:
    """(system text blocks, alternating user/assistant turns) of an OpenAI message list."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    system: list[Json] = []
    turns: list[Json] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(msg.get("content"), f"{where}.content"))
        elif role == "user":
            _append_turn(turns, "user", _user_blocks(msg.get("content"), f"{where}.content"))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(msg, where))
        elif role == "tool":
            _append_turn(turns, "user", [_tool_result(msg, where)])
        else:
            raise InvalidRequest(f"unsupported message role {role!r}", param=f"{where}.role")
    if not turns:
        raise InvalidRequest(
            "'messages' needs at least one user or assistant message with content",
            param="messages",
        )
    for turn in turns:
        # Anthropic requires a user turn's tool results before anything else in it.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _append_turn(turns: list[Json], role: str, blocks: list[Json]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_block(text: str) -> list[Json]:
    return [{"type": "text", "text": text}] if text else []


def _text_blocks(content: Any, where: str, *, refusal: bool = False) -> list[Json]:
    """Text blocks of a string or an array of text parts (``refusal`` parts too, if asked)."""
    if content is None:
        return []
    if isinstance(content, str):
        return _text_block(content)
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of text parts", param=where)
    blocks: list[Json] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = "refusal" if refusal and kind == "refusal" else "text"
        if kind != key or not isinstance(part.get(key), str):
            raise InvalidRequest(f"'{where}[{j}]' must be a text part", param=f"{where}[{j}]")
        blocks.extend(_text_block(part[key]))
    return blocks


def _user_blocks(content: Any, where: str) -> list[Json]:
    if isinstance(content, str):
        return _text_block(content)
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of parts", param=where)
    blocks: list[Json] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.extend(_text_block(part["text"]))
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{here}.image_url"))
        else:
            raise InvalidRequest(
                f"content part type {kind!r} is not supported by Anthropic backends",
                param=f"{here}.type",
            )
    return blocks


def _image_block(image: Any, where: str) -> Json:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest(f"'{where}.url' must be a string", param=f"{where}.url")
    if url.startswith("data:"):
        return {"type": "image", "source": _data_source(url, f"{where}.url")}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("image URLs must be http(s) or base64 data: URLs", param=f"{where}.url")


def _data_source(url: str, where: str) -> Json:
    header, comma, data = url.partition(",")
    params = header[len("data:") :].split(";")
    media = params[0].strip().lower().replace("image/jpg", "image/jpeg")
    if not comma or "base64" not in params[1:]:
        raise InvalidRequest("image data: URLs must be base64 encoded", param=where)
    if media not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"image type {media!r} is not supported (jpeg, png, gif, webp)", param=where
        )
    return {"type": "base64", "media_type": media, "data": data}


def _assistant_blocks(msg: Json, where: str) -> list[Json]:
    blocks = _text_blocks(msg.get("content"), f"{where}.content", refusal=True)
    calls = msg.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise InvalidRequest(f"'{where}.tool_calls' must be an array", param=f"{where}.tool_calls")
    return blocks + [_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls)]


def _tool_use(call: Any, where: str) -> Json:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise InvalidRequest("only function tool calls are supported", param=f"{where}.type")
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequest(f"'{where}.function.name' is required", param=f"{where}.function.name")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{where}.id' is required", param=f"{where}.id")
    arguments = _arguments(fn.get("arguments"), f"{where}.function.arguments")
    return {"type": "tool_use", "id": _tool_id(call_id), "name": fn["name"], "input": arguments}


def _arguments(raw: Any, where: str) -> Json:
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}  # a call of a tool without parameters: some clients send ""
    if not isinstance(raw, str):
        raise InvalidRequest(f"'{where}' must be a JSON string", param=where)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"'{where}' is not valid JSON", param=where) from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"'{where}' must be a JSON object", param=where)
    return parsed


def _tool_id(call_id: str) -> str:
    # Anthropic accepts ^[a-zA-Z0-9_-]+$ only; other backends' ids ("functions.f:0") do not fit.
    return _TOOL_ID_BAD.sub("_", call_id)


def _tool_result(msg: Json, where: str) -> Json:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{where}.tool_call_id' is required", param=f"{where}.tool_call_id")
    block: Json = {"type": "tool_result", "tool_use_id": _tool_id(call_id)}
    content = _text_blocks(msg.get("content"), f"{where}.content")
    if content:
        block["content"] = content
    return block


def _tools(tools: Any) -> list[Json]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    return [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]


def _tool(tool: Any, where: str) -> Json:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise InvalidRequest("only function tools are supported", param=f"{where}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequest(f"'{where}.function.name' is required", param=f"{where}.function.name")
    schema = fn.get("parameters")
    if schema is None:
        schema = {"properties": {}}
    elif not isinstance(schema, dict):
        raise InvalidRequest("must be a JSON schema object", param=f"{where}.function.parameters")
    out: Json = {"name": fn["name"], "input_schema": {"type": "object", **schema}}
    if isinstance(fn.get("description"), str) and fn["description"]:
        out["description"] = fn["description"]
    return out


def _history_tools(turns: list[Json], out: Json) -> None:
    """Anthropic refuses tool_use blocks in a request that defines no tools; OpenAI allows it
    (a conversation replayed for a summary). Declare the tools the history names, uncallable."""
    used = (b["name"] for turn in turns for b in turn["content"] if b["type"] == "tool_use")
    names = list(dict.fromkeys(used))
    if names:
        out["tools"] = [{"name": name, "input_schema": {"type": "object"}} for name in names]
        out["tool_choice"] = {"type": "none"}


def _tool_choice(body: Json) -> Json | None:
    """Anthropic tool_choice; None leaves Anthropic's default (auto, parallel allowed)."""
    choice = body.get("tool_choice")
    if choice == "none":
        return {"type": "none"}
    if choice is None or choice == "auto":
        out: Json = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'tool_choice.function.name' is required", param="tool_choice")
        out = {"type": "tool", "name": name}
    else:
        raise InvalidRequest("unsupported 'tool_choice'", param="tool_choice")
    if body.get("parallel_tool_calls") is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None
    return out


# --------------------------------------------------------------------------------------------
# Outbound: Anthropic answers -> OpenAI answers
# --------------------------------------------------------------------------------------------


def from_messages_response(resp: dict[str, Any], *, model: str, created: int) -> dict[str, Any]:
    """An Anthropic Message as an OpenAI ``chat.completion``."""
    texts: list[str] = []
    calls: list[Json] = []
    content = resp.get("content")
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(_openai_call(block, len(calls)))
    message: Json = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    finish = _FINISH.get(resp.get("stop_reason") or "end_turn", "stop")
    return {
        "id": _chat_id(resp.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _openai_usage(resp.get("usage")),
    }


def _openai_call(block: Json, n: int) -> Json:
    call_input = block.get("input")
    return {
        "id": block.get("id") if isinstance(block.get("id"), str) else f"toolu_{n}",
        "type": "function",
        "function": {
            "name": block.get("name") if isinstance(block.get("name"), str) else "",
            "arguments": _dumps(call_input if isinstance(call_input, dict) else {}),
        },
    }


def _openai_usage(usage: Any) -> Json:
    """OpenAI usage from Anthropic usage: Anthropic's input_tokens excludes cache reads and
    writes, OpenAI's prompt_tokens counts every input token."""
    u = usage if isinstance(usage, dict) else {}
    read = _count(u.get("cache_read_input_tokens"))
    write = _count(u.get("cache_creation_input_tokens"))
    prompt = _count(u.get("input_tokens")) + read + write
    completion = _count(u.get("output_tokens"))
    out: Json = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }
    details = u.get("output_tokens_details")
    if isinstance(details, dict) and "thinking_tokens" in details:
        out["completion_tokens_details"] = {"reasoning_tokens": _count(details["thinking_tokens"])}
    return out


class MessagesToChatStream:
    """Anthropic stream events -> OpenAI ``chat.completion.chunk`` dicts, one event at a time.

    Tool calls are numbered by tool_use block (0, 1...), whatever text blocks stand between
    them. Thinking, citations, ping and unknown events yield nothing."""

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id = "chatcmpl-anthropic"
        self._started = False
        self._finished = False
        self._tools: dict[Any, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._usage: Json | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """Usage as far as the stream has told it (None before message_start)."""
        return None if self._usage is None else _openai_usage(self._usage)

    @property
    def finished(self) -> bool:
        return self._finished

    def finish(self) -> list[dict[str, Any]]:
        """Nothing left to send at the end: message_stop carried the last chunk."""
        return []

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunks for the parsed ``data`` of one SSE event; raises StreamFailed on ``error``."""
        kind = event.get("type")
        if kind == "error":
            raise _stream_failed(event)
        if kind == "message_start":
            return self._on_message_start(event)
        if kind == "content_block_start":
            return self._on_block_start(event)
        if kind == "content_block_delta":
            return self._on_block_delta(event)
        if kind == "message_delta":
            return self._on_message_delta(event)
        if kind == "message_stop":
            return self._on_message_stop()
        return []

    def _chunk(self, delta: Json, finish: str | None = None) -> Json:
        chunk: Json = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI sends it on every chunk but the last
        return chunk

    def _lead(self) -> list[Json]:
        """The role chunk, unless sent already (also covers a stream missing message_start)."""
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_message_start(self, event: Json) -> list[Json]:
        message = event.get("message")
        message = message if isinstance(message, dict) else {}
        if not self._started:
            self._id = _chat_id(message.get("id"))
        usage = message.get("usage")
        self._usage = dict(usage) if isinstance(usage, dict) else {}
        return self._lead()

    def _on_block_start(self, event: Json) -> list[Json]:
        block = event.get("content_block")
        block = block if isinstance(block, dict) else {}
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            return [*self._lead(), self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        n = self._tools[event.get("index")] = len(self._tools)
        call = _openai_call(block, n)
        if not block.get("input"):
            call["function"]["arguments"] = ""  # the input arrives as input_json_delta events
        return [*self._lead(), self._chunk({"tool_calls": [{"index": n, **call}]})]

    def _on_block_delta(self, event: Json) -> list[Json]:
        delta = event.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            if not delta["text"]:
                return []
            return [*self._lead(), self._chunk({"content": delta["text"]})]
        n = self._tools.get(event.get("index"))
        partial = delta.get("partial_json")
        if delta.get("type") != "input_json_delta" or n is None or not isinstance(partial, str):
            return []  # thinking, signature and citations deltas have no OpenAI place
        if not partial:
            return []
        arguments = {"index": n, "function": {"arguments": partial}}
        return [*self._lead(), self._chunk({"tool_calls": [arguments]})]

    def _on_message_delta(self, event: Json) -> list[Json]:
        usage = event.get("usage")
        if isinstance(usage, dict):
            # message_delta counts are cumulative: they replace, and absent ones stay as they were
            self._usage = {
                **(self._usage or {}),
                **{k: v for k, v in usage.items() if v is not None},
            }
        delta = event.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        finish = _FINISH.get(stop or "end_turn", "stop")
        return [*self._lead(), self._chunk({}, finish)]

    def _on_message_stop(self) -> list[Json]:
        self._finished = True
        if not self._include_usage:
            return []
        # OpenAI's last chunk when usage is asked for: no choices, the usage of the whole answer
        return [{**self._chunk({}), "choices": [], "usage": _openai_usage(self._usage)}]


def _stream_failed(event: Json) -> StreamFailed:
    error = event.get("error")
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    kind = error.get("type")
    return StreamFailed(
        message if isinstance(message, str) and message else "Anthropic stream error",
        kind if isinstance(kind, str) else "",
    )


def error_message(body: bytes) -> str:
    """The message of an Anthropic error body, "" when it has none. Never raises."""
    try:
        parsed = orjson.loads(body)
    except (ValueError, TypeError):
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


def parse_models(listing: Any) -> list[Model]:
    """Models of an Anthropic ``GET /v1/models`` page. Retired models are left out: inference
    naming them fails. JSON mode is False because this translation refuses it."""
    data = listing.get("data") if isinstance(listing, dict) else None
    models: list[Model] = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            continue
        if entry.get("lifecycle") == "retired":
            continue
        name = entry.get("display_name")
        models.append(
            Model(
                id=entry["id"],
                name=name if isinstance(name, str) else "",
                context_length=_count(entry.get("max_input_tokens")) or None,
                supports_chat=True,
                supports_vision=_capability(entry, "image_input"),
                supports_tools=True,
                supports_json_mode=False,
                supports_embeddings=False,
                max_output_tokens=_count(entry.get("max_tokens")) or None,
            )
        )
    return models


def _capability(entry: Json, name: str) -> bool:
    """What the listing says of a capability; every Claude model has it when it says nothing."""
    caps = entry.get("capabilities")
    cap = caps.get(name) if isinstance(caps, dict) else None
    supported = cap.get("supported") if isinstance(cap, dict) else None
    return supported if isinstance(supported, bool) else True


# --------------------------------------------------------------------------------------------
# Inbound: Anthropic Messages request -> OpenAI chat request
# --------------------------------------------------------------------------------------------


def from_messages_request(body: Any) -> dict[str, Any]:
    """Validate an Anthropic Messages request and translate it to an OpenAI chat request.

    A streamed request asks for ``stream_options.include_usage`` so that the answer's
    ``message_delta`` can carry real output token counts."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("'max_tokens' is required and must be >= 1", param="max_tokens")
    out: Json = {"model": model, "messages": _chat_messages(body), "max_tokens": max_tokens}
    _chat_tools(body, out)
    _chat_sampling(body, out)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _str_field(obj: Json, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{where}.{key}' must be a string", param=f"{where}.{key}")
    return value


def _block_type(block: Any, where: str) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequest(f"'{where}' must be a content block with a type", param=where)
    return kind


def _unsupported_block(kind: str, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"content block type '{kind}' is not supported here", param=f"{where}.type"
    )


def _system_text(content: Any, where: str) -> str:
    """A system prompt's text: a string, or text blocks joined by blank lines."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or text blocks", param=where)
    texts = []
    for j, block in enumerate(content):
        if _block_type(block, f"{where}.{j}") != "text":
            raise _unsupported_block(block["type"], f"{where}.{j}")
        texts.append(_str_field(block, "text", f"{where}.{j}"))
    return "\n\n".join(t for t in texts if t)


def _chat_messages(body: Json) -> list[Json]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    system = _system_text(body.get("system"), "system")
    out: list[Json] = [{"role": "system", "content": system}] if system else []
    for i, msg in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(content, str | list):
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array", param=f"{where}.content"
            )
        if role == "user":
            out.extend(_user_messages(content, f"{where}.content"))
        elif role == "assistant":
            out.append(_assistant_message(content, f"{where}.content"))
        elif role == "system":  # the current API also allows system turns among the messages
            out.append({"role": "system", "content": _system_text(content, f"{where}.content")})
        else:
            raise InvalidRequest("role must be 'user' or 'assistant'", param=f"{where}.role")
    return out


def _user_messages(content: str | list[Any], where: str) -> list[Json]:
    """A user turn: its tool results as ``tool`` messages first, then the rest as one message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(content):
        here = f"{where}.{j}"
        kind = _block_type(block, here)
        if kind == "tool_result":
            results.append(_tool_message(block, here, parts))
        elif kind == "text":
            parts.append({"type": "text", "text": _str_field(block, "text", here)})
        elif kind == "image":
            parts.append(_image_part(block, here))
        else:
            raise _unsupported_block(kind, here)
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _image_part(block: Json, where: str) -> Json:
    source = block.get("source")
    here = f"{where}.source"
    if not isinstance(source, dict):
        raise InvalidRequest(f"'{here}' must be an object", param=here)
    kind = source.get("type")
    if kind == "base64":
        media = _str_field(source, "media_type", here)
        url = f"data:{media};base64,{_str_field(source, 'data', here)}"
    elif kind == "url":
        url = _str_field(source, "url", here)
    else:
        raise InvalidRequest(f"image source type {kind!r} is not supported", param=f"{here}.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: Json, where: str, parts: list[Json]) -> Json:
    """A tool_result block as an OpenAI tool message; its images go to ``parts``."""
    tool_use_id = _str_field(block, "tool_use_id", where)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise InvalidRequest(f"'{where}.is_error' must be a boolean", param=f"{where}.is_error")
    content = block.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, item in enumerate(content):
            here = f"{where}.content.{k}"
            kind = _block_type(item, here)
            if kind == "text":
                texts.append(_str_field(item, "text", here))
            elif kind == "image":
                parts.append(_image_part(item, here))
            else:
                raise _unsupported_block(kind, here)
    elif content is not None:
        raise InvalidRequest("must be a string or an array", param=f"{where}.content")
    text = "\n".join(texts)
    # OpenAI tool messages have no error flag: say it in words the model reads.
    return {
        "role": "tool",
        "tool_call_id": tool_use_id,
        "content": f"Error: {text}" if is_error else text,
    }


def _assistant_message(content: str | list[Any], where: str) -> Json:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        here = f"{where}.{j}"
        kind = _block_type(block, here)
        if kind == "text":
            texts.append(_str_field(block, "text", here))
        elif kind == "tool_use":
            calls.append(_chat_tool_call(block, here))
        elif kind not in ("thinking", "redacted_thinking"):  # dropped: see module docstring
            raise _unsupported_block(kind, here)
    message: Json = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _chat_tool_call(block: Json, where: str) -> Json:
    call_input = block.get("input")
    if not isinstance(call_input, dict):
        raise InvalidRequest(f"'{where}.input' must be an object", param=f"{where}.input")
    return {
        "id": _str_field(block, "id", where),
        "type": "function",
        "function": {"name": _str_field(block, "name", where), "arguments": _dumps(call_input)},
    }


def _chat_tools(body: Json, out: Json) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    functions = [_function_tool(tool, f"tools.{i}") for i, tool in enumerate(tools or [])]
    choice, parallel = _chat_tool_choice(body.get("tool_choice"))
    if not functions:
        return  # OpenAI refuses a tool_choice without tools, and there is nothing to choose
    out["tools"] = functions
    if choice is not None:
        out["tool_choice"] = choice
        if parallel is False:
            out["parallel_tool_calls"] = False


def _function_tool(tool: Any, where: str) -> Json:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(
            f"server tool '{tool.get('type')}' is not supported here", param=f"{where}.type"
        )
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"'{where}.input_schema' must be an object", param=f"{where}.input_schema"
        )
    function: Json = {"name": _str_field(tool, "name", where), "parameters": schema}
    description = tool.get("description")
    if description is not None:
        function["description"] = _str_field(tool, "description", where)
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls) of an Anthropic tool_choice; None: not set."""
    if choice is None:
        return None, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out: Any = "auto"
    elif kind == "any":
        out = "required"
    elif kind == "none":
        out = "none"
    elif kind == "tool":
        out = {"type": "function", "function": {"name": _str_field(choice, "name", "tool_choice")}}
    else:
        raise InvalidRequest(
            "tool_choice type must be auto, any, tool or none", param="tool_choice.type"
        )
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise InvalidRequest("must be a boolean", param="tool_choice.disable_parallel_tool_use")
    return out, (False if disable else None)


def _chat_sampling(body: Json, out: Json) -> None:
    for key in ("temperature", "top_p"):
        value = _number(body, key, 1)
        if value is not None:
            out[key] = body[key]
    top_k = body.get("top_k")  # validated, then dropped: OpenAI chat has no top_k
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise InvalidRequest("'top_k' must be a non-negative integer", param="top_k")
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest(
                "'stop_sequences' must be an array of strings", param="stop_sequences"
            )
        if stop:
            out["stop"] = stop
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object", param="metadata")
    user = (metadata or {}).get("user_id")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'metadata.user_id' must be a string", param="metadata.user_id")
    if user:
        out["user"] = user
    _chat_output_format(body.get("output_config"), out)


def _chat_output_format(config: Any, out: Json) -> None:
    """``output_config.format`` (structured output) -> ``response_format``; effort is dropped."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise InvalidRequest("'output_config' must be an object", param="output_config")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise InvalidRequest("format type must be json_schema", param="output_config.format.type")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("must be an object", param="output_config.format.schema")
    json_schema = {"name": "output", "schema": schema, "strict": True}
    out["response_format"] = {"type": "json_schema", "json_schema": json_schema}


# --------------------------------------------------------------------------------------------
# Inbound: OpenAI answers -> Anthropic answers
# --------------------------------------------------------------------------------------------


def to_messages_response(resp: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic Message."""
    choices = resp.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    content = _answer_blocks(message if isinstance(message, dict) else {})
    return {
        "id": _message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), _has_tool_use(content)),
        "stop_sequence": None,  # OpenAI does not say which stop sequence matched
        "usage": _anthropic_usage(resp.get("usage")),
    }


def _has_tool_use(content: list[Json]) -> bool:
    return any(block["type"] == "tool_use" for block in content)


def _stop_reason(finish: Any, tool_use: bool) -> str:
    reason = _STOP.get(finish if isinstance(finish, str) else "stop", "end_turn")
    # Some backends end a tool-calling answer with "stop"; Anthropic clients loop on tool_use.
    return "tool_use" if tool_use and reason == "end_turn" else reason


def _answer_blocks(message: Json) -> list[Json]:
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with text parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not content and isinstance(message.get("refusal"), str):
        content = message["refusal"]
    blocks: list[Json] = _text_block(content) if isinstance(content, str) else []
    calls = message.get("tool_calls")
    for n, call in enumerate(calls if isinstance(calls, list) else []):
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            blocks.append(_anthropic_tool_use(call, n))
    return blocks


def _anthropic_tool_use(call: Json, n: int) -> Json:
    fn = call["function"]
    parsed = arguments = fn.get("arguments")
    if not isinstance(arguments, dict):
        try:
            parsed = orjson.loads(arguments or "{}")
        except (orjson.JSONDecodeError, TypeError):
            parsed = None
    call_id = call.get("id")
    name = fn.get("name")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else f"toolu_{n}",
        "name": name if isinstance(name, str) else "",
        # A backend's malformed arguments cannot be relayed as an object: the client's tool
        # runner then reports missing parameters to the model, which can retry.
        "input": parsed if isinstance(parsed, dict) else {},
    }


def _anthropic_usage(usage: Any) -> Json:
    """Anthropic usage from OpenAI usage; cache fields only when the backend reported them."""
    u = usage if isinstance(usage, dict) else {}
    prompt = _count(u.get("prompt_tokens"))
    out: Json = {"input_tokens": prompt, "output_tokens": _count(u.get("completion_tokens"))}
    details = u.get("prompt_tokens_details")
    if isinstance(details, dict) and "cached_tokens" in details:
        read = _count(details.get("cached_tokens"))
        write = _count(details.get("cache_write_tokens"))
        out["input_tokens"] = max(prompt - read - write, 0)
        out["cache_read_input_tokens"] = read
        out["cache_creation_input_tokens"] = write
    return out


def _sse(name: str, data: Json) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ChatToMessagesStream:
    """OpenAI chunks -> the SSE bytes of an Anthropic stream, in Anthropic's event order.

    Only choice 0 is relayed. A tool call whose arguments continue after another block was
    opened cannot be reopened (Anthropic blocks do not interleave): those late pieces are
    dropped; no backend is known to send them."""

    def __init__(self, *, model: str, message_id: str, input_tokens: int = 0) -> None:
        self._model = model
        self._id = message_id
        self._input_tokens = input_tokens
        self._started = False
        self._done = False
        self._pinged = False
        self._block: str | None = None  # type of the open content block, if one is open
        self._index = -1  # Anthropic index of the last opened block
        self._tool: int | None = None  # OpenAI tool-call index of the open tool_use block
        self._tools_seen: set[int] = set()
        self._finish: str | None = None
        self._usage: Json | None = None

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The SSE bytes for one OpenAI chunk (message_start comes with the first)."""
        if self._done:
            return b""
        out = self._start()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def finish(self) -> bytes:
        """Close the message: called once, when the OpenAI stream has ended."""
        if self._done:
            return b""
        out = self._start() + self._close()
        self._done = True
        reason = _stop_reason(self._finish, bool(self._tools_seen))
        usage = _anthropic_usage(self._usage) if self._usage else {"output_tokens": 0}
        delta = {"stop_reason": reason, "stop_sequence": None}
        out += _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + _sse("message_stop", {"type": "message_stop"})

    def error(self, message: str, kind: str = "api_error") -> bytes:
        """One ``event: error`` frame; the stream is over after it (finish() sends nothing)."""
        self._done = True
        return _sse("error", {"type": "error", "error": {"type": kind, "message": message}})

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: Json = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return _sse("message_start", {"type": "message_start", "message": message})

    def _choice(self, choice: Json) -> bytes:
        out = b""
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            out += self._text(text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out += self._tool_call(call)
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        return out

    def _text(self, text: str) -> bytes:
        out = b"" if self._block == "text" else self._open({"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return out + _sse("content_block_delta", event)

    def _tool_call(self, call: Json) -> bytes:
        index = self._tool_index(call)
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        out = b""
        if index != self._tool:
            if index in self._tools_seen:
                return b""  # late arguments of a closed block: see the class docstring
            out = self._open(_stream_tool_block(call, fn, self._id, index))
            self._tool = index
            self._tools_seen.add(index)
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            event = {"type": "content_block_delta", "index": self._index, "delta": delta}
            out += _sse("content_block_delta", event)
        return out

    def _tool_index(self, call: Json) -> int:
        index = call.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        # No index (not OpenAI's shape, but seen): a new id starts a new call.
        if self._tool is None:
            return len(self._tools_seen)
        return self._tool + 1 if call.get("id") else self._tool

    def _open(self, block: Json) -> bytes:
        out = self._close()
        self._index += 1
        self._block = block["type"]
        event = {"type": "content_block_start", "index": self._index, "content_block": block}
        out += _sse("content_block_start", event)
        if not self._pinged:  # Anthropic sends one ping after the first block opens
            self._pinged = True
            out += _sse("ping", {"type": "ping"})
        return out

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        self._tool = None
        return _sse("content_block_stop", {"type": "content_block_stop", "index": self._index})


def _stream_tool_block(call: Json, fn: Json, message_id: str, index: int) -> Json:
    call_id = call.get("id")
    name = fn.get("name")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else f"toolu_{message_id}_{index}",
        "name": name if isinstance(name, str) else "",
        "input": {},
    }


def error_body(status: int, message: str) -> bytes:
    """Anthropic's error JSON for an HTTP status (other 4xx: invalid_request_error, as
    Anthropic documents; other statuses: api_error)."""
    kind = _ERROR_TYPES.get(status)
    if kind is None:
        kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def prompt_text(body: dict[str, Any]) -> str:
    """All the text of an Anthropic request, for token counting. Never raises."""
    parts: list[str] = []
    _collect_text(body.get("system"), parts)
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else []:
        if isinstance(msg, dict):
            _collect_text(msg.get("content"), parts)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        parts.append(_dumps_or_empty(tools))
    return "\n".join(parts)


def _collect_text(content: Any, parts: list[str]) -> None:
    if isinstance(content, str):
        parts.append(content)
        return
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "tool_result":
            _collect_text(block.get("content"), parts)
        elif kind == "tool_use":
            parts.append(_dumps_or_empty(block.get("input")))


def _dumps_or_empty(value: Any) -> str:
    try:
        return _dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a value JSON cannot hold
        return ""
