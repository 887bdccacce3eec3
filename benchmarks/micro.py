"""In-process micro-benchmarks of Nexus' per-request work, imported from ``nexus``.

* routing: ``Router.plan`` + ``Router.select`` with 5 and 50 healthy backends that all
  serve the same 200 models (worst case: every backend is a candidate), smart strategy,
  with a quality tracker as production wires it;
* metrics: ``Metrics(registry).record(record)`` per finished request;
* SSE relay: ``SSEParser.feed`` of one upstream read holding one chunk event, plus
  ``event_data`` on the event (what the relay does per event);
* translation to the cloud APIs, with the pipeline's own classes
  (``nexus.pipeline.outbound``): per request, ``AnthropicOutbound`` / ``GeminiOutbound``
  ``.request`` (OpenAI chat request -> the provider's request body, serialised) plus
  ``.answer`` and the ``orjson.dumps`` of the OpenAI answer that ``Forwarder._complete``
  does (the provider's answer parsed once already, as the identity path parses it too);
  per stream event, ``ForeignStream.convert`` of one SSE block (``event_data``, JSON
  parse, the dialect's translator, the OpenAI chunk framed), and as the baseline
  ``OpenAIStream.convert`` of an OpenAI backend's event (parsed, relayed as it came).
  Payloads: a four-message chat with a system prompt, one function tool, ``temperature``,
  ``max_tokens`` and ``stop``; a ~60-word answer with usage; one text delta per stream
  event.

Each is timed in batches (``perf_counter_ns``); the median batch is reported, in µs per
operation, with the best batch alongside.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

CHAT_BODY = {
    "model": "model-000",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 64,
}


def timed(fn: Callable[[int], None], ops: int, batches: int) -> dict[str, float]:
    """Run ``fn(i)`` ``ops`` times per batch; µs per op (median and best batch)."""
    per_op: list[float] = []
    for _ in range(batches):
        started = time.perf_counter_ns()
        for i in range(ops):
            fn(i)
        per_op.append((time.perf_counter_ns() - started) / ops / 1000)
    return {"median_us": statistics.median(per_op), "best_us": min(per_op), "ops": ops * batches}


def build_registry(backends: int, models: int) -> Any:
    from nexus.registry import Backend, BackendStatus, Model, Registry

    registry = Registry()
    for b in range(backends):
        backend = Backend(name=f"backend-{b:02d}", url=f"http://10.0.0.{b}:8000", type="vllm")
        backend.priority = 10 + b % 5 * 10
        backend.avg_latency_ms = 20.0 + b
        registry.add_backend(backend)
        registry.update_models(
            backend.id, [Model(id=f"model-{m:03d}", context_length=8192) for m in range(models)]
        )
        registry.update_status(backend.id, BackendStatus.HEALTHY)
    return registry


def routing(backends: int, models: int = 200, ops: int = 2000, batches: int = 7) -> dict[str, Any]:
    from nexus.config import RoutingConfig
    from nexus.quality import QualityTracker
    from nexus.routing.requirements import inspect_chat
    from nexus.routing.router import Router

    registry = build_registry(backends, models)
    router = Router(registry, RoutingConfig(), QualityTracker())
    reqs = []
    for m in range(models):
        reqs.append(inspect_chat({**CHAT_BODY, "model": f"model-{m:03d}"}))

    def one(i: int) -> None:
        req = reqs[i % models]
        plan = router.plan(req.model, req)
        router.select(plan, req, attempts_per_model=3)

    return {"backends": backends, "models": models, **timed(one, ops, batches)}


def metrics(ops: int = 5000, batches: int = 7) -> dict[str, Any]:
    from nexus.metrics import Metrics
    from nexus.records import RequestRecord

    sink = Metrics(build_registry(5, 20))
    record = RequestRecord(
        request_id="0123456789abcdef01234567",
        endpoint="chat",
        model="model-001",
        routed_model="model-001",
        backend="backend-01",
        backend_type="vllm",
        status=200,
        route_reason="best-score",
        tokens_prompt=21,
        tokens_completion=9,
        upstream_seconds=0.012,
        ttft_seconds=0.004,
        duration_seconds=0.013,
    )
    return timed(lambda _: sink.record(record), ops, batches)


def sse_events(count: int = 100) -> list[bytes]:
    base = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench-model",
    }
    out = []
    for i in range(count):
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}
        out.append(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
    return out


def sse(ops: int = 20000, batches: int = 7) -> dict[str, Any]:
    from nexus.transport.sse import SSEParser, event_data

    events = sse_events()
    parser = SSEParser()

    def one(i: int) -> None:
        for block in parser.feed(events[i % 100]):
            event_data(block)

    return {"events_per_read": 1, **timed(one, ops, batches)}


# -- translation (cloud backends) ---------------------------------------------------------

TRANSLATE_BODY = {
    "model": "bench-cloud",
    "messages": [
        {"role": "system", "content": "You are a concise assistant for a home lab."},
        {"role": "user", "content": "What is the weather like in Paris today?"},
        {"role": "assistant", "content": "I can look that up. Which units do you prefer?"},
        {"role": "user", "content": "Celsius, please. And keep it short."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city"],
                },
            },
        }
    ],
    "temperature": 0.7,
    "max_tokens": 256,
    "stop": ["\n\nUser:"],
}
ANSWER_TEXT = (
    "It is 18 degrees Celsius in Paris with light clouds and a gentle westerly breeze. "
    "Rain is unlikely before the evening, when showers may move in from the Atlantic. "
    "A light jacket should be enough if you are heading out this afternoon."
)
ANTHROPIC_ANSWER = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "bench-cloud",
    "content": [{"type": "text", "text": ANSWER_TEXT}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 412,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 128,
        "output_tokens": 58,
        "service_tier": "standard",
    },
}
GEMINI_ANSWER = {
    "candidates": [
        {
            "content": {"parts": [{"text": ANSWER_TEXT}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 402,
        "candidatesTokenCount": 57,
        "totalTokenCount": 459,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 402}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "p0cLaM3hBqWqz7IPm9CtwQ4",
}


def _exchange(stream: bool) -> tuple[Any, Any]:
    """A real Exchange and Route as the forward stage holds them (no connection behind)."""
    from nexus.api.proxied import ENDPOINTS
    from nexus.pipeline.exchange import Exchange
    from nexus.records import RequestRecord
    from nexus.registry import Backend
    from nexus.routing.requirements import inspect_chat
    from nexus.routing.router import Route

    body = {**TRANSLATE_BODY, "stream": True} if stream else dict(TRANSLATE_BODY)
    record = RequestRecord(request_id="0123456789abcdef01234567", endpoint="chat")
    ex = Exchange(scope={}, receive=None, send=None, endpoint=ENDPOINTS[0], record=record)  # type: ignore[arg-type]
    ex.body = body
    ex.req = inspect_chat(body)
    backend = Backend(name="cloud", url="https://cloud.invalid", type="anthropic")
    return ex, Route(backend, "bench-cloud", "only-candidate")


def translate_request(kind: str, ops: int = 5000, batches: int = 7) -> dict[str, Any]:
    """Per request: the provider's request body from the OpenAI one, and the OpenAI answer
    from the provider's (serialised, as ``Forwarder._complete`` sends it)."""
    from nexus.pipeline.outbound import OUTBOUND

    outbound = OUTBOUND[kind]
    ex, route = _exchange(stream=False)
    parsed = ANTHROPIC_ANSWER if kind == "anthropic" else GEMINI_ANSWER
    dumps = orjson.dumps

    def request(_: int) -> None:
        outbound.request(ex, route)

    def answer(_: int) -> None:
        dumps(outbound.answer(ex, route, parsed))

    def both(_: int) -> None:
        outbound.request(ex, route)
        dumps(outbound.answer(ex, route, parsed))

    return {
        **timed(both, ops, batches),
        "request_us": timed(request, ops, batches)["median_us"],
        "answer_us": timed(answer, ops, batches)["median_us"],
    }


