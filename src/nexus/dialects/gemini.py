"""Gemini (Google AI ``generateContent``, REST v1beta) as an outbound dialect.

Nexus receives an OpenAI chat request, sends ``POST /v1beta/models/{model}:generateContent``
(or ``:streamGenerateContent?alt=sse``) and relays the answer as OpenAI. Every shape here is
the camelCase JSON on the wire, as ``google.genai.types`` dumps it with ``by_alias=True``.

Request (OpenAI -> Gemini):

* ``system``/``developer`` messages -> ``systemInstruction`` (all of them, in order). A
  request with no user or assistant turn sends its system text as the one user turn, since
  Gemini refuses empty ``contents``.
* ``user``/``assistant`` -> ``contents`` with roles ``user``/``model``; consecutive turns of
  one role merge. Empty text parts are left out (Gemini rejects them).
* Content parts: ``text``; ``image_url`` with a ``data:`` URL -> ``inlineData``; with an
  http(s) URL -> ``fileData`` whose ``mimeType`` is guessed from the file extension
  (image/jpeg when unknown). Gemini fetches that URL itself: it accepts its own Files API
  URIs and, on current models, public http(s) URLs; Nexus never downloads it. ``input_audio``
  -> ``inlineData`` (audio/wav, audio/mp3); ``file`` with ``file_data`` -> ``inlineData``.
  ``file_id`` and any other part type raise :class:`InvalidRequest`.
* Assistant ``tool_calls`` -> ``functionCall`` parts (arguments parsed; an empty string is
  ``{}``). ``role: tool`` -> ``functionResponse`` parts, named after the matching
  ``tool_call_id``; content that is a JSON object is sent as the response, anything else as
  ``{"result": text}``. Consecutive tool messages land in one user turn.
* Thought signatures: Gemini 3 rejects a replayed ``functionCall`` without its
  ``thoughtSignature``. Answers carry it on the tool call as
  ``extra_content.google.thought_signature`` (the field Google's own OpenAI endpoint uses)
  and requests put it back; a model turn whose calls carry none gets Google's documented
  ``skip_thought_signature_validator`` sentinel on its first call.
* ``tools`` (type ``function`` only) -> one ``tools`` entry of ``functionDeclarations``;
  ``parameters`` is sent untouched as ``parametersJsonSchema`` (full JSON Schema, no
  sanitizing to the OpenAPI subset of ``parameters``). ``strict`` is dropped.
* ``tool_choice``: auto -> AUTO, none -> NONE, required -> ANY, a named function -> ANY +
  ``allowedFunctionNames``; ``allowed_tools`` -> ANY (required) or VALIDATED (auto) with
  those names.
* ``generationConfig``: temperature, top_p, top_k, max_completion_tokens (else max_tokens),
  stop, n, seed, presence_penalty, frequency_penalty; ``response_format`` json_object ->
  ``responseMimeType: application/json``; json_schema -> that plus ``responseJsonSchema``
  (full JSON Schema, unlike the OpenAPI-subset ``responseSchema``).
* Dropped, no Gemini meaning: ``model`` (it is in the path), ``stream``,
  ``stream_options``, ``user``, ``metadata``, ``store``, ``service_tier``,
  ``parallel_tool_calls``, ``logit_bias``, ``logprobs``, ``top_logprobs``,
  ``reasoning_effort`` (Gemini's thinking settings differ per model family), ``prediction``,
  ``modalities``, ``audio``, ``web_search_options``, message ``name`` and every unknown key.
  Legacy ``functions``/``function_call`` raise: they would silently stop tool use.

Answer (Gemini -> OpenAI): one choice per candidate by ``index``; text parts joined,
``thought`` parts skipped; ``functionCall`` -> ``tool_calls`` with ids derived from the
answer id and position; usage from ``usageMetadata`` (thought tokens count as completion
and as ``reasoning_tokens``). Not mapped: inline media, executable code and its results,
citations, grounding, safety ratings, logprobs.

Stream: :class:`GenerateToChatStream` turns each SSE ``data`` object into chunks. Gemini
sends function calls whole, so each becomes one complete tool call delta.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote, urlsplit

from nexus.dialects import StreamFailed
from nexus.errors import InvalidRequest
from nexus.registry import Model

JSON = dict[str, Any]

SKIP_SIGNATURE = "skip_thought_signature_validator"
"""Google's documented stand-in for a thought signature Nexus never saw."""

MAX_ERROR_CHARS = 500

_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)

