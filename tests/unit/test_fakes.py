"""Direct tests of the fake inference servers in tests/fakes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes import (
    Behavior,
    FakeBackend,
    FakeLlamaCpp,
    FakeLMStudio,
    FakeModel,
    FakeOllama,
    FakeOpenAI,
    FakeVLLM,
)
from tests.helpers import wait_until

ALL_KINDS: list[type[FakeBackend]] = [FakeOllama, FakeVLLM, FakeLlamaCpp, FakeLMStudio, FakeOpenAI]
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def models() -> list[FakeModel]:
    return [
        FakeModel("m1", context_length=4096, vision=True),
        FakeModel("emb", embedding=True, tools=False),
    ]


def parse_sse(raw: bytes, sep: bytes = b"\n\n") -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing on the way."""
    assert raw.endswith(sep)
    out = []
    for event in raw[: -len(sep)].split(sep):
        assert event.startswith(b"data: "), event
        out.append(event[len(b"data: ") :].decode())
    return out


def stream_text(datas: list[str]) -> str:
    text = ""
    for d in datas:
        if d == "[DONE]":
            continue
        for choice in json.loads(d)["choices"]:
            text += choice["delta"].get("content") or ""
    return text


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


# ---------------------------------------------------------------- probes
async def test_ollama_probes(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(models()) as fake:
        async with session.get(fake.url + "/") as resp:
            assert resp.status == 200 and await resp.text() == "Ollama is running"
        _, tags = await get_json(session, fake.url + "/api/tags")
        entry = tags["models"][0]
        assert entry["name"] == entry["model"] == "m1"
        assert len(entry["digest"]) == 64 and entry["details"]["format"] == "gguf"
        assert (await get_json(session, fake.url + "/api/version"))[1] == {"version": "0.12.3"}
        async with session.post(fake.url + "/api/show", json={"model": "m1"}) as resp:
            show = await resp.json()
        assert show["model_info"]["llama.context_length"] == 4096
        assert show["capabilities"] == ["completion", "vision", "tools"]
        async with session.post(fake.url + "/api/show", json={"name": "emb"}) as resp:
            assert (await resp.json())["capabilities"] == ["embedding"]
        async with session.post(fake.url + "/api/show", json={"model": "nope"}) as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": "model 'nope' not found"}
        assert fake.show_calls == {"m1": 1, "emb": 1, "nope": 1}
        assert (await get_json(session, fake.url + "/api/ps"))[1] == {"models": []}
        _, v1 = await get_json(session, fake.url + "/v1/models")
        assert [m["id"] for m in v1["data"]] == ["m1", "emb"]


async def test_vllm_probes(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(models()) as fake:
        async with session.get(fake.url + "/health") as resp:
            assert resp.status == 200 and await resp.read() == b""
        _, data = await get_json(session, fake.url + "/v1/models")
        assert data["object"] == "list"
        entry = data["data"][0]
        assert entry["max_model_len"] == 4096 and entry["owned_by"] == "vllm"
        assert entry["parent"] is None and entry["permission"]
        assert (await get_json(session, fake.url + "/version"))[0] == 200
        assert await get_json(session, fake.url + "/nope") == (404, {"detail": "Not Found"})


async def test_llamacpp_probes(session: aiohttp.ClientSession) -> None:
    async with FakeLlamaCpp(models()) as fake:
        assert await get_json(session, fake.url + "/health") == (200, {"status": "ok"})
        status, props = await get_json(session, fake.url + "/props")
        assert props["default_generation_settings"]["n_ctx"] == 4096
        assert props["modalities"]["vision"] is True and props["total_slots"] == 1
        status, data = await get_json(session, fake.url + "/v1/models")
        assert [m["id"] for m in data["data"]] == ["m1"]
        assert data["data"][0]["meta"]["n_ctx_train"] == 4096
        fake.loading = True
        status, body = await get_json(session, fake.url + "/health")
        assert status == 503 and body["error"]["message"] == "Loading model"
    async with FakeLlamaCpp(models(), has_health=False, has_props=False) as fake:
        assert await get_json(session, fake.url + "/health") == (404, {"detail": "Not Found"})
        assert (await get_json(session, fake.url + "/props"))[0] == 404


async def test_lmstudio_and_openai_probes(session: aiohttp.ClientSession) -> None:
    async with FakeLMStudio(models()) as fake:
        status, data = await get_json(session, fake.url + "/api/v0/models")
        assert [(m["id"], m["type"], m["max_context_length"]) for m in data["data"]] == [
            ("m1", "vlm", 4096),
            ("emb", "embeddings", 8192),
        ]
        assert data["data"][0]["state"] == "loaded"
    async with FakeOpenAI(models()) as fake:
        status, data = await get_json(session, fake.url + "/v1/models")
        assert status == 200 and data["data"][0]["object"] == "model"


@pytest.mark.parametrize("behavior", [Behavior.ERROR_500, Behavior.INVALID_JSON])
async def test_health_behavior(session: aiohttp.ClientSession, behavior: Behavior) -> None:
    async with FakeVLLM(models()) as fake:
        fake.health_behavior = behavior
        async with session.get(fake.url + "/v1/models") as resp:
            body = await resp.read()
        if behavior is Behavior.ERROR_500:
            assert resp.status == 500 and "error" in json.loads(body)
        else:
            assert resp.status == 200 and body == b"{not json"
        fake.health_behavior = Behavior.HANG
        with pytest.raises(TimeoutError):
            await session.get(fake.url + "/health", timeout=aiohttp.ClientTimeout(total=0.2))


# ------------------------------------------------------------------ chat
@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_chat_non_stream(session: aiohttp.ClientSession, kind: type[FakeBackend]) -> None:
    async with kind(models()) as fake:
        req = {**CHAT, "max_tokens": 3, "logprobs": True}
        async with session.post(
            fake.url + "/v1/chat/completions", json=req, headers={"Authorization": "Bearer k"}
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["object"] == "chat.completion" and body["model"] == "m1"
        msg = body["choices"][0]["message"]
        assert msg == {
            **msg,
            "role": "assistant",
            "content": f"Hello from {fake.kind}:{fake.port} (m1)",
        }
        assert body["choices"][0]["logprobs"]["content"]
        assert body["usage"]["completion_tokens"] == 3
        assert body["x_fake_extra"] == {"kept": True}
        [rec] = fake.chat_requests
        assert rec.json == req and rec.headers["authorization"] == "Bearer k"
        assert rec.headers["Authorization"] == "Bearer k"

        async with session.post(
            fake.url + "/v1/chat/completions", json={**CHAT, "tools": TOOLS}
        ) as resp:
            choice = (await resp.json())["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        assert choice["message"]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"x": 1}',
        }

        # llama.cpp serves models[0] only, so "emb" is unknown there
        emb_status = 404 if kind is FakeLlamaCpp else 400
        for model, status in (("nope", 404), ("emb", emb_status)):
            async with session.post(
                fake.url + "/v1/chat/completions", json={**CHAT, "model": model}
            ) as resp:
                assert resp.status == status
                assert "message" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("framing", "split", "coalesce"),
    [("lf", False, False), ("crlf", True, False), ("lf", False, True)],
)
async def test_chat_stream(
    session: aiohttp.ClientSession, framing: str, split: bool, coalesce: bool
) -> None:
    sep = b"\r\n\r\n" if framing == "crlf" else b"\n\n"
    async with FakeOllama(
        models(), framing=framing, split_writes=split, coalesce=coalesce, stream_chunks=6
    ) as fake:
        req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with session.post(fake.url + "/v1/chat/completions", json=req) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            raw = await resp.read()
        datas = parse_sse(raw, sep)
        assert datas.count("[DONE]") == 1 and datas[-1] == "[DONE]"
        assert len(datas) == 6 + 2
        assert stream_text(datas) == f"Hello from ollama:{fake.port} (m1)"
        chunks = [json.loads(d) for d in datas[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert fake.active_streams == 0


async def test_stream_tools_and_no_done(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(models(), send_done=False) as fake:
        req = {**CHAT, "stream": True, "tools": TOOLS}
        async with session.post(fake.url + "/v1/chat/completions", json=req) as resp:
            datas = parse_sse(await resp.read())
        assert "[DONE]" not in datas
        calls = [c["choices"][0]["delta"].get("tool_calls") for c in map(json.loads, datas)]
        args = "".join(tc[0]["function"].get("arguments", "") for tc in calls if tc)
        assert args == '{"x": 1}' and calls[0][0]["function"]["name"] == "get_weather"
        assert json.loads(datas[-1])["choices"][0]["finish_reason"] == "tool_calls"


async def test_cut_stream(session: aiohttp.ClientSession) -> None:
    async with FakeLlamaCpp(models()) as fake:
        fake.chat_behavior = Behavior.CUT_STREAM
        fake.cut_after = 2
        got = b""
        async with session.post(
            fake.url + "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for data in resp.content.iter_any():
                    got += data
        assert len(parse_sse(got)) == 2 and b"[DONE]" not in got
        await wait_until(lambda: fake.active_streams == 0, what="fake.active_streams == 0")
        assert fake.cancelled_streams == 0


async def test_stall_stream_client_goes_away(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(models()) as fake:
        fake.chat_behavior = Behavior.STALL_STREAM
        resp = await session.post(fake.url + "/v1/chat/completions", json={**CHAT, "stream": True})
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        assert fake.active_streams == 1
        resp.close()  # drop the connection
        await wait_until(lambda: fake.active_streams == 0, what="fake.active_streams == 0")
        assert fake.cancelled_streams == 1


async def test_hang_and_stop_closes_connections(session: aiohttp.ClientSession) -> None:
    fake = FakeLMStudio(models())
    await fake.start()
    fake.chat_behavior = Behavior.HANG
    with pytest.raises(TimeoutError):
        await session.post(
            fake.url + "/v1/chat/completions", json=CHAT, timeout=aiohttp.ClientTimeout(total=0.3)
        )
    await wait_until(lambda: fake.active_requests == 0, what="fake.active_requests == 0")
    pending = asyncio.create_task(session.post(fake.url + "/v1/chat/completions", json=CHAT))
    await wait_until(lambda: fake.active_requests == 1, what="fake.active_requests == 1")
    await asyncio.wait_for(fake.stop(), 2)
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert fake.active_requests == 0


@pytest.mark.parametrize(
    ("behavior", "check"),
    [
        (
            Behavior.ERROR_429,
            lambda r, b: (
                r.status == 429
                and r.headers["Retry-After"] == "7"
                and "message" in json.loads(b)["error"]
            ),
        ),
        (Behavior.ERROR_503, lambda r, b: r.status == 503 and "error" in json.loads(b)),
        (Behavior.INVALID_JSON, lambda r, b: r.status == 200 and b == b"{not json"),
    ],
)
async def test_error_behaviors(
    session: aiohttp.ClientSession,
    behavior: Behavior,
    check: Callable[[aiohttp.ClientResponse, bytes], bool],
) -> None:
    async with FakeVLLM(models()) as fake:
        fake.chat_behavior = behavior
        async with session.post(fake.url + "/v1/chat/completions", json=CHAT) as resp:
            assert check(resp, await resp.read())


async def test_truncated_and_headers_then_stall(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(models()) as fake:
        fake.chat_behavior = Behavior.TRUNCATED
        async with session.post(fake.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        fake.chat_behavior = Behavior.HEADERS_THEN_STALL
        async with session.post(
            fake.url + "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resp.content.read(1), 0.3)
        await wait_until(lambda: fake.active_streams == 0, what="fake.active_streams == 0")


async def test_slow(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(models(), stream_chunks=3) as fake:
        fake.chat_behavior = Behavior.SLOW
        fake.delay = 0.1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with session.post(
            fake.url + "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as resp:
            datas = parse_sse(await resp.read())
        assert datas[-1] == "[DONE]" and loop.time() - t0 >= 0.3


# ------------------------------------------------------------ embeddings
async def test_embeddings(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(models()) as fake:

        async def embed(inp: Any, model: str = "emb") -> tuple[int, Any]:
            async with session.post(
                fake.url + "/v1/embeddings", json={"model": model, "input": inp}
            ) as resp:
                return resp.status, await resp.json()

        status, one = await embed("hello")
        assert status == 200 and len(one["data"][0]["embedding"]) == 8
        status, many = await embed(["hello", "world"])
        assert [d["index"] for d in many["data"]] == [0, 1]
        assert many["data"][0]["embedding"] == one["data"][0]["embedding"]
        assert many["data"][1]["embedding"] != one["data"][0]["embedding"]
        assert (await embed([1, 2, 3]))[1]["usage"]["prompt_tokens"] == 3
        assert (await embed("x", model="nope"))[0] == 404


# ------------------------------------------------------- stop / restart
async def test_stop_refuses_then_restart_same_port(session: aiohttp.ClientSession) -> None:
    fake = FakeOllama(models())
    url = await fake.start()
    assert url == fake.url == f"http://127.0.0.1:{fake.port}"
    async with session.get(url + "/api/version") as resp:  # leaves a keep-alive connection
        assert resp.status == 200
    port = fake.port
    await fake.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(url + "/api/version")
    assert await fake.start(port=port) == url
    try:
        async with session.get(url + "/api/version") as resp:
            assert resp.status == 200
    finally:
        await fake.stop()


# ------------------------------------------------- real OpenAI SDK client
async def test_openai_sdk_compatibility() -> None:
    openai = pytest.importorskip("openai")
    async with FakeVLLM(models()) as fake:
        client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0)
        try:
            done = await client.chat.completions.create(model="m1", messages=CHAT["messages"])
            assert done.choices[0].message.content.startswith("Hello from vllm")
            assert done.model_extra["x_fake_extra"] == {"kept": True}
            stream = await client.chat.completions.create(
                model="m1",
                messages=CHAT["messages"],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = [c async for c in stream]
            assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == (
                done.choices[0].message.content
            )
            assert parts[-1].usage is not None
            emb = await client.embeddings.create(model="emb", input=["a", "b"])  # base64
            assert len(emb.data[1].embedding) == 8
        finally:
            await client.close()
