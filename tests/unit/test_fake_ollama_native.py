"""FakeOllama's native API, driven by the official `ollama` Python client.

Every answer is parsed by the client's pydantic types, so a shape the real client would reject
fails here. Load/unload/VRAM behaviour is checked through /api/ps as a client sees it; time is
the fake's injected clock, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import pytest
from ollama import AsyncClient, ChatResponse, GenerateResponse, ResponseError

from tests.fakes import Behavior, FakeModel, FakeOllama
from tests.fakes.ollama import GiB, ManualClock, embedding_for, rfc3339
from tests.helpers import wait_until

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days"],
        },
    },
}


def models() -> list[FakeModel]:
    return [
        FakeModel("llama3:latest", context_length=8192, vision=True),
        FakeModel("qwen:7b"),
        FakeModel("nomic-embed-text:latest", embedding=True, tools=False),
    ]


@asynccontextmanager
async def sdk(fake: FakeOllama) -> AsyncIterator[AsyncClient]:
    """The official client on the fake (it has no ``__aenter__`` of its own)."""
    client = AsyncClient(host=fake.url, timeout=10, trust_env=False)
    try:
        yield client
    finally:
        await client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
async def ollama_pair() -> AsyncIterator[tuple[FakeOllama, AsyncClient]]:
    async with FakeOllama(models(), stream_chunks=4) as fake, sdk(fake) as client:
        yield fake, client


def native(fake: FakeOllama, path: str) -> list[dict[str, Any]]:
    return [r.json for r in fake.requests if r.path == path]


def ps_names(listing: Any) -> list[str]:
    return [m.model for m in listing.models]


# ---------------------------------------------------------------- chat / generate
async def test_chat_not_streamed_and_streamed(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    options = {"temperature": 0.2, "seed": 7, "num_ctx": 2048, "stop": ["\n\n"]}
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "why is the sky blue?"},
    ]
    whole = await client.chat("llama3", messages=messages, options=options, stream=False)
    assert isinstance(whole, ChatResponse) and whole.done and whole.done_reason == "stop"
    assert whole.model == "llama3" and whole.message.role == "assistant"
    assert "why is the sky blue?" in (whole.message.content or "")
    assert whole.eval_count and whole.prompt_eval_count and whole.total_duration
    assert whole.load_duration and whole.prompt_eval_duration and whole.eval_duration
    assert datetime.fromisoformat(str(whole.created_at).replace("Z", "+00:00")).tzinfo
    sent = native(fake, "/api/chat")[-1]
    assert sent["options"] == options and sent["messages"] == messages and sent["stream"] is False

    parts = [p async for p in await client.chat("llama3", messages=messages, stream=True)]
    assert len(parts) == 4 + 1
    assert [p.done for p in parts] == [False] * 4 + [True]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    last = parts[-1]
    assert last.done_reason == "stop" and last.eval_count == whole.eval_count
    assert all(p.done_reason is None and p.eval_count is None for p in parts[:-1])
    assert fake.loaded() == ["llama3:latest"]


async def test_generate_streams_by_default_and_answers_json_when_told(
    ollama_pair: tuple[FakeOllama, AsyncClient],
) -> None:
    fake, _ = ollama_pair
    async with aiohttp.ClientSession() as session:
        body = {"model": "qwen:7b", "prompt": "tell me a story"}
        async with session.post(fake.url + "/api/generate", json=body) as resp:
            assert resp.status == 200 and resp.content_type == "application/x-ndjson"
            lines = [json.loads(x) for x in (await resp.read()).decode().splitlines()]
        assert [x["done"] for x in lines] == [False] * 4 + [True]
        assert "tell me a story" in "".join(x["response"] for x in lines)
        assert lines[-1]["context"] and lines[-1]["done_reason"] == "stop"
        async with session.post(fake.url + "/api/generate", json={**body, "stream": False}) as resp:
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            one = await resp.json()
        assert one["done"] is True and "tell me a story" in one["response"]
        GenerateResponse(**one)  # the client's own type accepts it


async def test_generate_options_suffix_raw_images(
    ollama_pair: tuple[FakeOllama, AsyncClient],
) -> None:
    fake, client = ollama_pair
    short = await client.generate("qwen:7b", "count to ten", options={"num_predict": 2})
    assert short.done_reason == "length" and short.eval_count == 2
    assert native(fake, "/api/generate")[-1]["options"] == {"num_predict": 2}
    assert len((short.response or "").split()) == 2

    fim = await client.generate("qwen:7b", "def gcd(a, b):", suffix="    return result")
    assert "    return result" in (fim.response or "") and "def gcd(a, b):" in (fim.response or "")
    assert native(fake, "/api/generate")[-1]["suffix"] == "    return result"

    raw = await client.generate("qwen:7b", "[INST] hi [/INST]", raw=True)
    assert raw.done and raw.context is None and "[INST] hi [/INST]" in (raw.response or "")
    with pytest.raises(ResponseError) as refused:
        await client.generate("qwen:7b", "hi", raw=True, system="sys")
    assert refused.value.status_code == 400
    assert refused.value.error == "raw mode does not support template, system, or context"

    pixel = b"\x89PNG\r\n\x1a\n-fake-image"
    seen = await client.generate("llama3", "what is in this picture?", images=[pixel])
    assert seen.done and fake.images == [base64.b64encode(pixel).decode()]
    await client.chat(
        "llama3", messages=[{"role": "user", "content": "and this?", "images": [b"\x00\x01"]}]
    )
    assert fake.images[-1] == base64.b64encode(b"\x00\x01").decode()


async def test_tool_call_round_trip(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    messages: list[Any] = [{"role": "user", "content": "weather in Tokyo?"}]
    first = await client.chat("llama3", messages=messages, tools=[WEATHER_TOOL])
    assert first.done_reason == "stop" and not first.message.content
    calls = first.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert dict(calls[0].function.arguments) == {"city": "weather in Tokyo?", "days": 1}

    streamed = [
        p
        async for p in await client.chat(
            "llama3", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
    ]
    with_calls = [p for p in streamed if p.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done and streamed[-1].done

    messages += [
        first.message,
        {"role": "tool", "content": "22 degrees and sunny", "tool_name": "get_weather"},
    ]
    final = await client.chat("llama3", messages=messages, tools=[WEATHER_TOOL])
    assert final.message.tool_calls is None
    assert "22 degrees and sunny" in (final.message.content or "")
    sent = native(fake, "/api/chat")[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {
        "city": "weather in Tokyo?",
        "days": 1,
    }
    assert sent[2] == {
        "role": "tool",
        "content": "22 degrees and sunny",
        "tool_name": "get_weather",
    }


async def test_tools_refused_by_a_model_without_them() -> None:
    async with FakeOllama([FakeModel("tiny", tools=False)]) as fake, sdk(fake) as client:
        with pytest.raises(ResponseError) as refused:
            await client.chat(
                "tiny", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL]
            )
        assert refused.value.status_code == 400
        assert (
            refused.value.error == "registry.ollama.ai/library/tiny:latest does not support tools"
        )


async def test_format_json_and_schema(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    ask = [{"role": "user", "content": "describe Canada"}]
    as_json = await client.chat("llama3", messages=ask, format="json")
    assert json.loads(as_json.message.content or "")["echo"] == "describe Canada"
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "capital": {"type": "string"},
            "population": {"type": "integer"},
            "languages": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "population", "languages"],
    }
    shaped = await client.generate("qwen:7b", "describe Canada", format=schema)
    assert json.loads(shaped.response or "") == {
        "name": "describe Canada",
        "population": 1,
        "languages": ["describe Canada"],
    }
    assert native(fake, "/api/generate")[-1]["format"] == schema
    async with aiohttp.ClientSession() as session:  # the client itself refuses to send it
        body = {"model": "qwen:7b", "prompt": "x", "format": "xml", "stream": False}
        async with session.post(fake.url + "/api/generate", json=body) as resp:
            assert resp.status == 500
            error = (await resp.json())["error"]
    assert error == 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'


# ---------------------------------------------------------------- embeddings
async def test_embed_and_embeddings(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    one = await client.embed("nomic-embed-text", "hello")
    assert one.model == "nomic-embed-text" and one.embeddings == [embedding_for("hello")]
    assert one.prompt_eval_count == 1 and one.total_duration and one.load_duration
    many = await client.embed("nomic-embed-text", ["hello", "the world"])
    assert many.embeddings[0] == one.embeddings[0] and many.embeddings[1] != one.embeddings[0]
    assert many.prompt_eval_count == 3
    assert math.isclose(sum(v * v for v in many.embeddings[1]), 1.0)
    short = await client.embed("nomic-embed-text", "hello", dimensions=4)
    assert len(short.embeddings[0]) == 4 and short.embeddings[0] == embedding_for("hello", 4)

    legacy = await client.embeddings("nomic-embed-text", "hello")
    assert list(legacy.embedding) == embedding_for("hello")
    assert native(fake, "/api/embeddings")[-1] == {"model": "nomic-embed-text", "prompt": "hello"}

    with pytest.raises(ResponseError) as missing:
        await client.embed("nope", "x")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ResponseError) as missing:
        await client.embeddings("nope", "x")
    assert missing.value.error == 'model "nope" not found, try pulling it first'
    assert fake.loaded() == ["nomic-embed-text:latest"]


# ---------------------------------------------------------------- list / show / ps
async def test_list_show_ps(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    listing = await client.list()
    assert [m.model for m in listing.models] == [m.id for m in models()]
    assert all(m.size and m.digest and m.modified_at for m in listing.models)
    shown = await client.show("llama3")
    assert shown.capabilities == ["completion", "vision", "tools"]
    assert (shown.modelinfo or {})["llama.context_length"] == 8192
    assert (await client.ps()).models == []

    fake.clock = clock = ManualClock()
    await client.chat(
        "llama3", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 4096}
    )
    running = (await client.ps()).models
    assert len(running) == 1
    entry = running[0]
    assert entry.model == entry.name == "llama3:latest" and entry.digest == models()[0].digest
    assert entry.size == entry.size_vram == fake.vram_size(models()[0])
    assert entry.context_length == 4096 and entry.details and entry.details.family == "llama"
    assert entry.expires_at == datetime.fromtimestamp(clock.now + 300, UTC)


# ---------------------------------------------------------------- pull / delete
async def test_pull_progress_then_load(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    fake.pullable = {"mistral:7b": 4 * GiB}
    statuses = [p async for p in await client.pull("mistral:7b", stream=True)]
    names = [p.status for p in statuses]
    assert names[0] == "pulling manifest" and names[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    blob = [p for p in statuses if p.total == 4 * GiB]
    assert len(blob) == fake.pull_steps and all(
        p.digest and p.status == f"pulling {p.digest[7:19]}" for p in blob
    )
    assert [p.completed for p in blob] == sorted(p.completed or 0 for p in blob)
    assert blob[-1].completed == 4 * GiB
    assert "mistral:7b" in [m.model for m in (await client.list()).models]
    loaded = await client.generate("mistral:7b")
    assert loaded.done_reason == "load"
    assert ps_names(await client.ps()) == ["mistral:7b"]
    assert (await client.ps()).models[0].size == 4 * GiB

    again = await client.pull("mistral:7b")  # stream=False: only the last status
    assert again.status == "success"

    deleted = await client.delete("mistral:7b")
    assert deleted.status == "success" and fake.find_model("mistral:7b") is None
    assert ps_names(await client.ps()) == []


async def test_pull_unknown_model_fails(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    _, client = ollama_pair
    seen: list[str | None] = []
    with pytest.raises(ResponseError) as streamed:
        async for part in await client.pull("no-such-model", stream=True):
            seen.append(part.status)
    assert seen == ["pulling manifest"]
    assert streamed.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ResponseError) as whole:
        await client.pull("no-such-model")
    assert whole.value.status_code == 500
    assert whole.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ResponseError) as gone:
        await client.delete("no-such-model")
    assert gone.value.status_code == 404


# ---------------------------------------------------------------- load / unload / VRAM
async def test_load_and_unload_visible_in_ps(ollama_pair: tuple[FakeOllama, AsyncClient]) -> None:
    fake, client = ollama_pair
    loaded = await client.generate("qwen:7b")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    chat_loaded = await client.chat("llama3", messages=[])
    assert chat_loaded.done_reason == "load" and chat_loaded.message.role == "assistant"
    assert sorted(ps_names(await client.ps())) == ["llama3:latest", "qwen:7b"]
    assert fake.loaded() == ["llama3:latest", "qwen:7b"]

    unloaded = await client.generate("qwen:7b", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert ps_names(await client.ps()) == ["llama3:latest"]
    chat_unloaded = await client.chat("llama3", messages=[], keep_alive=0)
    assert chat_unloaded.done_reason == "unload"
    assert (await client.ps()).models == [] and fake.vram_used() == 0

    served = await client.generate("qwen:7b", "once", keep_alive=0)  # serve, then unload
    assert served.done_reason == "stop" and (await client.ps()).models == []


async def test_model_too_big_for_vram_refused() -> None:
    sizes = {"llama3:latest": 16 * GiB, "qwen:7b": 10 * GiB, "big:70b": 40 * GiB}
    fleet = [*models(), FakeModel("big:70b")]
    async with (
        FakeOllama(fleet, vram_bytes=24 * GiB, model_sizes=sizes) as fake,
        sdk(fake) as client,
    ):
        with pytest.raises(ResponseError) as refused:
            await client.generate("big:70b", "hi")
        assert refused.value.status_code == 500
        assert refused.value.error == (
            "model requires more system memory (40.0 GiB) than is available (24.0 GiB)"
        )
        await client.generate("llama3")
        with pytest.raises(ResponseError) as full:
            await client.chat("qwen:7b", messages=[{"role": "user", "content": "hi"}])
        assert full.value.error == (
            "model requires more system memory (10.0 GiB) than is available (8.0 GiB)"
        )
        assert ps_names(await client.ps()) == ["llama3:latest"]
        await client.generate("llama3", keep_alive=0)
        assert (await client.chat("qwen:7b", messages=[{"role": "user", "content": "hi"}])).done
        assert fake.loaded() == ["qwen:7b"] and fake.vram_free() == 14 * GiB


async def test_keep_alive_expiry_on_the_injected_clock(
    ollama_pair: tuple[FakeOllama, AsyncClient],
) -> None:
    fake, client = ollama_pair
    fake.clock = clock = ManualClock()
    await client.generate("qwen:7b", "hi", keep_alive="30s")
    await client.generate("llama3", keep_alive=-1)  # forever
    await client.embed("nomic-embed-text", "x", keep_alive=90)  # seconds
    listing = await client.ps()  # longest time left first, as Ollama sorts it
    assert ps_names(listing) == ["llama3:latest", "nomic-embed-text:latest", "qwen:7b"]
    by_name = {m.model: m.expires_at for m in listing.models}
    assert by_name["qwen:7b"] == datetime.fromtimestamp(clock.now + 30, UTC)
    assert by_name["nomic-embed-text:latest"] == datetime.fromtimestamp(clock.now + 90, UTC)
    forever = by_name["llama3:latest"]
    assert forever is not None and forever.year > 2300

    clock.advance(29)
    assert "qwen:7b" in ps_names(await client.ps())
    clock.advance(2)
    assert ps_names(await client.ps()) == ["llama3:latest", "nomic-embed-text:latest"]
    clock.advance(10**6)
    assert ps_names(await client.ps()) == ["llama3:latest"]

    # a request without keep_alive keeps the model's previous one (as Ollama's scheduler)
    await client.generate("qwen:7b", "hi", keep_alive="1m30s")
    await client.generate("qwen:7b", "again")
    clock.advance(89)
    assert "qwen:7b" in fake.loaded()
    clock.advance(1)
    assert "qwen:7b" not in fake.loaded()

    await client.generate("qwen:7b", "hi")  # default: 5m
    assert fake.resident["qwen:7b"].expires_at == clock.now + 300
    fake.expire_all()
    assert (await client.ps()).models == []

    with pytest.raises(ResponseError) as bad:
        await client.generate("qwen:7b", "hi", keep_alive="300")
    assert bad.value.status_code == 400
    assert bad.value.error == 'time: missing unit in duration "300"'
    with pytest.raises(ResponseError) as bad:
        await client.chat("qwen:7b", messages=[], keep_alive="5 minutes")
    assert bad.value.error == 'time: unknown unit " minutes" in duration "5 minutes"'


async def test_requests_served_during_another_models_load() -> None:
    async with FakeOllama(models(), load_seconds=30) as fake, sdk(fake) as client:
        fake.preload("llama3")
        assert fake.loaded() == ["llama3:latest"]
        first = asyncio.create_task(client.generate("qwen:7b", "slow to load"))
        await wait_until(lambda: fake.loading() == ["qwen:7b"], what="qwen loading")
        second = asyncio.create_task(client.generate("qwen:7b", "waiting too"))
        await wait_until(lambda: fake.resident["qwen:7b"].refs == 2, what="second waits")

        answered = await client.chat("llama3", messages=[{"role": "user", "content": "meanwhile"}])
        assert "meanwhile" in (answered.message.content or "")
        assert fake.loading() == ["qwen:7b"] and not first.done() and not second.done()
        assert sorted(ps_names(await client.ps())) == ["llama3:latest", "qwen:7b"]

        fake.finish_loading()
        done = await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert all(r.done_reason == "stop" for r in done)
        assert done[0].load_duration and done[0].load_duration > (answered.load_duration or 0)
        assert fake.loaded() == ["llama3:latest", "qwen:7b"] and fake.loading() == []


async def test_openai_compatible_requests_load_models_too(
    ollama_pair: tuple[FakeOllama, AsyncClient],
) -> None:
    fake, client = ollama_pair
    async with aiohttp.ClientSession() as session:
        body = {"model": "qwen:7b", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(fake.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
    assert ps_names(await client.ps()) == ["qwen:7b"] and "qwen:7b" in fake.loaded
    fake.reset()
    assert (await client.ps()).models == [] and fake.loaded() == []


# ---------------------------------------------------------------- misbehaviour
async def test_misbehaviours_on_native_endpoints(
    ollama_pair: tuple[FakeOllama, AsyncClient],
) -> None:
    fake, client = ollama_pair
    ask = [{"role": "user", "content": "hi"}]
    fake.chat_behavior = Behavior.ERROR_503
    with pytest.raises(ResponseError) as failed:
        await client.chat("llama3", messages=ask)
    assert (failed.value.status_code, failed.value.error) == (503, "fake ollama error 503")
    with pytest.raises(ResponseError):
        await client.embed("nomic-embed-text", "x")

    fake.chat_behavior = Behavior.CUT_STREAM
    fake.cut_after = 2
    got: list[GenerateResponse] = []
    with pytest.raises(httpx.HTTPError):
        async for part in await client.generate("qwen:7b", "hello there", stream=True):
            got.append(part)
    assert len(got) == 2 and not any(p.done for p in got)
    await wait_until(lambda: fake.active_streams == 0, what="stream closed")

    fake.chat_behavior = Behavior.OK
    fake.stream_error_after = 2
    seen: list[ChatResponse] = []
    with pytest.raises(ResponseError) as mid:
        async for chunk in await client.chat("llama3", messages=ask, stream=True):
            seen.append(chunk)
    assert len(seen) == 2 and mid.value.error == fake.stream_error_message
    with pytest.raises(ResponseError) as whole:
        await client.chat("llama3", messages=ask)
    assert whole.value.status_code == 500 and whole.value.error == fake.stream_error_message

    fake.stream_error_after = None
    with pytest.raises(ResponseError) as missing:
        await client.chat("nope", messages=ask)
    assert (missing.value.status_code, missing.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ResponseError) as embed_only:
        await client.generate("nomic-embed-text", "x")
    assert embed_only.value.error == '"nomic-embed-text" does not support generate'


def test_rfc3339_matches_go() -> None:
    assert rfc3339(1_750_000_000.0) == "2025-06-15T15:06:40Z"
    assert rfc3339(1_750_000_000.25) == "2025-06-15T15:06:40.25Z"