# A fixed table, not ``mimetypes``: that module reads the host's mime.types files, which is
# I/O and makes the answer depend on the machine.
_MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "bmp": "image/bmp",
    "pdf": "application/pdf",
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "txt": "text/plain",
}

_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3"}

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

_NUMBER_FIELDS = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)

_INT_FIELDS = (("n", "candidateCount"), ("seed", "seed"))


# -- path -----------------------------------------------------------------------------------


def path(model: str, *, stream: bool) -> str:
    """The request path for ``model``; the name goes into a URL, so it is checked first."""
    if (
        not isinstance(model, str)
        or not model.strip(".")
        or ".." in model
        or any(c in model for c in "/?#\\")
        or not model.isprintable()
    ):
        raise InvalidRequest(f"model name {model!r} is not a valid Gemini model", param="model")
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{quote(model, safe='')}:{method}"


# -- request --------------------------------------------------------------------------------


def to_generate_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as a ``generateContent`` body (the model goes in the path)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise InvalidRequest(f"{legacy} is not supported here; use tools", param=legacy)
    system, contents = _conversation(body.get("messages"))
    out: JSON = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    declarations = _declarations(body.get("tools"))
    tool_config = _tool_config(body.get("tool_choice"))
    if declarations:
        # A toolConfig without declarations means nothing to Gemini: send it only with them.
        out["tools"] = [{"functionDeclarations": declarations}]
        if tool_config:
            out["toolConfig"] = tool_config
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


def _conversation(messages: Any) -> tuple[list[JSON], list[JSON]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    system: list[JSON] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system += _text_parts(message.get("content"), where, ("text",))
        elif role == "user":
            _append(contents, "user", _user_parts(message.get("content"), where))
        elif role == "assistant":
            _append(contents, "model", _assistant_parts(message, where, names))
        elif role == "tool":
            _append(contents, "user", [_function_response(message, where, names)])
        else:
            raise InvalidRequest(f"{where}.role {role!r} is not supported", param=f"{where}.role")
    if not contents and system:
        return [], [{"role": "user", "parts": system}]
    if not contents:
        raise InvalidRequest("messages has no text to send", param="messages")
    for content in contents:
        if content["role"] == "model":
            _sign_calls(content["parts"])
    return system, contents


def _append(contents: list[JSON], role: str, parts: list[JSON]) -> None:
    # Gemini wants turns to alternate, so a second turn of the same role joins the first.
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": list(parts)})


def _sign_calls(parts: list[JSON]) -> None:
    calls = [p for p in parts if "functionCall" in p]
    if calls and not any("thoughtSignature" in p for p in calls):
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE


def _text(text: str) -> list[JSON]:
    return [{"text": text}] if text else []


def _text_parts(content: Any, where: str, kinds: tuple[str, ...]) -> list[JSON]:
    """Text-only content: a string, or an array of parts of ``kinds`` (text, refusal)."""
    if isinstance(content, str):
        return _text(content)
    if content is None:
        return []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or an array", param=where)
    parts: list[JSON] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise InvalidRequest(f"{here} must be a part of type {' or '.join(kinds)}", param=here)
        parts += _text(_string(part.get(kind), f"{here}.{kind}"))
    return parts


def _user_parts(content: Any, where: str) -> list[JSON]:
    if isinstance(content, str):
        return _text(content)
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or an array", param=where)
    parts: list[JSON] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"{here} must be an object", param=here)
        kind = part.get("type")
        if kind == "text":
            parts += _text(_string(part.get("text"), f"{here}.text"))
        elif kind == "image_url":
            parts.append(_image(part.get("image_url"), f"{here}.image_url"))
        elif kind == "input_audio":
            parts.append(_audio(part.get("input_audio"), f"{here}.input_audio"))
        elif kind == "file":
            parts.append(_file(part.get("file"), f"{here}.file"))
        else:
            raise InvalidRequest(f"{here}.type {kind!r} has no Gemini equivalent", param=here)
    return parts


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string", param=where)
    return value


def _data_url(url: str, where: str, default_mime: str) -> JSON:
    header, comma, data = url.partition(",")
    fields = header[len("data:") :].split(";")
    if not comma or "base64" not in fields[1:]:
        raise InvalidRequest(f"{where} must be a base64 data: URL", param=where)
    return {"inlineData": {"mimeType": fields[0] or default_mime, "data": data}}


def _guess_mime(name: str, default: str) -> str:
    _, dot, extension = name.rpartition(".")
    return _MIME_BY_EXTENSION.get(extension.lower(), default) if dot else default


