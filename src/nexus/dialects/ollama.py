"""Ollama's native API, served by translating to and from OpenAI chat (inbound only).

Ollama clients (Open WebUI's Ollama connection, Enchanted, the ``ollama`` package) call
``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/tags``,
``/api/show``, ``/api/ps`` and ``/api/version``. When an Ollama server serves the model the
request goes to it untouched; for any other backend these functions map shapes. Shapes follow
Ollama's ``api/types.go`` and the ``ollama`` client's pydantic types.

Requests (``/api/chat``, ``/api/generate`` -> OpenAI chat):

* model; messages with role system / user / assistant / tool (lower-cased, as Ollama does);
  ``images`` (base64) -> ``image_url`` parts with a data URL whose type is sniffed from the
  magic bytes (png, jpeg, gif, webp; else png), put before the text as Ollama puts its image
  tags; assistant ``tool_calls`` (arguments an object) -> OpenAI tool calls (arguments a JSON
  string), keeping the call's ``id`` or making one up as ``call_<turn>_<n>``; a ``tool``
  message -> ``tool_call_id`` of its call: its own ``tool_call_id`` when that names an earlier
  call, else by ``tool_name`` (any name when absent): in the latest assistant turn that has
  one, the first unanswered call of that name (parallel calls are answered in order).
* generate: ``system`` -> system message, ``prompt`` + ``images`` -> user message.
* ``tools`` (already OpenAI's shape; an empty list is left out); ``format``: "json" ->
  ``response_format`` json_object, a JSON schema -> json_schema named "response", strict false.
* options: temperature, top_p, seed, stop, frequency_penalty, presence_penalty, num_predict
  (> 0 -> ``max_tokens``; -1 no limit, -2 fill the context and 0 send no cap).
* ``stream`` defaults to true, as in Ollama; the OpenAI request always says it, with
  ``stream_options.include_usage`` when streaming (Ollama's last line carries the counts).

Dropped, the backend's defaults apply: keep_alive, think, logprobs, top_logprobs, truncate,
shift, a message's ``thinking``; options num_ctx, num_batch, num_gpu, main_gpu, num_thread,
numa, low_vram, f16_kv, logits_all, vocab_only, use_mmap, use_mlock, embedding_only,
num_keep, top_k, min_p, typical_p, tfs_z, repeat_last_n, repeat_penalty, mirostat,
mirostat_tau, mirostat_eta, penalize_newline, draft_num_predict and any unknown option.

Refused with :class:`InvalidRequest` naming the field: generate's ``suffix``, ``raw: true``,
``template`` and ``context`` (they need Ollama's own templating: an Ollama backend only),
images on a non-user message, a tool result that answers no earlier call, an empty chat or
prompt (that is a load request: :func:`is_load_request`, answered by :func:`load_answer`).

Answers (OpenAI -> Ollama): content, reasoning (``reasoning_content`` / ``reasoning``) ->
``thinking``, tool calls with arguments parsed to an object (arguments that are not a JSON
object become ``{}``: the call still reaches the client, whose tool reports the bad input);
finish_reason stop / tool_calls -> done_reason "stop", length -> "length", others as given;
usage -> prompt_eval_count / eval_count. Only the total duration is measured, so it is split
by work: a prompt token weighs a tenth of a generated one (prefill is batched), so
eval_count / eval_duration approximates generation speed; load_duration is 0. Generate
answers carry no ``context``. Tool calls carry ``id`` and ``function.index`` as Ollama's do.

Streams are NDJSON lines as Ollama writes them: text and thinking as they come, each tool
call whole once complete, a last ``done: true`` line with the counts, ``{"error": ...}`` for a
failure mid-stream. Embeddings: input and dimensions map; truncate, options and keep_alive are
dropped; vectors pass through as the backend computed them. Listings come from what Nexus
knows: size 0, digest the sha256 of the model id, details "" / null, and capabilities only
where a backend affirmed them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from nexus.dialects import StreamFailed
from nexus.errors import InvalidRequest
from nexus.registry import Model

_ROLES = ("system", "user", "assistant", "tool")
_NUMBER_OPTIONS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
_OLLAMA_ONLY = "works only when the model is served by an Ollama backend"
# Weights that split one measured duration between prompt evaluation and generation.
_PROMPT_WEIGHT, _EVAL_WEIGHT = 1, 10
# Go's zero time.Time: what Ollama prints for a time it does not know.
ZERO_TIME = "0001-01-01T00:00:00Z"
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_DURATION = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")

# -- field validation ------------------------------------------------------------------------


def _obj(value: Any, param: str | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param or 'the request body'} must be a JSON object", param=param)
    return value


def _dict(value: Any) -> dict[str, Any]:
    """A field of an answer, or {} when a server sent something else (answers are lenient)."""
    return value if isinstance(value, dict) else {}


def _str(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    return value


def _model(req: dict[str, Any]) -> str:
    model = _str(req, "model", "model")
    if not model:
        raise InvalidRequest("model is required", param="model")
    return model


def _number(value: Any, param: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{param} must be a number", param=param)
    return value


def _integer(value: Any, param: str) -> int:
    # Ollama decodes options from JSON numbers, so 42.0 is as good as 42.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{param} must be an integer", param=param)
    return value


# -- request pieces ---------------------------------------------------------------------------


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("options.stop must be a list of strings", param="options.stop")
    return stops


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    opts = _obj(value, "options")
    out: dict[str, Any] = {}
    for key in _NUMBER_OPTIONS:
        if opts.get(key) is not None:
            out[key] = _number(opts[key], f"options.{key}")
    if opts.get("seed") is not None:
        out["seed"] = _integer(opts["seed"], "options.seed")
    if opts.get("num_predict") is not None:
        num_predict = _integer(opts["num_predict"], "options.num_predict")
        if num_predict > 0:  # -1 (no limit), -2 (fill the context), 0: OpenAI has no cap to send
            out["max_tokens"] = num_predict
    if opts.get("stop") is not None and (stop := _stop(opts["stop"])):
        out["stop"] = stop
    return out


def _format(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        schema = {"name": "response", "schema": value, "strict": False}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest('format must be "json" or a JSON schema object', param="format")


def _common(req: dict[str, Any]) -> dict[str, Any]:
    """options, format and stream: shared by /api/chat and /api/generate."""
    out = _options(req.get("options"))
    if response_format := _format(req.get("format")):
        out["response_format"] = response_format
    stream = req.get("stream")
    if stream is None:
        stream = True  # Ollama streams unless told not to
    elif not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}
    return out


def _mime(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def _image_part(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a base64 string", param=param)
    text = value.replace("\r", "").replace("\n", "")  # Go's base64 decoder skips line breaks
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64", param=param) from None
    if not data:
        raise InvalidRequest(f"{param} is empty", param=param)
    return {"type": "image_url", "image_url": {"url": f"data:{_mime(data)};base64,{text}"}}


def _images(value: Any, prefix: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{prefix}images must be a list", param=f"{prefix}images")
    return [_image_part(image, f"{prefix}images[{k}]") for k, image in enumerate(value)]


def _user_content(text: str, images: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    return [*images, {"type": "text", "text": text}] if text else images


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("tools must be a list", param="tools")
    return [_tool(tool, f"tools[{k}]") for k, tool in enumerate(value)]


def _tool(value: Any, param: str) -> dict[str, Any]:
    tool = _obj(value, param)
    if tool.get("type") not in (None, "function"):
        raise InvalidRequest(f'{param}.type must be "function"', param=f"{param}.type")
    function = _obj(tool.get("function"), f"{param}.function")
    if not _str(function, "name", f"{param}.function.name"):
        raise InvalidRequest(f"{param}.function.name is required", param=f"{param}.function.name")
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


# -- messages ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """An assistant tool call seen earlier in the chat, waiting for its result."""

    turn: int
    id: str
    name: str
    answered: bool = False


def _match(calls: list[_Call], call_id: str, name: str) -> _Call | None:
    if call_id:
        for call in calls:
            if call.id == call_id:
                return call
    open_calls = [c for c in calls if not c.answered and name in ("", c.name)]
    if not open_calls:
        return None
    latest = max(c.turn for c in open_calls)
    return next(c for c in open_calls if c.turn == latest)


def _arguments(value: Any, param: str) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON object", param=param)
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise InvalidRequest(f"{param} cannot be encoded as JSON", param=param) from None


def _tool_call(value: Any, turn: int, n: int, calls: list[_Call]) -> dict[str, Any]:
    param = f"messages[{turn}].tool_calls[{n}]"
    function = _obj(_obj(value, param).get("function"), f"{param}.function")
    name = _str(function, "name", f"{param}.function.name")
    if not name:
        raise InvalidRequest(f"{param}.function.name is required", param=f"{param}.function.name")
    call_id = value.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{turn}_{n}"  # deterministic: the same history always gets the same ids
    arguments = _arguments(function.get("arguments"), f"{param}.function.arguments")
    calls.append(_Call(turn, call_id, name))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _assistant(msg: dict[str, Any], text: str, turn: int, calls: list[_Call]) -> dict[str, Any]:
    raw = msg.get("tool_calls")
    if not raw:
        return {"role": "assistant", "content": text}
    if not isinstance(raw, list):
        param = f"messages[{turn}].tool_calls"
        raise InvalidRequest(f"{param} must be a list", param=param)
    tool_calls = [_tool_call(tc, turn, n, calls) for n, tc in enumerate(raw)]
    return {"role": "assistant", "content": text or None, "tool_calls": tool_calls}


def _tool_result(msg: dict[str, Any], text: str, turn: int, calls: list[_Call]) -> dict[str, Any]:
    param = f"messages[{turn}]"
    name = _str(msg, "tool_name", f"{param}.tool_name")
    call = _match(calls, _str(msg, "tool_call_id", f"{param}.tool_call_id"), name)
    if call is None:
        # OpenAI needs every tool result tied to a call; guessing one would mislead the model.
        what = f"call to {name!r}" if name else "tool call"
        raise InvalidRequest(
            f"{param} is a tool result, but no earlier assistant message has an unanswered {what}",
            param=f"{param}.tool_name" if name else param,
        )
    call.answered = True
    return {"role": "tool", "tool_call_id": call.id, "content": text}


def _message(value: Any, turn: int, calls: list[_Call]) -> dict[str, Any]:
    param = f"messages[{turn}]"
    msg = _obj(value, param)
    role = _str(msg, "role", f"{param}.role").lower()
    if role not in _ROLES:
        raise InvalidRequest(
            f"{param}.role must be one of system, user, assistant, tool", param=f"{param}.role"
        )
    text = _str(msg, "content", f"{param}.content")
    images = _images(msg.get("images"), f"{param}.")
    if images and role != "user":
        # OpenAI takes images in user messages only; moving them would change the chat.
        raise InvalidRequest(
            f"{param}.images: only user messages may carry images here", param=f"{param}.images"
        )
    if role == "assistant":
        return _assistant(msg, text, turn, calls)
    if role == "tool":
        return _tool_result(msg, text, turn, calls)
    return {"role": role, "content": _user_content(text, images)}


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None or value == []:
        raise InvalidRequest(
            "messages must not be empty (an empty chat only loads the model)", param="messages"
        )
    if not isinstance(value, list):
        raise InvalidRequest("messages must be a list", param="messages")
    calls: list[_Call] = []
    return [_message(msg, turn, calls) for turn, msg in enumerate(value)]


# -- requests ---------------------------------------------------------------------------------


def chat_from_ollama(body: Any) -> dict[str, Any]:
    """Validate an ``/api/chat`` request and translate it to an OpenAI chat request."""
    req = _obj(body, None)
    out: dict[str, Any] = {"model": _model(req), "messages": _messages(req.get("messages"))}
    if tools := _tools(req.get("tools")):  # the ollama client always sends "tools": []
        out["tools"] = tools
    out.update(_common(req))
    return out


def _refuse_raw_features(req: dict[str, Any]) -> None:
    for key in ("suffix", "template"):
        if _str(req, key, key):
            raise InvalidRequest(f"{key} {_OLLAMA_ONLY}", param=key)
    raw = req.get("raw")
    if raw is not None and not isinstance(raw, bool):
        raise InvalidRequest("raw must be a boolean", param="raw")
    if raw:
        raise InvalidRequest(f"raw {_OLLAMA_ONLY}", param="raw")
    if req.get("context"):
        raise InvalidRequest(f"context {_OLLAMA_ONLY}", param="context")


def generate_from_ollama(body: Any) -> dict[str, Any]:
    """Validate an ``/api/generate`` request and translate it to an OpenAI chat request."""
    req = _obj(body, None)
    model = _model(req)
    _refuse_raw_features(req)
    prompt = _str(req, "prompt", "prompt")
    if not prompt:
        raise InvalidRequest(
            "prompt must not be empty (an empty prompt only loads the model)", param="prompt"
        )
    messages: list[dict[str, Any]] = []
    if system := _str(req, "system", "system"):
        messages.append({"role": "system", "content": system})
    user = _user_content(prompt, _images(req.get("images"), ""))
    messages.append({"role": "user", "content": user})
    return {"model": model, "messages": messages, **_common(req)}


def is_load_request(body: Any) -> bool:
    """Whether the body asks for nothing but loading the model: /api/chat without messages,
    /api/generate or /api/embeddings without a prompt, /api/embed without input."""
    if not isinstance(body, dict):
        return False
    if "input" in body:
        return body["input"] in (None, "", [])
    return body.get("messages") in (None, []) and body.get("prompt") in (None, "")


def _is_zero_duration(value: Any) -> bool:
    """keep_alive as Go reads it: seconds as a number, or a Go duration string ("0", "0s")."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if not isinstance(value, str):
        return False
    if value.lstrip("+-") == "0":
        return True
    return bool(_DURATION.fullmatch(value)) and not any(
        float(n) for n in re.findall(r"\d+\.?\d*|\.\d+", value)
    )