def anthropic_events(count: int = 100) -> list[bytes]:
    out = []
    for i in range(count):
        event = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": f" tok{i}"},
        }
        out.append(b"event: content_block_delta\ndata: " + orjson.dumps(event))
    return out


def gemini_events(count: int = 100) -> list[bytes]:
    out = []
    for i in range(count):
        event = {
            "candidates": [{"content": {"parts": [{"text": f" tok{i}"}], "role": "model"}}],
            "usageMetadata": {
                "promptTokenCount": 402,
                "candidatesTokenCount": i + 1,
                "totalTokenCount": 403 + i,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "p0cLaM3hBqWqz7IPm9CtwQ4",
        }
        out.append(b"data: " + orjson.dumps(event))
    return out


def translate_stream(kind: str, ops: int = 20000, batches: int = 7) -> dict[str, Any]:
    """Per stream event: one SSE block (as the parser hands it over) to an OpenAI chunk.
    ``kind`` "openai" is the baseline: an OpenAI backend's event relayed (``OpenAIStream``:
    parsed for its usage, relayed as it came)."""
    from nexus.pipeline.outbound import OPENAI, OUTBOUND

    ex, route = _exchange(stream=True)
    translation = OUTBOUND.get(kind, OPENAI).stream(ex, route)
    if kind == "openai":
        events = [block.removesuffix(b"\n\n") for block in sse_events()]
    elif kind == "anthropic":
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": "bench-cloud",
                "content": [],
                "usage": {"input_tokens": 412, "output_tokens": 1},
            },
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        translation.convert([b"data: " + orjson.dumps(start), b"data: " + orjson.dumps(block)])
        events = anthropic_events()
    else:
        events = gemini_events()
    convert = translation.convert

    def one(i: int) -> None:
        convert([events[i % 100]])

    return {"events_per_read": 1, **timed(one, ops, batches)}


def run_all(quick: bool) -> dict[str, Any]:
    scale = 5 if quick else 1
    return {
        "routing_5": routing(5, ops=2000 // scale),
        "routing_50": routing(50, ops=2000 // scale),
        "metrics": metrics(ops=5000 // scale),
        "sse": sse(ops=20000 // scale),
        "translate_anthropic": translate_request("anthropic", ops=5000 // scale),
        "translate_gemini": translate_request("google", ops=5000 // scale),
        "stream_anthropic": translate_stream("anthropic", ops=20000 // scale),
        "stream_gemini": translate_stream("google", ops=20000 // scale),
        "stream_openai": translate_stream("openai", ops=20000 // scale),
    }


if __name__ == "__main__":
    print(orjson.dumps(run_all(quick=False), option=orjson.OPT_INDENT_2).decode())