def _image(image: Any, where: str) -> JSON:
    url = image.get("url") if isinstance(image, dict) else image
    url = _string(url, f"{where}.url")
    if url.startswith("data:"):
        return _data_url(url, f"{where}.url", "image/jpeg")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequest(f"{where}.url must be a data: or http(s) URL", param=f"{where}.url")
    mime = _guess_mime(parsed.path.rsplit("/", 1)[-1], "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _audio(audio: Any, where: str) -> JSON:
    if not isinstance(audio, dict):
        raise InvalidRequest(f"{where} must be an object", param=where)
    audio_format = audio.get("format")
    mime = _AUDIO_MIME.get(audio_format) if isinstance(audio_format, str) else None
    if mime is None:
        raise InvalidRequest(f"{where}.format must be wav or mp3", param=f"{where}.format")
    return {"inlineData": {"mimeType": mime, "data": _string(audio.get("data"), f"{where}.data")}}


def _file(file: Any, where: str) -> JSON:
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        # An OpenAI file_id names a file in OpenAI's storage: nothing Google can read.
        raise InvalidRequest(f"{where}.file_data is required", param=f"{where}.file_data")
    if data.startswith("data:"):
        return _data_url(data, f"{where}.file_data", "application/pdf")
    filename = file.get("filename")
    mime = _guess_mime(filename, "") if isinstance(filename, str) else ""
    if not mime:
        raise InvalidRequest(f"{where}.file_data needs a data: URL", param=f"{where}.file_data")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _assistant_parts(message: JSON, where: str, names: dict[str, str]) -> list[JSON]:
    parts = _text_parts(message.get("content"), where, ("text", "refusal"))
    calls = message.get("tool_calls")
    if calls is None:
        return parts
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be an array", param=f"{where}.tool_calls")
    for j, call in enumerate(calls):
        parts.append(_function_call(call, f"{where}.tool_calls[{j}]", names))
    return parts


def _function_call(call: Any, where: str, names: dict[str, str]) -> JSON:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise InvalidRequest(f"{where} must be a function tool call", param=where)
    name = _string(function.get("name"), f"{where}.function.name")
    args = _arguments(function.get("arguments"), f"{where}.function.arguments")
    if isinstance(call.get("id"), str):
        names[call["id"]] = name
    part: JSON = {"functionCall": {"name": name, "args": args}}
    signature = _signature(call)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _arguments(value: Any, where: str) -> JSON:
    if isinstance(value, dict):
        return value
    text = _string(value, where)
    if not text.strip():
        return {}  # some clients send "" for a call without arguments
    try:
        args = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"{where} is not valid JSON: {exc}", param=where) from None
    if not isinstance(args, dict):
        raise InvalidRequest(f"{where} must be a JSON object", param=where)
    return args


def _signature(call: JSON) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    value = google.get("thought_signature") if isinstance(google, dict) else None
    return value if isinstance(value, str) and value else None


def _function_response(message: JSON, where: str, names: dict[str, str]) -> JSON:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in names:
        raise InvalidRequest(
            f"{where}.tool_call_id {call_id!r} matches no earlier assistant tool call",
            param=f"{where}.tool_call_id",
        )
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(p["text"] for p in _text_parts(content, where, ("text",)))
    else:
        text = _string(content, f"{where}.content")
    return {"functionResponse": {"name": names[call_id], "response": _response_object(text)}}


def _response_object(text: str) -> JSON:
    # Gemini's response field is a JSON object (a protobuf Struct); anything else is wrapped.
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    return {"result": text}


def _declarations(tools: Any) -> list[JSON]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be an array", param="tools")
    declarations = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise InvalidRequest(f"{where} must be a function tool", param=f"{where}.type")
        declaration: JSON = {"name": _string(function.get("name"), f"{where}.function.name")}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise InvalidRequest(
                    f"{where}.function.parameters must be an object",
                    param=f"{where}.function.parameters",
                )
            declaration["parametersJsonSchema"] = parameters
        declarations.append(declaration)
    return declarations


def _tool_config(choice: Any) -> JSON | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return {"functionCallingConfig": {"mode": _TOOL_CHOICE_MODES[choice]}}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        name = _string(name, "tool_choice.function.name")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    if kind == "allowed_tools":
        return _allowed_tools(choice.get("allowed_tools"))
    raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")


def _allowed_tools(allowed: Any) -> JSON:
    where = "tool_choice.allowed_tools"
    mode = allowed.get("mode") if isinstance(allowed, dict) else None
    tools = allowed.get("tools") if isinstance(allowed, dict) else None
    if mode not in ("auto", "required") or not isinstance(tools, list):
        raise InvalidRequest(f"{where} needs a mode and tools", param=where)
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        names.append(_string(function.get("name") if function else None, f"{where}.tools"))
    # VALIDATED: calls limited to these names, or plain text; ANY: calls only.
    gemini_mode = "ANY" if mode == "required" else "VALIDATED"
    return {"functionCallingConfig": {"mode": gemini_mode, "allowedFunctionNames": names}}


