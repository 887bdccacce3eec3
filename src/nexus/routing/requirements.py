"""Request inspection (F15): validate a parsed request and derive what it needs.

One pass over the parsed body, no I/O: the model, a token estimate (characters / 4 of all
text, plus ``max_tokens``), and whether it needs vision, tools or JSON mode. Validation is
deliberately shallow: enough to answer malformed input with a 400 naming the field, while
anything a backend understands and we do not (unknown fields) passes through untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nexus.errors import InvalidRequest
from nexus.tokens import PromptCount

MAX_MODEL_NAME = 256
JSON_FORMATS = ("json_object", "json_schema")
CONTROL_CHARS = re.compile("[\x00-\x1f]")  # one C scan instead of a generator per request


@dataclass(slots=True)
class Requirements:
    model: str
    estimated_tokens: int = 0
    prompt_chars: int = 0  # characters of text the request sends (a cheap size, not tokens)
    needs_vision: bool = False
    needs_tools: bool = False
    needs_json_mode: bool = False
    stream: bool = False
    include_usage: bool = False
    embeddings: bool = False
    completions: bool = False  # legacy /v1/completions: only backends that serve it
    only_type: str | None = None  # only backends of this type (a request only they can serve)
    max_tokens: int = 0  # the completion's limit, as the client set it (0: none)
    prompt_tokens: int | None = None  # known without counting (tests, translated requests)
    prompt_count: PromptCount | None = None  # counted on demand (with a budget)

    @property
    def is_plain_chat(self) -> bool:
        """Chat with no special needs: only the model and its context length matter."""
        needs = self.needs_vision or self.needs_tools or self.needs_json_mode
        return not (needs or self.embeddings or self.completions or self.only_type)

    @property
    def is_chat(self) -> bool:
        """A chat in OpenAI's shape, whatever it needs (its history can be stripped)."""
        return not (self.embeddings or self.completions or self.only_type)

    def describe(self) -> str:
        needs = [
            n
            for n, on in (
                ("vision", self.needs_vision),
                ("tools", self.needs_tools),
                ("json_mode", self.needs_json_mode),
                ("embeddings", self.embeddings),
                ("legacy completions", self.completions),
            )
            if on
        ]
        return ", ".join(needs) or "chat"


_GOOD_MODELS: set[str] = set()  # names found valid (a client asks for a few, again and again)


def _model(body: Any) -> str:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if isinstance(model, str) and model in _GOOD_MODELS:
        return model
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_NAME or CONTROL_CHARS.search(model):
        raise InvalidRequest("'model' is not a valid model name", param="model")
    if len(_GOOD_MODELS) < 1024:
        _GOOD_MODELS.add(model)
    return model


@dataclass(frozen=True, slots=True)
class Field:
    """An optional field's type and range; only fields a request has are checked."""

    kind: type | tuple[type, ...]
    what: str  # "an integer", ...
    lo: float | None = None
    hi: float | None = None

    def check(self, key: str, value: Any) -> None:
        kind, number = self.kind, value  # (number: compared below once the type is checked)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise InvalidRequest(f"'{key}' must be {self.what}", param=key)
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None and not lo <= number <= hi:
            shown = f"{lo} and {hi}" if kind is int else f"{lo:g} and {hi:g}"
            raise InvalidRequest(f"'{key}' must be between {shown}", param=key)


CHAT_FIELDS = {
    "stream": Field(bool, "a boolean"),
    "stream_options": Field(dict, "an object"),
    "max_tokens": Field(int, "an integer", 1, 10_000_000),
    "max_completion_tokens": Field(int, "an integer", 1, 10_000_000),
    "n": Field(int, "an integer", 1, 128),
    "temperature": Field((int, float), "a number", 0, 2),
    "top_p": Field((int, float), "a number", 0, 1),
    "tools": Field(list, "an array"),
    "response_format": Field(dict, "an object"),
}
EMBEDDING_FIELDS = {
    "encoding_format": Field(str, "a string"),
    "dimensions": Field(int, "an integer", 1, 65536),
}


def check_fields(body: dict[str, Any], fields: dict[str, Field]) -> None:
    """Check the optional fields ``body`` has, one check each; None counts as absent. The
    smaller of the two is walked: a request usually has fewer keys than there are fields,
    and one with a million keys still costs a lookup per field."""
    if len(body) <= len(fields):
        for key, value in body.items():
            if (field := fields.get(key)) is not None and value is not None:
                field.check(key, value)
        return
    for key, field in fields.items():
        if (value := body.get(key)) is not None:
            field.check(key, value)


