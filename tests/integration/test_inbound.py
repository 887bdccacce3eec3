"""Every client as it is: the anthropic SDK and the ollama client pointed at Nexus, served
by OpenAI-speaking backends (translated) and by backends speaking their own API (native);
the openai SDK's legacy completions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import pytest

from nexus import __version__ as nexus_version
from nexus import tokens
from tests.fakes import Behavior, FakeModel, FakeOllama, FakeOpenAI, FakeVLLM
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.ollama import embedding_for
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

ANTHROPIC_KEY = "sk-ant-secret-0123456789"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def claude_client(nexus: Nexus, **extra: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=nexus.url, api_key="sk-ant-client", max_retries=0, timeout=15, **extra
    )


def ollama_client(nexus: Nexus) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=nexus.url, timeout=15)


# -- the anthropic SDK ------------------------------------------------------------------


async def test_anthropic_sdk_on_an_openai_backend(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            client = claude_client(nexus)
            message = await client.messages.create(
                model="qwen",
                max_tokens=64,
                system="Be brief.",
                messages=[{"role": "user", "content": "Hello there"}],
            )
            assert message.type == "message" and message.role == "assistant"
            assert message.content[0].type == "text" and message.content[0].text  # type: ignore[union-attr]
            assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
            sent = fake.chat_requests[-1].json
            assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
            async with client.messages.stream(
                model="qwen", max_tokens=64, messages=[{"role": "user", "content": "Count"}]
            ) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                final = await stream.get_final_message()
            assert text and final.content[0].text == text  # type: ignore[union-attr]
            assert final.usage.output_tokens > 0


async def test_anthropic_sdk_tool_round_trip_on_an_openai_backend(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen", tools=True)]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            client = claude_client(nexus)
            messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
            first = await client.messages.create(
                model="qwen", max_tokens=64, tools=[WEATHER], messages=messages
            )  # type: ignore[list-item]
            assert first.stop_reason == "tool_use"
            use = next(b for b in first.content if b.type == "tool_use")
            messages += [
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}],
                },
            ]
            second = await client.messages.create(
                model="qwen", max_tokens=64, tools=[WEATHER], messages=messages
            )  # type: ignore[list-item]
            assert second.content
            sent = fake.chat_requests[-1].json["messages"]
            assert any(m.get("role") == "tool" and m.get("content") == "Sunny" for m in sent)


async def test_anthropic_sdk_native_to_an_anthropic_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        entry = {
            "name": "claude",
            "url": fake.url,
            "type": "anthropic",
            "api_key_env": "TEST_ANTHROPIC_KEY",
        }
        async with running_nexus(tmp_path, [entry]) as nexus:
            client = claude_client(nexus, default_headers={"anthropic-beta": "test-beta-1"})
            message = await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "Hello native"}],
            )
            assert "Hello native" in message.content[0].text  # type: ignore[union-attr]
            request = fake.message_requests[-1]
            assert request.json["messages"] == [
                {"role": "user", "content": "Hello native"}
            ]  # as sent
            assert request.headers["x-api-key"] == ANTHROPIC_KEY  # ours, never the client's
            assert request.headers["anthropic-beta"] == "test-beta-1"
            # The answer's usage is counted as it would be for a translated one.
            logged: list[Any] = []
            nexus.state.recorder.sinks.append(logged.append)
            await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "x"}],
            )
            nexus.state.recorder.flush()
            usage = (logged[-1].tokens_prompt, logged[-1].tokens_completion)
            reply = await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "x"}],
            )
            assert usage == (reply.usage.input_tokens, reply.usage.output_tokens) != (None, None)
            async with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=64,
                tools=[WEATHER],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "Weather in Rome?"}],
            ) as stream:
                final = await stream.get_final_message()
            assert any(b.type == "tool_use" and b.input.get("city") for b in final.content)  # type: ignore[union-attr]


async def test_anthropic_sdk_count_tokens_and_errors(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        checks = {"interval_seconds": 0.1, "failure_threshold": 1}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], health_check=checks
        ) as nexus:
            client = claude_client(nexus)
            count = await client.messages.count_tokens(
                model="qwen", messages=[{"role": "user", "content": "hello world " * 10}]
            )
            assert count.input_tokens > 10
            with pytest.raises(anthropic.NotFoundError) as missing:
                await client.messages.create(
                    model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
            assert missing.value.body["type"] == "error"  # type: ignore[index]
            assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
            with pytest.raises(anthropic.BadRequestError) as bad:
                await client.messages.create(model="qwen", max_tokens=8, messages=[])
            assert "messages" in str(bad.value)
            # Anthropic's statuses, never a 502/503/504 it does not send: a backend failure is
            # its 500 api_error, no backend able to serve its 529 overloaded_error.
            fake.chat_behavior = Behavior.ERROR_503
            with pytest.raises(anthropic.InternalServerError) as down:
                await client.messages.create(
                    model="qwen", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
            assert down.value.status_code == 500 and down.value.body["type"] == "error"  # type: ignore[index]
            assert down.value.body["error"]["type"] == "api_error"  # type: ignore[index]
            fake.chat_behavior = Behavior.OK
            await fake.stop()
            await wait_until(
                lambda: not nexus.state.registry.find("v").routable,  # type: ignore[union-attr]
                what="the backend down",
                timeout=10,
            )
            with pytest.raises(anthropic.APIStatusError) as gone:
                await client.messages.create(
                    model="qwen", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
            assert gone.value.status_code == 529, gone.value.body
            assert gone.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
            assert gone.value.response.headers["retry-after"]


async def test_count_tokens_uses_the_serving_providers_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-0123456789")
    async with FakeOpenAI([FakeModel("gpt-4o")]) as fake:
        entry = {"name": "oa", "url": fake.url, "type": "openai", "api_key_env": "TEST_OPENAI_KEY"}
        async with running_nexus(tmp_path, [entry]) as nexus:
            reply = await claude_client(nexus).messages.with_raw_response.count_tokens(
                model="gpt-4o", messages=[{"role": "user", "content": "hello world"}]
            )
            method = "exact" if tokens.available() else "estimated"
            assert reply.headers["x-nexus-token-count"] == method
            assert (await reply.parse()).input_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_sdk_fails_over_and_gets_the_nexus_headers(
    tmp_path: Path, stream: bool
) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as first, FakeVLLM([FakeModel("qwen")]) as second:
        backends = [
            backend_entry(first, "first", "vllm", priority=1),
            backend_entry(second, "second", "vllm", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            client = claude_client(nexus)
            hello: Any = [{"role": "user", "content": "Hello there"}]
            resp = await client.messages.with_raw_response.create(
                model="qwen", max_tokens=64, messages=hello
            )
            assert resp.headers["X-Nexus-Backend"] == "first"
            assert resp.headers["X-Nexus-Backend-Type"] == "local"
            assert resp.headers["X-Nexus-Route-Reason"] == "best-score"
            assert resp.headers["X-Nexus-Privacy-Zone"] == "restricted"
            first.chat_behavior = Behavior.ERROR_503
            if stream:
                async with client.messages.stream(
                    model="qwen", max_tokens=64, messages=hello
                ) as events:
                    text = "".join([piece async for piece in events.text_stream])
                    message = await events.get_final_message()
                    headers = events.response.headers
                assert text and message.content[0].text == text  # type: ignore[union-attr]
            else:
                resp = await client.messages.with_raw_response.create(
                    model="qwen", max_tokens=64, messages=hello
                )
                message, headers = await resp.parse(), resp.headers
                assert message.content[0].text  # type: ignore[union-attr]
            assert message.stop_reason == "end_turn"
            assert headers["X-Nexus-Backend"] == "second"
            assert headers["X-Nexus-Route-Reason"] == "failover"
            assert len(first.chat_requests) == 2 and len(second.chat_requests) == 1


# -- the ollama client --------------------------------------------------------------------


async def test_ollama_client_on_an_openai_backend(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen"), FakeModel("embedder", embedding=True)]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            client = ollama_client(nexus)
            reply = await client.chat(model="qwen", messages=[{"role": "user", "content": "Hi"}])
            assert reply.message.content and reply.done and reply.done_reason == "stop"
            assert reply.prompt_eval_count and reply.eval_count
            parts = [
                part
                async for part in await client.chat(
                    model="qwen", messages=[{"role": "user", "content": "Hi"}], stream=True
                )
            ]
            assert (
                parts[-1].done
                and "".join(p.message.content or "" for p in parts) == reply.message.content
            )
            generated = await client.generate(model="qwen", prompt="Once upon a time")
            assert generated.response and generated.done
            listed = await client.list()
            assert {m.model for m in listed.models} >= {"qwen", "embedder"}
            shown = await client.show("qwen")
            assert "completion" in (shown.capabilities or []) or shown.modelinfo is not None
            embedded = await client.embed(model="embedder", input=["one", "two"])
            assert len(embedded.embeddings) == 2
            running = await client.ps()
            assert running.models == []  # no Ollama backend to ask
            with pytest.raises(ollama.ResponseError) as missing:
                await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
            assert missing.value.status_code == 404 and "nope" in missing.value.error
            with pytest.raises(ollama.ResponseError) as missing:
                await client.generate(model="nope")  # loading a model nobody serves
            assert missing.value.status_code == 404


async def test_ollama_client_native_to_an_ollama_backend(tmp_path: Path) -> None:
    async with FakeOllama([FakeModel("llama3:8b")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "box", "ollama")]) as nexus:
            client = ollama_client(nexus)
            reply = await client.chat(
                model="llama3:8b",
                messages=[{"role": "user", "content": "Hi"}],
                options={"num_ctx": 4096},
            )
            assert reply.message.content
            native = [r for r in fake.requests if r.path == "/api/chat"]
            assert native and native[-1].json["options"] == {"num_ctx": 4096}  # untouched
            parts = [
                p async for p in await client.generate(model="llama3:8b", prompt="x", stream=True)
            ]
            assert parts[-1].done
            loaded = await client.generate(model="llama3:8b")  # a load request goes to the box
            assert loaded.done


async def test_ollama_only_features_need_an_ollama_backend(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            client = ollama_client(nexus)
            with pytest.raises(ollama.ResponseError) as refused:
                await client.generate(model="qwen", prompt="def f(", suffix="return x")
            assert refused.value.status_code == 400 and "suffix" in refused.value.error
            loaded = await client.generate(model="qwen")  # nothing to load: answered by Nexus
            assert loaded.done and loaded.done_reason == "load"
            assert fake.chat_requests == []


async def test_ollama_legacy_embeddings_version_and_ps(tmp_path: Path) -> None:
    async with (
        FakeOllama([FakeModel("llama3:8b"), FakeModel("nomic", embedding=True)]) as box,
        FakeVLLM([FakeModel("embedder", embedding=True)]) as vllm,
    ):
        backends = [backend_entry(box, "box", "ollama"), backend_entry(vllm, "v", "vllm")]
        async with running_nexus(tmp_path, backends) as nexus:
            client = ollama_client(nexus)
            assert (await client.ps()).models == []  # nothing loaded yet
            # The older /api/embeddings: natively to an Ollama backend, translated otherwise.
            native = await client.embeddings(model="nomic", prompt="one")
            assert list(native.embedding) == pytest.approx(embedding_for("one"))
            assert [r.json["prompt"] for r in box.requests if r.path == "/api/embeddings"] == [
                "one"
            ]
            translated = await client.embeddings(model="embedder", prompt="two")
            sent = [r.json for r in vllm.requests if r.path == "/v1/embeddings"]
            assert [s["input"] for s in sent] == ["two"] and len(translated.embedding) > 1
            code, body, headers = await nexus.post(
                "/api/embeddings", {"model": "embedder", "prompt": "two"}
            )
            assert code == 200 and list(body) == ["embedding"]
            assert body["embedding"] == pytest.approx(list(translated.embedding))
            assert headers["X-Nexus-Backend"] == "v"
            code, body, _ = await nexus.get("/api/version")
            assert code == 200 and body == {"version": nexus_version}
            await client.chat(model="llama3:8b", messages=[{"role": "user", "content": "Hi"}])
            running = await client.ps()  # asked of the Ollama backend, now
            assert sorted(m.model for m in running.models) == box.loaded()
            assert box.loaded() == ["llama3:8b", "nomic"]
            assert all(m.size_vram for m in running.models)


async def test_every_dialect_answers_with_the_nexus_headers(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake, FakeOllama([FakeModel("llama3:8b")]) as box:
        backends = [backend_entry(fake, "v", "vllm"), backend_entry(box, "box", "ollama")]
        async with running_nexus(tmp_path, backends) as nexus:
            hi = [{"role": "user", "content": "Hi"}]
            calls = [
                ("/api/chat", {"model": "qwen", "messages": hi, "stream": False}, "v"),
                ("/api/chat", {"model": "llama3:8b", "messages": hi}, "box"),  # NDJSON
                ("/api/generate", {"model": "qwen", "prompt": "x", "stream": False}, "v"),
                ("/v1/messages", {"model": "llama3:8b", "max_tokens": 8, "messages": hi}, "box"),
                ("/v1/completions", {"model": "qwen", "prompt": "x", "max_tokens": 4}, "v"),
                ("/v1/completions", {"model": "qwen", "prompt": "x", "stream": True}, "v"),
            ]
            for path, body, served in calls:
                code, answer, headers = await nexus.post(path, body)
                assert code == 200, (path, answer)
                assert headers["X-Nexus-Backend"] == served, path
                assert headers["X-Nexus-Backend-Type"] == "local", path
                assert headers["X-Nexus-Route-Reason"] == "only-candidate", path
                assert headers["X-Nexus-Privacy-Zone"] == "restricted", path
                assert headers["X-Request-Id"], path
            completion = await nexus.client.completions.with_raw_response.create(
                model="qwen", prompt="Once", max_tokens=8
            )
            assert completion.headers["X-Nexus-Backend"] == "v"


# -- legacy completions -----------------------------------------------------------------------


async def test_openai_sdk_legacy_completions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            completion = await nexus.client.completions.create(
                model="qwen", prompt="Once", max_tokens=8
            )
            assert completion.choices[0].text is not None
            stream = await nexus.client.completions.create(
                model="qwen", prompt="Once", max_tokens=8, stream=True
            )
            assert [c async for c in stream]
            nexus.state.recorder.flush()
    records = [r.request for r in caplog.records if r.name == "nexus.request"]  # type: ignore[attr-defined]
    assert [r.endpoint for r in records] == ["completions", "completions"]
    assert all(r.status == 200 for r in records)


async def test_a_backend_without_legacy_completions_is_remembered(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as without, FakeVLLM([FakeModel("qwen")]) as with_them:
        without.completions_status = 404
        backends = [
            backend_entry(without, "without", "vllm", priority=1),
            backend_entry(with_them, "with", "vllm", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            for _ in range(3):
                resp = await nexus.client.completions.with_raw_response.create(
                    model="qwen", prompt="x", max_tokens=4
                )
                assert resp.headers["X-Nexus-Backend"] == "with"
            assert sum(r.path == "/v1/completions" for r in without.requests) == 1
            with_them.completions_status = 404
            with pytest.raises(openai.InternalServerError):  # found out on this request
                await nexus.client.completions.create(model="qwen", prompt="x", max_tokens=4)
            with pytest.raises(openai.BadRequestError) as none_left:  # known from now on
                await nexus.client.completions.create(model="qwen", prompt="x", max_tokens=4)
            assert "no legacy completions" in str(none_left.value)


@pytest.mark.parametrize("kind", ["llamacpp", "vllm"])
async def test_count_tokens_asks_a_llamacpp_or_vllm_backend_to_tokenize(
    tmp_path: Path, kind: str
) -> None:
    from nexus.dialects import anthropic as dialect
    from tests.fakes import FakeLlamaCpp

    fake_class = FakeLlamaCpp if kind == "llamacpp" else FakeVLLM
    async with fake_class([FakeModel("local-model")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "box", kind)]) as nexus:
            body = {"model": "local-model", "messages": [{"role": "user", "content": "a b c d e"}]}
            reply = await claude_client(nexus).messages.with_raw_response.count_tokens(**body)  # type: ignore[arg-type]
            assert reply.headers["x-nexus-token-count"] == "exact"
            expected = len(dialect.prompt_text(body).split())  # the fakes count words
            assert (await reply.parse()).input_tokens == expected
            assert [r.path for r in fake.requests if r.method == "POST"] == ["/tokenize"]
            async with aiohttp.ClientSession() as session:
                async with session.get(nexus.url + "/metrics") as resp:
                    assert 'nexus_token_counts_total{method="exact"}' in await resp.text()