def _generation_config(body: JSON) -> JSON:
    config: JSON = {}
    for source, target in _NUMBER_FIELDS:
        if body.get(source) is not None:
            config[target] = _number(body[source], source, int | float)
    for source, target in _INT_FIELDS:
        if body.get(source) is not None:
            config[target] = _number(body[source], source, int)
    for source in ("max_completion_tokens", "max_tokens"):
        if body.get(source) is not None:
            config["maxOutputTokens"] = _number(body[source], source, int)
            break
    stop = _stop(body.get("stop"))
    if stop:
        config["stopSequences"] = stop
    config.update(_response_format(body.get("response_format")))
    return config


def _number(value: Any, where: str, kind: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequest(f"{where} must be a number", param=where)
    return value


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("stop must be a string or an array of strings", param="stop")


def _response_format(fmt: Any) -> JSON:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        out: JSON = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            out["responseJsonSchema"] = schema
        return out
    raise InvalidRequest(f"response_format {fmt!r} is not supported", param="response_format")


# -- answer ---------------------------------------------------------------------------------


def from_generate_response(
    resp: dict[str, Any], *, model: str, created: int, id: str
) -> dict[str, Any]:
    """A ``GenerateContentResponse`` as an OpenAI ``chat.completion``."""
    resp = resp if isinstance(resp, dict) else {}
    candidates = _candidates(resp)
    choices = [_choice(cand, index, id) for index, cand in candidates]
    if not choices:
        # Nothing generated: the prompt itself was blocked (or the answer is empty).
        finish = "content_filter" if _blocked(resp) else "stop"
        message = {"role": "assistant", "content": ""}
        choices = [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]
    out: JSON = {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    usage = _usage(resp.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage
    return out


def _candidates(resp: JSON) -> list[tuple[int, JSON]]:
    raw = resp.get("candidates")
    if not isinstance(raw, list):
        return []
    # protobuf JSON may leave out index 0, so a missing index is the list position.
    indexed = [(_index(c, pos), c) for pos, c in enumerate(raw) if isinstance(c, dict)]
    return sorted(indexed, key=lambda item: item[0])


def _index(candidate: JSON, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def _blocked(resp: JSON) -> bool:
    feedback = resp.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _choice(candidate: JSON, index: int, response_id: str) -> JSON:
    text, calls = _read_parts(candidate)
    message: JSON = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [
            _tool_call(call, _call_id(response_id, index, k)) for k, call in enumerate(calls)
        ]
    finish = _finish_reason(candidate.get("finishReason"), bool(calls))
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}


def _read_parts(candidate: JSON) -> tuple[str, list[JSON]]:
    """The visible text and the ``functionCall`` parts of one candidate."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[JSON] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            calls.append(part)
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return "".join(texts), calls


def _call_id(response_id: str, choice: int, position: int) -> str:
    # Deterministic, so a stream and a full answer name the same calls alike, and unique
    # across a conversation because the answer id is.
    digest = hashlib.sha256(f"{response_id}\x00{choice}\x00{position}".encode()).hexdigest()
    return "call_" + digest[:24]


def _tool_call(part: JSON, call_id: str) -> JSON:
    call = part["functionCall"]
    name = call.get("name")
    args = call.get("args")
    out: JSON = {
        "id": call_id,
        "type": "function",
        "function": {
            "name": name if isinstance(name, str) else "",
            "arguments": json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False),
        },
    }
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def _finish_reason(reason: Any, called: bool) -> str:
    if reason in _FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if called else "stop"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(meta: Any) -> JSON | None:
    if not isinstance(meta, dict):
        return None
    prompt = _count(meta.get("promptTokenCount"))
    thoughts = _count(meta.get("thoughtsTokenCount"))
    completion = _count(meta.get("candidatesTokenCount")) + thoughts
    usage: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(meta.get("totalTokenCount")) or prompt + completion,
    }
    if "cachedContentTokenCount" in meta:
        cached = _count(meta["cachedContentTokenCount"])
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if "thoughtsTokenCount" in meta:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


# -- stream ---------------------------------------------------------------------------------


class GenerateToChatStream:
    """``streamGenerateContent?alt=sse`` events -> OpenAI ``chat.completion.chunk`` dicts.

    Each Gemini event carries new text only (not the text so far) and whole function calls;
    ``usageMetadata`` is cumulative, so the last one seen is the usage."""

    def __init__(self, *, model: str, created: int, id: str, include_usage: bool) -> None:
        self._base: JSON = {
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._id = id
        self._include_usage = include_usage
        self._calls: dict[int, int] = {}  # candidate index -> calls sent; also "started"
        self._finished: set[int] = set()
        self._usage: JSON | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage

    @property
    def finished(self) -> bool:
        """Every candidate that started has given its finish reason."""
        return bool(self._calls) and self._finished >= self._calls.keys()

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(event, dict):
            return []
        if event.get("error") is not None:
            raise _stream_failed(event["error"])
        usage = _usage(event.get("usageMetadata"))
        if usage is not None:
            self._usage = usage
        candidates = _candidates(event)
        out: list[JSON] = []
        for index, candidate in candidates:
            out += self._candidate(index, candidate)
        if not candidates and _blocked(event):
            out += self._start(0)
            out += self._finish(0, "content_filter")
        return out

    def finish(self) -> list[dict[str, Any]]:
        if not self._include_usage or self._usage is None:
            return []
        return [{**self._base, "choices": [], "usage": self._usage}]

    def _candidate(self, index: int, candidate: JSON) -> list[JSON]:
        out = self._start(index)
        text, calls = _read_parts(candidate)
        if text:
            out.append(self._chunk(index, {"content": text}))
        if calls:
            first = self._calls[index]
            deltas = [
                {"index": first + k, **_tool_call(call, _call_id(self._id, index, first + k))}
                for k, call in enumerate(calls)
            ]
            self._calls[index] += len(calls)
            out.append(self._chunk(index, {"tool_calls": deltas}))
        reason = candidate.get("finishReason")
        if reason:
            out += self._finish(index, _finish_reason(reason, self._calls[index] > 0))
        return out

    def _start(self, index: int) -> list[JSON]:
        if index in self._calls:
            return []
        self._calls[index] = 0
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def _finish(self, index: int, reason: str) -> list[JSON]:
        if index in self._finished:
            return []
        self._finished.add(index)
        return [self._chunk(index, {}, reason)]

    def _chunk(self, index: int, delta: JSON, finish: str | None = None) -> JSON:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**self._base, "choices": [choice]}


def _stream_failed(error: Any) -> StreamFailed:
    if not isinstance(error, dict):
        return StreamFailed(_short(str(error)))
    message = error.get("message")
    status = error.get("status")
    return StreamFailed(
        _short(message) if isinstance(message, str) else "stream failed",
        kind=status if isinstance(status, str) else "",
    )


# -- errors and model listing ---------------------------------------------------------------


def error_message(body: bytes) -> str:
    """The message of a Google error body (``{"error": {code, message, status}}``), or ""."""
    try:
        data = json.loads(body)
        if isinstance(data, list) and data:
            data = data[0]  # streamGenerateContent without alt=sse answers a JSON array
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return ""
        for key in ("message", "status"):
            if isinstance(error.get(key), str) and error[key].strip():
                return _short(error[key])
    except Exception:  # any bytes at all may arrive here; this must never raise
        return ""
    return ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def parse_models(listing: Any) -> list[Model]:
    """One page of ``GET /v1beta/models`` as Models (see :func:`next_page_token`)."""
    entries = listing.get("models") if isinstance(listing, dict) else None
    models: list[Model] = []
    for entry in entries if isinstance(entries, list) else []:
        model = _model(entry)
        if model is not None:
            models.append(model)
    return models


def _model(entry: Any) -> Model | None:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name.startswith("models/"):
        return None  # e.g. tunedModels/...: not served under /v1beta/models
    model_id = name.removeprefix("models/")
    try:
        path(model_id, stream=False)
    except InvalidRequest:
        return None  # a name that cannot be routed must not enter the registry
    methods = entry.get("supportedGenerationMethods")
    methods = [m for m in methods if isinstance(m, str)] if isinstance(methods, list) else []
    chat = "generateContent" in methods
    return Model(
        id=model_id,
        name=model_id,
        context_length=_count(entry.get("inputTokenLimit")) or None,
        max_output_tokens=_count(entry.get("outputTokenLimit")) or None,
        supports_chat=chat,
        supports_json_mode=chat,
        supports_embeddings="embedContent" in methods,
    )


def next_page_token(listing: Any) -> str | None:
    """The token for the next page of the model listing, None on the last page."""
    token = listing.get("nextPageToken") if isinstance(listing, dict) else None
    return token if isinstance(token, str) and token else None
