"""The gateway end to end: official openai SDK -> Nexus -> fake Ollama / vLLM / llama.cpp."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.fakes import FakeLlamaCpp, FakeModel, FakeOllama, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Nexus, FakeOllama, FakeVLLM, FakeLlamaCpp]]:
    async with (
        FakeOllama(
            [
                FakeModel("llama3:8b"),
                FakeModel("llava:7b", vision=True),
                FakeModel("nomic-embed-text", embedding=True),
            ]
        ) as ollama,
        FakeVLLM([FakeModel("meta-llama/Llama-3.1-8B-Instruct", context_length=32768)]) as vllm,
        FakeLlamaCpp([FakeModel("smollm2", context_length=4096)]) as llamacpp,
    ):
        backends = [
            backend_entry(ollama, "ollama", "ollama"),
            backend_entry(vllm, "vllm", "vllm"),
            backend_entry(llamacpp, "llamacpp", "llamacpp"),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            yield nexus, ollama, vllm, llamacpp


async def test_chat_non_streaming_each_backend(
    fleet: tuple[Nexus, FakeOllama, FakeVLLM, FakeLlamaCpp],
) -> None:
    nexus, ollama, vllm, llamacpp = fleet
    for model, fake, name in (
        ("llama3:8b", ollama, "ollama"),
        ("meta-llama/Llama-3.1-8B-Instruct", vllm, "vllm"),
        ("smollm2", llamacpp, "llamacpp"),
    ):
        resp = await nexus.client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        completion = resp.parse()
        assert completion.model == model
        assert f":{fake.port}" in (completion.choices[0].message.content or "")
        assert completion.usage is not None and completion.usage.total_tokens > 0
        assert resp.headers["X-Nexus-Backend"] == name  # the one backend serving the model
        assert resp.headers["X-Request-Id"]
    assert nexus.pending() == {"ollama": 0, "vllm": 0, "llamacpp": 0}


async def test_chat_streaming(fleet: tuple[Nexus, FakeOllama, FakeVLLM, FakeLlamaCpp]) -> None:
    nexus, *_ = fleet
    stream = await nexus.client.chat.completions.create(
        model="llama3:8b", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Hello from" in text
    assert all(c.usage is None for c in chunks)  # usage was not asked for: not shown
    assert nexus.pending()["ollama"] == 0


async def test_models_and_health(fleet: tuple[Nexus, FakeOllama, FakeVLLM, FakeLlamaCpp]) -> None:
    nexus, *_ = fleet
    models = await nexus.client.models.list()
    ids = [m.id for m in models.data]
    assert sorted(ids) == sorted(
        ["llama3:8b", "llava:7b", "nomic-embed-text", "meta-llama/Llama-3.1-8B-Instruct", "smollm2"]
    )
    status, health, _ = await nexus.get("/health")
    assert status == 200
    assert health["status"] == "healthy"
    assert health["backends"] == {"total": 3, "healthy": 3, "unhealthy": 0}
    assert health["models"] == 5


async def test_unknown_model_404(fleet: tuple[Nexus, FakeOllama, FakeVLLM, FakeLlamaCpp]) -> None:
    nexus, *_ = fleet
    with pytest.raises(openai.NotFoundError) as info:
        await nexus.client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert "llama3:8b" in str(info.value)
