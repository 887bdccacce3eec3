"""Faithful relay: fields survive both ways; SSE framing is handled event by event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeModel, FakeOllama, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


@pytest.fixture
async def vllm_nexus(tmp_path: Path) -> AsyncIterator[tuple[Nexus, FakeVLLM]]:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "vllm", "vllm")]) as nexus:
            yield nexus, fake


async def sse_events(nexus: Nexus, body: dict[str, Any]) -> list[bytes]:
    """Raw SSE data payloads as the client receives them (no SDK smoothing)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(nexus.url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        raw = await resp.read()
    assert b"data: data:" not in raw
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert all(b.startswith(b"data: ") for b in blocks), raw[:200]
    assert raw.endswith(b"\n\n")
    return [b[6:] for b in blocks]


async def test_unknown_fields_and_tool_turns_reach_the_backend_untouched(
    vllm_nexus: tuple[Nexus, FakeVLLM],
) -> None:
    nexus, fake = vllm_nexus
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]
    body = {
        "model": "qwen",
        "messages": messages,
        "tools": TOOLS,
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_object"},
        "x_vendor_knob": {"nested": [1, 2.5, None]},
        "seed": 7,
    }
    status, reply, headers = await nexus.post("/v1/chat/completions", body)
    assert status == 200, reply
    sent = fake.chat_requests[-1]
    assert sent.json == body  # every field, byte-faithful
    assert reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert reply["choices"][0]["message"]["content"] is None
    assert reply["choices"][0]["logprobs"] is not None
    assert reply["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert reply["x_fake_extra"] == {"kept": True}
    assert headers["X-Nexus-Backend"] == "vllm"


async def test_sdk_tool_call_round_trip(vllm_nexus: tuple[Nexus, FakeVLLM]) -> None:
    nexus, _ = vllm_nexus
    completion = await nexus.client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,  # type: ignore[arg-type]
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "framing",
    [
        {"framing": "lf"},
        {"framing": "crlf"},
        {"framing": "crlf", "split_writes": True},
        {"framing": "lf", "split_writes": True},
        {"framing": "crlf", "coalesce": True},
    ],
    ids=["lf", "crlf", "crlf-split", "lf-split", "crlf-coalesced"],
)
async def test_stream_framing_is_normalised(tmp_path: Path, framing: dict[str, Any]) -> None:
    async with FakeOllama([FakeModel("llama3:8b")], stream_chunks=8, **framing) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "ollama", "ollama")]) as nexus:
            body = {
                "model": "llama3:8b",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            events = await sse_events(nexus, body)
            assert events.count(b"[DONE]") == 1 and events[-1] == b"[DONE]"
            assert len(events) == 8 + 1  # every chunk, no usage chunk (not asked for)
            # The SDK sees the same stream as one coherent message.
            stream = await nexus.client.chat.completions.create(
                model="llama3:8b", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text.startswith("Hello from")
            assert nexus.pending() == {"ollama": 0}


async def test_stream_usage_when_asked(vllm_nexus: tuple[Nexus, FakeVLLM]) -> None:
    nexus, fake = vllm_nexus
    stream = await nexus.client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert fake.chat_requests[-1].json["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_asks_upstream_but_hides_it(
    vllm_nexus: tuple[Nexus, FakeVLLM],
) -> None:
    nexus, fake = vllm_nexus
    events = await sse_events(
        nexus, {"model": "qwen", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert not any(b'"usage":{' in e for e in events)
    assert fake.chat_requests[-1].json["stream_options"] == {"include_usage": True}


async def test_stream_without_done_upstream_is_relayed_then_called_an_error(
    tmp_path: Path,
) -> None:
    async with FakeVLLM([FakeModel("qwen")], send_done=False) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            events = await sse_events(
                nexus,
                {"model": "qwen", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            )
            assert len(events) >= 4 and events.count(b"[DONE]") == 1
            assert b"without [DONE]" in events[-2] and events[-1] == b"[DONE]"


async def test_authorization_is_passed_through(vllm_nexus: tuple[Nexus, FakeVLLM]) -> None:
    nexus, fake = vllm_nexus
    await nexus.client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}]
    )
    assert fake.chat_requests[-1].headers["Authorization"] == "Bearer sk-test"


async def test_backend_api_key_from_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BACKEND_KEY", "sk-from-env")
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        entry = backend_entry(fake, "cloudish", "openai", api_key_env="FAKE_BACKEND_KEY")
        async with running_nexus(tmp_path, [entry]) as nexus:
            await nexus.client.chat.completions.create(
                model="qwen", messages=[{"role": "user", "content": "hi"}]
            )
            assert fake.chat_requests[-1].headers["Authorization"] == "Bearer sk-from-env"


async def test_embeddings_single_and_batch(tmp_path: Path) -> None:
    models = [FakeModel("llama3:8b"), FakeModel("nomic-embed-text", embedding=True)]
    async with FakeOllama(models) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "ollama", "ollama")]) as nexus:
            one = await nexus.client.embeddings.create(model="nomic-embed-text", input="hello")
            assert len(one.data) == 1 and len(one.data[0].embedding) == 8
            many = await nexus.client.embeddings.create(
                model="nomic-embed-text", input=["a", "b", "c"]
            )
            assert [d.index for d in many.data] == [0, 1, 2]
            assert fake.embedding_requests[-1].json["input"] == ["a", "b", "c"]
            status, body, _ = await nexus.post(
                "/v1/embeddings", {"model": "llama3:8b", "input": "x"}
            )
            assert status == 400 and "embedding" in body["error"]["message"]


