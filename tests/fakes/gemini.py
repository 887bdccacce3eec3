"""FakeGemini: the Gemini API (generativelanguage.googleapis.com) on a FakeServer.

Endpoints, under both ``/v1beta`` and ``/v1`` (google-genai 3.x defaults to v1):
``POST models/{model}:generateContent``, ``POST models/{model}:streamGenerateContent``
(``?alt=sse``: ``data:`` events framed with CRLF like Google's, each a
GenerateContentResponse, the last with finishReason and full usageMetadata; without
``alt=sse`` a JSON array), ``POST models/{model}:countTokens``, ``GET models`` (paged:
models + nextPageToken, ``pageSize`` / ``pageToken``) and ``GET models/{model}``.

Authentication: the key goes in ``x-goog-api-key``. A ``key=`` query parameter is
recorded (`query_key_requests`) and refused with 400 unless `query_key_allowed` (the real
API accepts it; Nexus must never put a key in a URL). A wrong key gets Google's answer,
400 INVALID_ARGUMENT "API key not valid" (reason API_KEY_INVALID); no key at all gets
403 PERMISSION_DENIED. Errors are ``{"error": {"code", "message", "status", "details"?}}``.

Answers are deterministic (see `FakeGemini`); requests are validated like the real API
for what a gateway can get wrong (unknown field names, empty contents or parts, roles,
one data field per part, base64, functionCall / functionResponse turn order and counts,
thought signatures when `thought_signatures` is on).

Misbehaviour: `chat_behavior` / `health_behavior` as in server.py (a stream's CUT_STREAM
/ STALL_STREAM count `cut_after` chunks); `error_status` answers every API call with that
status in Google's shape (429 RESOURCE_EXHAUSTED with RetryInfo...); `stream_error` ends a
stream after `cut_after` chunks with ``data: {"error": {...}}`` (the SDK raises it).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from aiohttp import web

from .anthropic import CloudFake, example_from_schema, new_id, split_words, truncate_words
from .anthropic import word_count as words
from .models import Behavior, FakeModel, ReceivedRequest
from .server import Route, json_response

IMAGE_TOKENS = 258  # what one image adds to the fake's token counts (Gemini's own figure)

STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES: dict[int, str] = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_SERVICE = "generativelanguage.googleapis.com"
BAD_KEY = "API key not valid. Please pass a valid API key."
NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def error_body(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": status, "message": message, "status": status_name(status)}
    if details:
        err["details"] = details
    return {"error": err}


def _error_details(status: int, message: str) -> list[dict[str, Any]] | None:
    if message == BAD_KEY:
        return [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ]
    if status == 429:
        return [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": f"{_SERVICE}/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
        ]
    return None


# ------------------------------------------------------------------ field names
def camel(name: str) -> str:
    """Proto JSON accepts both spellings: response_mime_type == responseMimeType."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def field(obj: Any, name: str) -> Any:
    """`obj[name]` under its camelCase or snake_case spelling."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name))


_REQUEST_FIELDS = frozenset(
    {"model", "contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
     "generationConfig", "cachedContent"}
)  # fmt: skip
_CONTENT_FIELDS = frozenset({"role", "parts"})
_PART_DATA = frozenset(
    {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
     "codeExecutionResult"}
)  # fmt: skip
_PART_FIELDS = _PART_DATA | {
    "thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"
}  # fmt: skip
_GENERATION_FIELDS = frozenset(
    {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
     "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
     "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
     "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
     "mediaResolution"}
)  # fmt: skip
_MIME_TYPES = (
    "text/plain",
    "application/json",
    "application/xml",
    "application/yaml",
    "text/x.enum",
)
_PROTO = "type.googleapis.com/google.ai.generativelanguage.v1beta"
_FUNCTION_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")


def _unknown(obj: dict[str, Any], known: frozenset[str], where: str) -> str | None:
    for key in obj:
        if camel(key) not in known:
            at = f" at '{where}'" if where else ""
            return f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
    return None


def parts_of(content: Any) -> list[dict[str, Any]]:
    parts = field(content, "parts")
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def role_of(content: Any) -> str:
    role = field(content, "role")
    return role if isinstance(role, str) and role else "user"


def decode_bytes(data: Any) -> bytes | None:
    """Proto JSON bytes: base64, standard or URL-safe, padded or not (the SDK sends URL-safe)."""
    if not isinstance(data, str):
        return None
    padded = data.strip() + "=" * (-len(data.strip()) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None


def _part_problem(part: Any, where: str) -> str | None:
    if not isinstance(part, dict):
        return f"Invalid value at '{where}' ({_PROTO}.Part)"
    if problem := _unknown(part, _PART_FIELDS, where):
        return problem
    data = [camel(k) for k in part if camel(k) in _PART_DATA]
    if not data:
        return (
            f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one "
            "initialized field"
        )
    if len(data) > 1:
        return (
            f"Invalid value at '{where}.data' (oneof), oneof field 'data' is already set. "
            f"Cannot set '{data[1]}'"
        )
    inline = field(part, "inlineData")
    if inline is not None:
        if not isinstance(field(inline, "mimeType"), str):
            return (
                f"* GenerateContentRequest.{where}.inline_data.mime_type: required field is not set"
            )
        if decode_bytes(field(inline, "data")) is None:
            return (
                f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
            )
    call = field(part, "functionCall")
    if call is not None and not isinstance(field(call, "name"), str):
        return f"* GenerateContentRequest.{where}.function_call.name: Name cannot be empty."
    answer = field(part, "functionResponse")
    if answer is not None and not isinstance(field(answer, "name"), str):
        return f"* GenerateContentRequest.{where}.function_response.name: Name cannot be empty."
    return None


def _contents_problem(contents: Any) -> str | None:
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"Invalid value at 'contents[{i}]' ({_PROTO}.Content)"
        if problem := _unknown(content, _CONTENT_FIELDS, f"contents[{i}]"):
            return problem
        if role_of(content) not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = field(content, "parts")
        if not isinstance(parts, list) or not parts:
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        for j, part in enumerate(parts):
            if problem := _part_problem(part, f"contents[{i}].parts[{j}]"):
                return problem
    return None


def _calls(content: Any) -> list[dict[str, Any]]:
    return [p for p in parts_of(content) if field(p, "functionCall") is not None]


def _responses(content: Any) -> list[dict[str, Any]]:
    return [p for p in parts_of(content) if field(p, "functionResponse") is not None]


def _turns_problem(contents: list[Any], *, signatures: bool) -> str | None:
    """functionCall after a user turn, functionResponse right after as many calls."""
    current = 0  # the current turn starts at the last user message with text in it
    for i, content in enumerate(contents):
        if role_of(content) == "user" and any(field(p, "text") for p in parts_of(content)):
            current = i
    for i, content in enumerate(contents):
        calls, answers = _calls(content), _responses(content)
        previous = contents[i - 1] if i else None
        if calls and (previous is None or role_of(previous) != "user"):
            return (
                "Please ensure that function call turn comes immediately after a user turn "
                "or after a function response turn."
            )
        if calls and signatures and i > current and not field(calls[0], "thoughtSignature"):
            name = field(field(calls[0], "functionCall"), "name")
            return (
                "Function call is missing a thought_signature in functionCall parts. This is "
                "required for tools to work correctly, and missing thought_signature may lead "
                f"to degraded model performance. Additional data, function call `default_api:"
                f"{name}` , position {i + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
            )
        if answers:
            expected = _calls(previous)
            if not expected:
                return (
                    "Please ensure that function response turn comes immediately after a "
                    "function call turn."
                )
            if len(expected) != len(answers):
                return (
                    "Please ensure that the number of function response parts is equal to the "
                    "number of function call parts of the function call turn."
                )
    return None


def declarations(payload: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for tool in field(payload, "tools") or []:
        decls = field(tool, "functionDeclarations")
        if isinstance(decls, list):
            found.extend(d for d in decls if isinstance(d, dict))
    return found


def _tools_problem(payload: dict[str, Any]) -> str | None:
    tools = field(payload, "tools")
    if tools is not None and not isinstance(tools, list):
        return f"Invalid value at 'tools' ({_PROTO}.Tool)"
    for k, decl in enumerate(declarations(payload)):
        name = field(decl, "name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            return (
                f"* GenerateContentRequest.tools[0].function_declarations[{k}].name: Invalid "
                "function name. Must start with a letter or an underscore. Must be alphameric "
                "(a-z, A-Z, 0-9), underscores (_), dots (.), colons (:) or dashes (-), with a "
                "maximum length of 64."
            )
    return None


def _generation_problem(config: Any) -> str | None:
    if config is None:
        return None
    if not isinstance(config, dict):
        return f"Invalid value at 'generation_config' ({_PROTO}.GenerationConfig)"
    if problem := _unknown(config, _GENERATION_FIELDS, "generation_config"):
        return problem
    mime = field(config, "responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        return (
            "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes "
            "are `text/plain`, `application/json`, `application/xml`, `application/yaml` and "
            "`text/x.enum`."
        )
    limit = field(config, "maxOutputTokens")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        return "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
    return None


def request_problem(payload: dict[str, Any] | None, *, signatures: bool = False) -> str | None:
    """Why the real API would refuse this generateContent body, or None."""
    if payload is None:
        return "Invalid JSON payload received. Expected an object."
    contents = field(payload, "contents")
    return (
        _unknown(payload, _REQUEST_FIELDS, "")
        or _contents_problem(contents)
        or _turns_problem(contents, signatures=signatures)
        or _tools_problem(payload)
        or _generation_problem(field(payload, "generationConfig"))
    )


def images_in(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every inlineData / fileData part of the contents, as sent."""
    return [
        p
        for content in field(payload, "contents") or []
        for p in parts_of(content)
        if field(p, "inlineData") is not None or field(p, "fileData") is not None
    ]


