"""Builders for OpenAI-shaped payloads (chat completions, chunks, embeddings, errors).

Pure functions without I/O so they are easy to reuse and to reason about.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import uuid
from typing import Any

TOOL_ARGUMENTS = '{"x": 1}'

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("service_unavailable_error", None),
}


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """OpenAI-shaped error object: {"error": {message, type, param, code}}."""
    err_type, code = _ERROR_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def split_text(text: str, pieces: int) -> list[str]:
    """Split `text` into exactly `pieces` consecutive parts (some may be empty)."""
    pieces = max(1, pieces)
    n = len(text)
    return [text[i * n // pieces : (i + 1) * n // pieces] for i in range(pieces)]


def first_tool_name(payload: dict[str, Any]) -> str | None:
    """Name of the first tool of a request, or None when it has no tools."""
    tools = payload.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    first = tools[0]
    if isinstance(first, dict):
        fn = first.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str):
            return name
    return "tool"


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return 1
    chars = sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict))
    return max(1, chars // 4 + 4 * len(messages))


def completion_tokens(payload: dict[str, Any], default: int) -> int:
    """min(max_tokens, default); max_completion_tokens is honoured as well."""
    limits = [
        v
        for v in (payload.get("max_tokens"), payload.get("max_completion_tokens"))
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    ]
    return min([default, *limits])


def usage(prompt_tokens: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _top_logprobs(payload: dict[str, Any]) -> int:
    n = payload.get("top_logprobs")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def logprobs_for(text: str, payload: dict[str, Any], offset: int = 0) -> dict[str, Any]:
    """A chat `logprobs` object ({"content": [...], "refusal": None}) for `text`."""
    top = _top_logprobs(payload)
    content = []
    for i, tok in enumerate(re.findall(r"\s*\S+|\s+", text)):
        lp = -round(0.05 * (offset + i + 1), 4)
        alternatives = [
            {
                "token": tok if k == 0 else f"{tok}~{k}",
                "logprob": lp - k,
                "bytes": list((tok if k == 0 else f"{tok}~{k}").encode()),
            }
            for k in range(top)
        ]
        content.append(
            {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alternatives}
        )
    return {"content": content, "refusal": None}


def wants_logprobs(payload: dict[str, Any]) -> bool:
    return payload.get("logprobs") is True


def chat_completion(
    *,
    payload: dict[str, Any],
    model: str,
    content: str,
    created: int,
    fingerprint: str | None,
    default_completion_tokens: int,
) -> dict[str, Any]:
    """A non-streamed `chat.completion` object."""
    tool = first_tool_name(payload)
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    finish = "stop"
    if tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": tool, "arguments": TOOL_ARGUMENTS},
            }
        ]
        finish = "tool_calls"
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
    }
    if wants_logprobs(payload):
        choice["logprobs"] = logprobs_for(content if tool is None else "", payload)
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [choice],
        "usage": usage(
            estimate_prompt_tokens(payload),
            completion_tokens(payload, default_completion_tokens),
        ),
        "x_fake_extra": {"kept": True},
    }


def chat_chunks(
    *,
    payload: dict[str, Any],
    model: str,
    content: str,
    created: int,
    fingerprint: str | None,
    default_completion_tokens: int,
    n_chunks: int,
) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` objects of a streamed answer.

    `n_chunks` (>= 3 enforced) events: role delta, n-2 content (or tool-call
    argument) deltas, finish_reason; plus a usage-only chunk (empty choices)
    when stream_options.include_usage is set.
    """
    n_chunks = max(3, n_chunks)
    cid = new_completion_id()
    opts = payload.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    tool = first_tool_name(payload)
    logprobs = wants_logprobs(payload)

    def chunk(
        delta: dict[str, Any], finish: str | None = None, lp: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    pieces_count = n_chunks - 2
    chunks: list[dict[str, Any]] = []
    if tool is not None:
        chunks.append(
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": tool, "arguments": ""},
                        }
                    ],
                }
            )
        )
        for piece in split_text(TOOL_ARGUMENTS, pieces_count):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        chunks.append(
            chunk(
                {"role": "assistant", "content": "", "refusal": None},
                lp={"content": [], "refusal": None} if logprobs else None,
            )
        )
        for i, piece in enumerate(split_text(content, pieces_count)):
            lp = logprobs_for(piece, payload, offset=i) if logprobs else None
            chunks.append(chunk({"content": piece}, lp=lp))
        chunks.append(chunk({}, "stop"))
    if include_usage:
        final = chunk({})
        final["choices"] = []
        final["usage"] = usage(
            estimate_prompt_tokens(payload),
            completion_tokens(payload, default_completion_tokens),
        )
        chunks.append(final)
    return chunks


def embedding_vector(text: str) -> list[float]:
    """8 floats in [-1, 1], deterministic from the text."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest[:8]]


def normalize_embedding_input(raw: Any) -> list[tuple[str, int]] | None:
    """Inputs as (text-for-hashing, token count); None when malformed."""
    if isinstance(raw, str):
        return [(raw, max(1, len(raw.split())))]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return [(",".join(map(str, raw)), len(raw))]
    out: list[tuple[str, int]] = []
    for item in raw:
        if isinstance(item, str):
            out.append((item, max(1, len(item.split()))))
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            out.append((",".join(map(str, item)), len(item)))
        else:
            return None
    return out


def embeddings_response(
    inputs: list[tuple[str, int]], model: str, *, encoding_format: str = "float"
) -> dict[str, Any]:
    data = []
    for i, (text, _) in enumerate(inputs):
        vec = embedding_vector(text)
        emb: Any = vec
        if encoding_format == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(n for _, n in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