async def test_embeddings_answer_of_several_megabytes(tmp_path: Path) -> None:
    # A RAG indexing batch: the answer is far larger than any read buffer on the way.
    async with FakeVLLM([FakeModel("embed", embedding=True)]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            texts = [f"passage {i}" for i in range(20_000)]
            reply = await nexus.client.embeddings.create(model="embed", input=texts)
            assert [d.index for d in reply.data] == list(range(20_000))
            assert all(len(d.embedding) == 8 for d in reply.data)
            # One input longer than the model's context is refused before it is sent.
            status, body, _ = await nexus.post(
                "/v1/embeddings", {"model": "embed", "input": ["ok", "word " * 40_000]}
            )
            assert status == 400 and "context" in body["error"]["message"]


async def test_hundred_concurrent_requests(vllm_nexus: tuple[Nexus, FakeVLLM]) -> None:
    import asyncio

    nexus, fake = vllm_nexus

    async def one(i: int) -> str:
        reply = await nexus.client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": f"n{i}"}],
            stream=i % 2 == 0,
        )
        if i % 2 == 0:
            return "".join([c.choices[0].delta.content or "" async for c in reply if c.choices])  # type: ignore[union-attr]
        return reply.choices[0].message.content or ""  # type: ignore[union-attr]

    texts = await asyncio.gather(*(one(i) for i in range(100)))
    assert all(t.startswith("Hello from") for t in texts)
    assert len(fake.chat_requests) == 100
    assert nexus.pending() == {"vllm": 0}


async def test_gzip_encoded_answers_are_decoded(tmp_path: Path) -> None:
    """A backend behind a compressing proxy: Nexus parses and relays the decoded answer."""
    import gzip
    import json

    from aiohttp import web

    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "z",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "zipped"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "z", "object": "model"}]})

    async def chat(_: web.Request) -> web.Response:
        body = gzip.compress(json.dumps(answer).encode())
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with running_nexus(
            tmp_path, [{"name": "gz", "url": url, "type": "generic"}]
        ) as nexus:
            reply = await nexus.client.chat.completions.create(
                model="z", messages=[{"role": "user", "content": "x"}]
            )
            assert reply.choices[0].message.content == "zipped"
    finally:
        await runner.cleanup()