def load_answer(
    body: Any,
    *,
    kind: Literal["chat", "generate", "embed", "embeddings"],
    created_at: str,
) -> dict[str, Any]:
    """What Ollama answers to a load request (see :func:`is_load_request`); ``keep_alive: 0``
    makes it an unload. With no model to load, Nexus just answers."""
    req = _obj(body, None)
    model = _model(req)
    if kind == "embed":
        return {"model": model, "embeddings": []}
    if kind == "embeddings":
        return {"embedding": []}
    reason = "unload" if _is_zero_duration(req.get("keep_alive")) else "load"
    head = {"model": model, "created_at": created_at}
    if kind == "chat":
        message = {"role": "assistant", "content": ""}
        return {**head, "message": message, "done": True, "done_reason": reason}
    return {**head, "response": "", "done": True, "done_reason": reason}


# -- answers ----------------------------------------------------------------------------------


def _first_choice(resp: dict[str, Any]) -> dict[str, Any]:
    choices = resp.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                return choice
    return {}


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # a few servers answer with content parts
        return "".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    if isinstance(content, str) and content:
        return content
    refusal = message.get("refusal")  # Ollama has no refusal field: show it as the text
    return refusal if isinstance(refusal, str) else ""


def _reasoning(message: dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):  # vLLM / DeepSeek, and newer servers
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _parsed_arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
        if isinstance(parsed, dict):
            return parsed
    return {}