def inspect_chat(body: Any) -> Requirements:
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    chars = 0
    vision = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(
                f"messages[{i}].role must be a non-empty string", param=f"messages[{i}].role"
            )
        content = message.get("content")
        if content is None:
            continue  # an assistant tool-call turn carries no content
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise InvalidRequest(f"{where} must be an object with a 'type'", param=where)
                kind = part["type"]
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise InvalidRequest(f"{where}.text must be a string", param=where)
                    chars += len(text)
                elif kind in ("image_url", "input_image", "image"):
                    vision = True
        else:
            raise InvalidRequest(
                f"messages[{i}].content must be a string, an array or null",
                param=f"messages[{i}].content",
            )
    check_fields(body, CHAT_FIELDS)
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    max_tokens = body.get("max_tokens")
    max_completion = body.get("max_completion_tokens")
    tools = body.get("tools")
    fmt = body.get("response_format")
    if fmt is not None and not isinstance(fmt.get("type"), str):
        raise InvalidRequest("'response_format.type' must be a string", param="response_format")
    limit = max_completion or max_tokens or 0
    # Made from three values and then set: nine keywords cost more than the rest of this
    # function's bookkeeping (a keyword argument is matched by name, per call).
    req = Requirements(model, chars // 4 + limit, chars)
    req.max_tokens = limit
    req.needs_vision = vision
    req.needs_tools = bool(tools)
    req.needs_json_mode = fmt is not None and fmt["type"] in JSON_FORMATS
    req.stream = stream
    req.include_usage = bool(options.get("include_usage"))
    return req


def inspect_model(body: Any, *, stream: bool) -> Requirements:
    """Only the model (a request whose body only its own kind of backend reads)."""
    return Requirements(model=_model(body), stream=stream)


COMPLETION_FIELDS = {
    **{key: CHAT_FIELDS[key] for key in ("stream", "stream_options", "max_tokens", "n")},
    **{key: CHAT_FIELDS[key] for key in ("temperature", "top_p")},
    "suffix": Field(str, "a string"),
    "echo": Field(bool, "a boolean"),
    "logprobs": Field(int, "an integer", 0, 20),
}


def inspect_completions(body: Any) -> Requirements:
    """Legacy ``/v1/completions``: a prompt (string, strings, or token ids) to continue."""
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars = len(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        chars = sum(len(p) for p in prompt)
    elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
        chars = 4 * len(prompt)
    else:
        raise InvalidRequest(
            "'prompt' must be a string, an array of strings or an array of token ids",
            param="prompt",
        )
    check_fields(body, COMPLETION_FIELDS)
    max_tokens = body.get("max_tokens") or 16  # OpenAI's default for completions
    options = body.get("stream_options") or {}
    return Requirements(
        model=model,
        estimated_tokens=chars // 4 + max_tokens,
        prompt_chars=chars,
        max_tokens=max_tokens,
        stream=body.get("stream") or False,
        include_usage=bool(options.get("include_usage")),
        completions=True,
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def inspect_embeddings(body: Any) -> Requirements:
    model = _model(body)
    data = body.get("input")
    # Each input is embedded on its own, so the longest one must fit the context, not the
    # batch: 20,000 short passages are fine for an 8k-context embedding model.
    if isinstance(data, str) and data:
        tokens = len(data) // 4
    elif isinstance(data, list) and data:
        if all(_is_token(t) for t in data):  # one input, as token ids
            tokens = len(data)
        else:
            tokens = 0
            for i, item in enumerate(data):
                if isinstance(item, str):
                    size = len(item) // 4
                elif isinstance(item, list) and all(_is_token(t) for t in item):
                    size = len(item)
                else:
                    raise InvalidRequest(
                        f"input[{i}] must be a string or an array of token ids", param="input"
                    )
                tokens = max(tokens, size)
    else:
        raise InvalidRequest(
            "'input' must be a non-empty string or a non-empty array", param="input"
        )
    check_fields(body, EMBEDDING_FIELDS)
    return Requirements(model=model, estimated_tokens=tokens, embeddings=True)