def count_prompt_tokens(payload: dict[str, Any]) -> int:
    """Words of every text, JSON of calls / responses / tools, IMAGE_TOKENS per image."""
    texts = [str(field(p, "text") or "") for p in parts_of(field(payload, "systemInstruction"))]
    for content in field(payload, "contents") or []:
        for part in parts_of(content):
            texts.append(str(field(part, "text") or ""))
            for name in ("functionCall", "functionResponse"):
                if (value := field(part, name)) is not None:
                    texts.append(json.dumps(value))
    tools = field(payload, "tools")
    tool_tokens = len(orjson.dumps(tools)) // 4 if tools else 0
    total = sum(words(t) for t in texts) + tool_tokens + IMAGE_TOKENS * len(images_in(payload))
    return max(1, total)


@dataclass
class GeminiReply:
    """What the fake answers: the candidate's parts, finishReason, output token count."""

    parts: list[dict[str, Any]]
    finish_reason: str
    output_tokens: int


class FakeGemini(CloudFake):
    """The Gemini API (see the module docstring).

    Scripting: `reply_text` replaces every text answer (JSON mode included);
    `tool_input` the args of the functionCall (default: built from the declaration's
    required properties); `cached_content_token_count` and `thoughts_token_count` go into
    every usageMetadata (promptTokenCount includes the cached tokens, as Google counts).
    `thought_signatures` puts a thoughtSignature on every functionCall part and refuses a
    current-turn functionCall sent back without one (Gemini 3 behaviour).
    """

    kind = "gemini"
    default_models = (
        FakeModel("gemini-2.5-flash", context_length=1_048_576, vision=True),
        FakeModel("gemini-2.5-pro", context_length=1_048_576, vision=True),
    )
    output_token_limit: ClassVar[int] = 65_536
    sse_separator: ClassVar[bytes] = b"\r\n\r\n"

    def __init__(
        self,
        models: list[FakeModel] | None = None,
        *,
        api_key: str = "gemini-test-key",
        query_key_allowed: bool = False,
        thought_signatures: bool = False,
        stream_chunks: int = 4,
    ) -> None:
        super().__init__(models, api_key=api_key, stream_chunks=stream_chunks)
        self.query_key_allowed = query_key_allowed
        self.thought_signatures = thought_signatures
        self.cached_content_token_count = 0
        self.thoughts_token_count = 0

    def reset(self) -> None:
        super().reset()
        self.cached_content_token_count = 0
        self.thoughts_token_count = 0

    def _routes(self) -> list[Route]:
        routes: list[Route] = []
        for version in ("v1beta", "v1"):
            base = f"/{version}/models"
            routes += [
                ("GET", base, self._probe(self._list)),
                ("GET", base + "/{name}", self._probe(self._get)),
                ("POST", base + "/{name}", self._api(self._call)),
            ]
        return routes

    # ------------------------------------------------------------ recorded
    @property
    def generate_requests(self) -> list[ReceivedRequest]:
        """generateContent and streamGenerateContent calls, in order."""
        ends = (":generateContent", ":streamGenerateContent")
        return [r for r in self.requests if r.method == "POST" and r.path.endswith(ends)]

    @property
    def query_key_requests(self) -> list[ReceivedRequest]:
        """Requests that carried an API key in the URL (``?key=``): Nexus must send none."""
        return [r for r in self.requests if "key" in r.query]

    # -------------------------------------------------------------- errors
    def error_response(
        self, status: int, message: str, *, native: bool = False, param: str | None = None
    ) -> web.Response:
        return json_response(error_body(status, message, _error_details(status, message)), status)

    def default_error_message(self, status: int) -> str:
        return _MESSAGES.get(status, super().default_error_message(status))

    def stream_error_frame(self, status: int) -> bytes:
        body = error_body(status, self.default_error_message(status))
        return b"data: " + orjson.dumps(body) + self.sse_separator

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        return self.error_response(404, f"Method not found: {request.method} {request.path}")

    def _auth_problem(self, request: web.Request) -> web.Response | None:
        url_key = request.query.get("key")
        if url_key is not None and not self.query_key_allowed:
            return self.error_response(
                400, "FakeGemini refuses API keys in the URL: send the x-goog-api-key header"
            )
        key = request.headers.get("x-goog-api-key", url_key)
        if key is None:
            return self.error_response(403, NO_KEY)
        return self.error_response(400, BAD_KEY) if key != self.api_key else None

    # --------------------------------------------------------------- models
    def model_entry(self, model: FakeModel) -> dict[str, Any]:
        methods = ["embedContent"] if model.embedding else [
            "generateContent", "countTokens", "createCachedContent", "batchGenerateContent"
        ]  # fmt: skip
        return {
            "name": f"models/{model.id}",
            "version": "001",
            "displayName": model.id.replace("-", " ").title(),
            "description": f"Fake Gemini model {model.id}",
            "inputTokenLimit": model.context_length,
            "outputTokenLimit": self.output_token_limit,
            "supportedGenerationMethods": methods,
            "temperature": 1.0,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2.0,
            "thinking": True,
        }

    async def _list(self, request: web.Request) -> web.Response:
        if denied := self._auth_problem(request):
            return denied
        try:
            size = int(request.query.get("pageSize") or 50)
            token = request.query.get("pageToken") or ""
            start = int(base64.urlsafe_b64decode(token).decode().removeprefix("offset=") or 0)
        except (ValueError, binascii.Error):
            return self.error_response(400, "Invalid page token or page size.")
        size = min(max(size, 1), 1000)
        page = self.models[start : start + size]
        body: dict[str, Any] = {"models": [self.model_entry(m) for m in page]}
        if start + size < len(self.models):
            body["nextPageToken"] = base64.urlsafe_b64encode(
                f"offset={start + size}".encode()
            ).decode()
        return json_response(body)

    async def _get(self, request: web.Request) -> web.Response:
        if denied := self._auth_problem(request):
            return denied
        name = request.match_info["name"]
        model = self.find_model(name)
        if model is None:
            return self.error_response(404, f"Model is not found: models/{name}.")
        return json_response(self.model_entry(model))

    # -------------------------------------------------------------- answers
    async def _call(self, request: web.Request, behavior: Behavior) -> web.StreamResponse:
        if denied := self._auth_problem(request):
            return denied
        name, _, method = request.match_info["name"].partition(":")
        if method not in ("generateContent", "streamGenerateContent", "countTokens"):
            return self.error_response(404, f"Method not found: {method or '(none)'}")
        model = self.find_model(name)
        version = request.path.split("/")[1]
        if model is None or (model.embedding and method != "countTokens"):
            return self.error_response(
                404,
                f"models/{name} is not found for API version {version}, or is not supported "
                f"for {method}. Call ListModels to see the list of available models and "
                "their supported methods.",
            )
        payload = await self._payload(request)
        if method == "countTokens" and payload is not None:
            payload = field(payload, "generateContentRequest") or payload
            payload = {k: v for k, v in payload.items() if camel(k) != "model"}
        problem = request_problem(payload, signatures=self.thought_signatures)
        if problem or payload is None:
            return self.error_response(400, problem or "invalid request")
        if method == "countTokens":
            return await self._deliver(request, json_response(self._token_count(payload)), behavior)
        self.images.extend(images_in(payload))
        reply = self.plan_reply(payload)
        prompt = count_prompt_tokens(payload)
        if method == "generateContent":
            body = self.response_body(name, reply.parts, reply, prompt, final=True)
            return await self._deliver(request, json_response(body), behavior)
        chunks = self.stream_chunks_of(name, reply, prompt)
        if request.query.get("alt") != "sse":
            return await self._deliver(request, json_response(chunks), behavior)
        frames = [b"data: " + orjson.dumps(c) + self.sse_separator for c in chunks]
        return await self._sse(request, [], frames, behavior)

    def _token_count(self, payload: dict[str, Any]) -> dict[str, Any]:
        total = count_prompt_tokens(payload) + self.cached_content_token_count
        return {
            "totalTokens": total,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
        }

    def plan_reply(self, payload: dict[str, Any]) -> GeminiReply:
        if self.refuse:
            return GeminiReply([{"text": ""}], "SAFETY", 0)
        contents = field(payload, "contents")
        answers = _responses(contents[-1]) if role_of(contents[-1]) == "user" else []
        if answers:
            shown = "; ".join(
                f"{field(field(p, 'functionResponse'), 'name')} returned "
                f"{json.dumps(field(field(p, 'functionResponse'), 'response'))}"
                for p in answers
            )
            return self._text_reply(payload, self.reply_text or f"Function result: {shown}")
        decl = self._chosen_function(payload)
        if decl is not None:
            return self._call_reply(decl)
        config = field(payload, "generationConfig") or {}
        if field(config, "responseMimeType") == "application/json" and self.reply_text is None:
            schema = field(config, "responseSchema") or field(config, "responseJsonSchema")
            value = (
                example_from_schema(schema) if schema else {"echo": self.last_user_text(payload)}
            )
            return self._text_reply(payload, json.dumps(value))
        return self._text_reply(payload, self.reply_text or self.echo_text(payload))

    @staticmethod
    def last_user_text(payload: dict[str, Any]) -> str:
        users = [c for c in field(payload, "contents") if role_of(c) == "user"]
        parts = parts_of(users[-1]) if users else []
        return " ".join(str(field(p, "text")) for p in parts if field(p, "text") is not None)

    def echo_text(self, payload: dict[str, Any]) -> str:
        users = [c for c in field(payload, "contents") if role_of(c) == "user"]
        images = [p for p in parts_of(users[-1]) if p in images_in(payload)] if users else []
        text = f"Echo: {self.last_user_text(payload) or '(no text)'}"
        return f"{text} [{len(images)} image(s)]" if images else text

    @staticmethod
    def _chosen_function(payload: dict[str, Any]) -> dict[str, Any] | None:
        decls = declarations(payload)
        calling = field(field(payload, "toolConfig"), "functionCallingConfig") or {}
        if not decls or field(calling, "mode") == "NONE":
            return None
        allowed = field(calling, "allowedFunctionNames")
        if isinstance(allowed, list) and allowed:
            return next((d for d in decls if field(d, "name") in allowed), decls[0])
        return decls[0]

    def _call_reply(self, decl: dict[str, Any]) -> GeminiReply:
        schema = field(decl, "parameters") or field(decl, "parametersJsonSchema")
        args = self.tool_input if self.tool_input is not None else example_from_schema(schema)
        part: dict[str, Any] = {"functionCall": {"name": field(decl, "name"), "args": args}}
        if self.thought_signatures:
            part["thoughtSignature"] = base64.b64encode(f"fake-sig:{part}".encode()).decode()
        return GeminiReply([part], "STOP", 10 + len(json.dumps(args)) // 4)

    @staticmethod
    def _text_reply(payload: dict[str, Any], text: str) -> GeminiReply:
        config = field(payload, "generationConfig") or {}
        stops = [s for s in field(config, "stopSequences") or [] if s and s in text]
        if stops:
            text = text[: min(text.find(s) for s in stops)]
        finish = "STOP"
        limit = field(config, "maxOutputTokens")
        if isinstance(limit, int) and words(text) > limit:
            text, finish = truncate_words(text, limit), "MAX_TOKENS"
        return GeminiReply([{"text": text}], finish, max(1, words(text)))

    def usage(self, prompt: int, output: int | None) -> dict[str, Any]:
        """usageMetadata; `output` None for the running usage of a stream's inner chunks."""
        prompt += self.cached_content_token_count
        usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if output is not None:
            usage["candidatesTokenCount"] = output
            usage["totalTokenCount"] = prompt + output + self.thoughts_token_count
            if self.thoughts_token_count:
                usage["thoughtsTokenCount"] = self.thoughts_token_count
        if self.cached_content_token_count:
            usage["cachedContentTokenCount"] = self.cached_content_token_count
            usage["cacheTokensDetails"] = [
                {"modality": "TEXT", "tokenCount": self.cached_content_token_count}
            ]
        return usage

    def response_body(
        self,
        model: str,
        parts: list[dict[str, Any]],
        reply: GeminiReply,
        prompt: int,
        *,
        final: bool,
        response_id: str | None = None,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if final:
            candidate["finishReason"] = reply.finish_reason
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(prompt, reply.output_tokens if final else None),
            "modelVersion": model,
            "responseId": response_id or new_id(""),
        }

    def stream_chunks_of(self, model: str, reply: GeminiReply, prompt: int) -> list[dict[str, Any]]:
        """The chunks of a streamed answer: text split in `stream_chunks`, a call whole."""
        rid = new_id("")
        text = reply.parts[0].get("text")
        if text is None or not text:
            return [
                self.response_body(model, reply.parts, reply, prompt, final=True, response_id=rid)
            ]
        pieces = split_words(text, self.stream_chunks)
        return [
            self.response_body(
                model, [{"text": p}], reply, prompt, final=i == len(pieces) - 1, response_id=rid
            )
            for i, p in enumerate(pieces)
        ]