def _ollama_call(index: int, call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    function = {"index": index, "name": name, "arguments": _parsed_arguments(arguments)}
    return {"id": call_id, "function": function} if call_id else {"function": function}


def _ollama_calls(raw: Any) -> list[dict[str, Any]]:
    calls = []
    for index, tc in enumerate(raw if isinstance(raw, list) else []):
        call = _dict(tc)
        fn = _dict(call.get("function"))
        call_id, name = call.get("id"), fn.get("name")
        calls.append(
            _ollama_call(
                index,
                call_id if isinstance(call_id, str) else "",
                name if isinstance(name, str) else "",
                fn.get("arguments"),
            )
        )
    return calls


def _done_reason(finish: Any) -> str:
    if finish in (None, "", "stop", "tool_calls", "function_call"):
        return "stop"  # Ollama says "stop" after tool calls too
    return str(finish)  # "length" is Ollama's own word; other reasons pass as the backend said


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _metrics(total_ns: int, usage: Any) -> dict[str, int]:
    counts = _dict(usage)
    prompt, completion = (
        _count(counts.get("prompt_tokens")),
        _count(counts.get("completion_tokens")),
    )
    total = max(0, total_ns)
    work = (prompt or 0) * _PROMPT_WEIGHT + (completion or 0) * _EVAL_WEIGHT
    prompt_ns = total * (prompt or 0) * _PROMPT_WEIGHT // work if work else 0
    out = {"total_duration": total, "load_duration": 0}
    if prompt is not None:
        out["prompt_eval_count"] = prompt
    out["prompt_eval_duration"] = prompt_ns
    if completion is not None:
        out["eval_count"] = completion
    out["eval_duration"] = total - prompt_ns
    return out


def _answer_message(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": _text(message)}
    if thinking := _reasoning(message):
        out["thinking"] = thinking
    if calls := _ollama_calls(message.get("tool_calls")):
        out["tool_calls"] = calls
    return out


def _choice_message(resp: dict[str, Any]) -> tuple[dict[str, Any], str]:
    choice = _first_choice(resp)
    return _dict(choice.get("message")), _done_reason(choice.get("finish_reason"))


def chat_to_ollama(
    resp: dict[str, Any], *, model: str, created_at: str, total_ns: int
) -> dict[str, Any]:
    """An OpenAI chat.completion -> the ``/api/chat`` answer (``stream: false``)."""
    message, reason = _choice_message(resp)
    head = {"model": model, "created_at": created_at, "message": _answer_message(message)}
    return {**head, "done": True, "done_reason": reason, **_metrics(total_ns, resp.get("usage"))}


def generate_to_ollama(
    resp: dict[str, Any], *, model: str, created_at: str, total_ns: int
) -> dict[str, Any]:
    """An OpenAI chat.completion -> the ``/api/generate`` answer (no ``context``)."""
    message, reason = _choice_message(resp)
    out: dict[str, Any] = {"model": model, "created_at": created_at, "response": _text(message)}
    if thinking := _reasoning(message):
        out["thinking"] = thinking
    return {**out, "done": True, "done_reason": reason, **_metrics(total_ns, resp.get("usage"))}


# -- streams ----------------------------------------------------------------------------------


def _ndjson(line: dict[str, Any]) -> bytes:
    return orjson.dumps(line) + b"\n"


def _raise_stream_error(chunk: dict[str, Any]) -> None:
    error = chunk.get("error")
    if error is None:
        return
    if isinstance(error, dict):
        message, kind = error.get("message"), error.get("type") or error.get("code")
        raise StreamFailed(str(message or "backend error"), str(kind or ""))
    raise StreamFailed(str(error))


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class ChatToOllamaStream:
    """OpenAI chunks -> Ollama's NDJSON lines for ``/api/chat`` or ``/api/generate``.

    Text and thinking go out as they come. Ollama sends whole tool calls, so a call is held
    until it is complete: when a later call begins, or at the finish reason, or at the end.
    Generate has no tool calls. A chunk carrying an ``error`` raises :class:`StreamFailed`;
    answer it with :meth:`error`."""

    def __init__(self, *, model: str, kind: Literal["chat", "generate"]) -> None:
        self.model = model
        self.kind = kind
        self._calls: list[_PartialCall] = []
        self._sent = 0  # calls already emitted
        self._finish: Any = None
        self._usage: Any = None

    def feed(self, chunk: dict[str, Any], *, created_at: str) -> bytes:
        _raise_stream_error(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choice = _first_choice(chunk)
        delta = _dict(choice.get("delta"))
        out = b""
        text, thinking = _text(delta), _reasoning(delta)
        if text or thinking:
            out += self._line(created_at, text, thinking, [])
        self._add_calls(delta.get("tool_calls"))
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            return out + self._flush_calls(len(self._calls), created_at)
        # A call is complete once a later one has begun: OpenAI streams calls one by one.
        return out + self._flush_calls(len(self._calls) - 1, created_at)

    def finish(self, *, created_at: str, total_ns: int) -> bytes:
        out = self._flush_calls(len(self._calls), created_at)
        done = {"done": True, "done_reason": _done_reason(self._finish)}
        last = self._head(created_at) | done | _metrics(total_ns, self._usage)
        return out + _ndjson(last)

    def error(self, message: str) -> bytes:
        return _ndjson({"error": message})

    def _head(self, created_at: str) -> dict[str, Any]:
        head: dict[str, Any] = {"model": self.model, "created_at": created_at}
        if self.kind == "chat":
            head["message"] = {"role": "assistant", "content": ""}
        else:
            head["response"] = ""
        return head

    def _line(
        self, created_at: str, text: str, thinking: str, calls: list[dict[str, Any]]
    ) -> bytes:
        line = self._head(created_at)
        part = line["message"] if self.kind == "chat" else line
        part["content" if self.kind == "chat" else "response"] = text
        if thinking:
            part["thinking"] = thinking
        if calls:
            part["tool_calls"] = calls
        line["done"] = False
        return _ndjson(line)

    def _add_calls(self, raw: Any) -> None:
        for tc in raw if isinstance(raw, list) else []:
            if not isinstance(tc, dict):
                continue
            call = self._partial(tc)
            if call is None:
                continue
            if isinstance(tc.get("id"), str) and not call.id:
                call.id = tc["id"]
            fn = _dict(tc.get("function"))
            name, arguments = fn.get("name"), fn.get("arguments")
            call.name += name if isinstance(name, str) else ""
            call.arguments += arguments if isinstance(arguments, str) else ""

    def _partial(self, tc: dict[str, Any]) -> _PartialCall | None:
        index = tc.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # No index (a few servers): a new id starts a new call, else the last one goes on.
            new_id = tc.get("id")
            fresh = not self._calls or (bool(new_id) and new_id != self._calls[-1].id)
            index = len(self._calls) if fresh else len(self._calls) - 1
        if index < self._sent or index < 0:
            return None  # that call went out whole already; Ollama cannot amend it
        while len(self._calls) <= index:
            self._calls.append(_PartialCall())
        return self._calls[index]

    def _flush_calls(self, ready: int, created_at: str) -> bytes:
        if ready <= self._sent:
            return b""
        start, self._sent = self._sent, ready
        if self.kind != "chat":
            return b""
        calls = [
            _ollama_call(i, c.id, c.name, c.arguments)
            for i, c in enumerate(self._calls[start:ready], start)
            if c.id or c.name or c.arguments  # skip gaps a server left in its indexes
        ]
        return self._line(created_at, "", "", calls) if calls else b""


# -- embeddings -------------------------------------------------------------------------------


def _embed_input(value: Any) -> str | list[str]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        for k, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidRequest(f"input[{k}] must be a string", param=f"input[{k}]")
        return value
    if value in (None, "", []):
        raise InvalidRequest(
            "input must not be empty (an empty input only loads the model)", param="input"
        )
    raise InvalidRequest("input must be a string or a list of strings", param="input")


def embed_from_ollama(body: Any) -> dict[str, Any]:
    """``/api/embed`` -> an OpenAI embeddings request. ``truncate`` is checked and dropped:
    OpenAI has no truncation switch, so too long an input gets the backend's own error."""
    req = _obj(body, None)
    out: dict[str, Any] = {"model": _model(req), "input": _embed_input(req.get("input"))}
    if req.get("truncate") is not None and not isinstance(req["truncate"], bool):
        raise InvalidRequest("truncate must be a boolean", param="truncate")
    if req.get("dimensions") is not None:
        dimensions = _integer(req["dimensions"], "dimensions")
        if dimensions < 0:
            raise InvalidRequest("dimensions must not be negative", param="dimensions")
        if dimensions:  # 0 means "all", as Ollama reads it
            out["dimensions"] = dimensions
    out["encoding_format"] = "float"  # raw HTTP defaults to floats, but say so
    return out


def _vectors(resp: dict[str, Any]) -> list[list[float]]:
    data = resp.get("data")
    items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    items.sort(key=lambda d: d["index"] if isinstance(d.get("index"), int) else 0)
    return [d["embedding"] if isinstance(d.get("embedding"), list) else [] for d in items]


def embed_to_ollama(resp: dict[str, Any], *, model: str, total_ns: int) -> dict[str, Any]:
    """An OpenAI embeddings answer -> the ``/api/embed`` answer."""
    out: dict[str, Any] = {"model": model, "embeddings": _vectors(resp)}
    out |= {"total_duration": max(0, total_ns), "load_duration": 0}
    tokens = _count(_dict(resp.get("usage")).get("prompt_tokens"))
    if tokens is not None:
        out["prompt_eval_count"] = tokens
    return out


def embeddings_from_ollama(body: Any) -> dict[str, Any]:
    """The older ``/api/embeddings`` (one ``prompt``) -> an OpenAI embeddings request."""
    req = _obj(body, None)
    model = _model(req)
    prompt = _str(req, "prompt", "prompt")
    if not prompt:
        raise InvalidRequest(
            "prompt must not be empty (an empty prompt only loads the model)", param="prompt"
        )
    return {"model": model, "input": prompt, "encoding_format": "float"}


def embeddings_to_ollama(resp: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings answer -> the ``/api/embeddings`` answer (the first vector)."""
    vectors = _vectors(resp)
    return {"embedding": vectors[0] if vectors else []}


# -- listings ---------------------------------------------------------------------------------


def _details(known: Any = None) -> dict[str, Any]:
    """Ollama's model details, "" / null where unknown; string fields taken from ``known``."""
    details: dict[str, Any] = {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }
    if isinstance(known, dict):
        for key in details:
            if isinstance(known.get(key), str):
                details[key] = known[key]
        families = known.get("families")
        if isinstance(families, list) and all(isinstance(f, str) for f in families):
            details["families"] = families
    return details


def _digest(name: str) -> str:
    # Stable for a model id, in Ollama's format (hex sha256, no prefix).
    return hashlib.sha256(name.encode()).hexdigest()


def tags(models: list[Model], *, modified_at: str) -> dict[str, Any]:
    """``/api/tags``: one entry per model id (first seen wins), size 0 as it is unknown."""
    entries: dict[str, dict[str, Any]] = {}
    for model in models:
        if model.id not in entries:
            entries[model.id] = {
                "name": model.id,
                "model": model.id,
                "modified_at": modified_at,
                "size": 0,
                "digest": _digest(model.id),
                "details": _details(),
            }
    return {"models": list(entries.values())}


def _capabilities(model: Model) -> list[str]:
    # Only what the backend affirmed: Ollama lists what a model can do, never "may".
    flags = (
        ("completion", model.supports_chat),
        ("tools", model.supports_tools),
        ("vision", model.supports_vision),
        ("embedding", model.supports_embeddings),
    )
    return [name for name, flag in flags if flag]


def show(model: Model, *, modified_at: str) -> dict[str, Any]:
    """``/api/show``. The architecture is not known to Nexus, so it reads "unknown"; clients
    find the context length under ``<architecture>.context_length`` as with Ollama."""
    info: dict[str, Any] = {}
    if model.context_length:
        info = {"general.architecture": "unknown", "unknown.context_length": model.context_length}
    return {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _details(),
        "model_info": info,
        "capabilities": _capabilities(model),
        "modified_at": modified_at,
    }


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _running(entry: dict[str, Any], name: str) -> dict[str, Any]:
    digest, expires = entry.get("digest"), entry.get("expires_at")
    return {
        "name": name,
        "model": name,
        "size": _size(entry.get("size")),
        "digest": digest if isinstance(digest, str) and digest else _digest(name),
        "details": _details(entry.get("details")),
        "expires_at": expires if isinstance(expires, str) and expires else ZERO_TIME,
        "size_vram": _size(entry.get("size_vram")),
        "context_length": _size(entry.get("context_length")),
    }


def ps(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """``/api/ps`` from what backends reported, in the order given; entries without a name are
    skipped, and fields of the wrong type read as unknown (backends are untrusted input)."""
    models = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str) and name:
            models.append(_running(entry, name))
    return {"models": models}


def version(nexus_version: str) -> dict[str, Any]:
    """``/api/version``."""
    return {"version": nexus_version}


def error_body(message: str) -> bytes:
    """Ollama's error body: ``{"error": "..."}``."""
    return orjson.dumps({"error": message})
