"""Per-type probes against the real API shapes, and what they put in the registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import pytest

from nexus.registry import BackendStatus
from nexus.transport.errors import connect_error
from tests.fakes import (
    Behavior,
    FakeLlamaCpp,
    FakeLMStudio,
    FakeModel,
    FakeOllama,
    FakeOpenAI,
    FakeVLLM,
)
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

FAST = {"interval_seconds": 0.1, "failure_threshold": 1, "recovery_threshold": 1}


def model(nexus: Nexus, backend: str, model_id: str):  # type: ignore[no-untyped-def]
    found = nexus.state.registry.find(backend)
    assert found is not None
    return found.models[model_id]


async def test_ollama_capabilities_and_context_from_api_show(tmp_path: Path) -> None:
    models = [
        FakeModel("llama3:8b", context_length=8192),
        FakeModel("llava:7b", vision=True, tools=False, context_length=4096),
        FakeModel("nomic-embed-text", embedding=True, context_length=2048),
    ]
    async with FakeOllama(models) as fake:
        async with running_nexus(
            tmp_path, [backend_entry(fake, "o", "ollama")], health_check=FAST
        ) as nexus:
            llama = model(nexus, "o", "llama3:8b")
            assert (llama.context_length, llama.supports_tools, llama.supports_vision) == (
                8192,
                True,
                False,
            )
            assert llama.supports_json_mode is True and llama.supports_chat is True
            llava = model(nexus, "o", "llava:7b")
            assert (llava.supports_vision, llava.supports_tools, llava.context_length) == (
                True,
                False,
                4096,
            )
            embed = model(nexus, "o", "nomic-embed-text")
            assert embed.supports_embeddings is True and embed.supports_chat is False
            # /api/show is asked once per model digest, not every cycle.
            await wait_until(
                lambda: sum(1 for r in fake.requests if r.path == "/api/tags") >= 3,
                what="three probe cycles",
            )
            assert fake.show_calls == {"llama3:8b": 1, "llava:7b": 1, "nomic-embed-text": 1}
            assert sum(1 for r in fake.requests if r.path == "/api/tags") >= 3


async def test_vllm_context_from_max_model_len(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("meta/llama", context_length=32768)]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            m = model(nexus, "v", "meta/llama")
            assert m.context_length == 32768 and m.supports_json_mode is True
            listing = (await nexus.client.models.list()).data[0]
            assert listing.context_length == 32768  # type: ignore[attr-defined]


@pytest.mark.parametrize(("has_health", "has_props"), [(True, True), (False, False), (False, True)])
async def test_llamacpp_with_and_without_health_and_props(
    tmp_path: Path, has_health: bool, has_props: bool
) -> None:
    async with FakeLlamaCpp(
        [FakeModel("smol", context_length=2048)], has_health=has_health, has_props=has_props
    ) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "l", "llamacpp")]) as nexus:
            backend = nexus.state.registry.find("l")
            assert backend is not None and backend.status is BackendStatus.HEALTHY
            # /props n_ctx when present, else /v1/models meta.n_ctx_train: both 2048 here.
            assert model(nexus, "l", "smol").context_length == 2048


async def test_llamacpp_loading_is_unhealthy_then_recovers(tmp_path: Path) -> None:
    async with FakeLlamaCpp([FakeModel("smol")]) as fake:
        fake.loading = True
        async with running_nexus(
            tmp_path, [backend_entry(fake, "l", "llamacpp")], health_check=FAST
        ) as nexus:
            backend = nexus.state.registry.find("l")
            assert backend is not None and backend.status is BackendStatus.UNHEALTHY
            assert "503" in (backend.last_error or "")
            fake.loading = False
            await wait_until(lambda: backend.status is BackendStatus.HEALTHY, what="healthy")


async def test_lmstudio_types_and_context(tmp_path: Path) -> None:
    models = [
        FakeModel("qwen-vl", vision=True, context_length=16384),
        FakeModel("text-embedding-nomic", embedding=True),
    ]
    async with FakeLMStudio(models) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "lm", "lmstudio")]) as nexus:
            vl = model(nexus, "lm", "qwen-vl")
            assert (vl.supports_vision, vl.context_length) == (True, 16384)
            assert model(nexus, "lm", "text-embedding-nomic").supports_embeddings is True


async def test_generic_backend(tmp_path: Path) -> None:
    async with FakeOpenAI([FakeModel("exo-model")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "exo", "exo")]) as nexus:
            reply = await nexus.client.chat.completions.create(
                model="exo-model", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content


async def test_invalid_json_probe_is_a_failure_and_transitions_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.health")
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], health_check=FAST
        ) as nexus:
            backend = nexus.state.registry.find("v")
            assert backend is not None
            fake.health_behavior = Behavior.INVALID_JSON
            await wait_until(lambda: backend.status is BackendStatus.UNHEALTHY, what="unhealthy")
            assert "invalid JSON" in (backend.last_error or "")
            assert backend.models  # last known models are kept (so the model is "known")
            fake.health_behavior = Behavior.OK
            await wait_until(lambda: backend.status is BackendStatus.HEALTHY, what="healthy")
    messages = [r.getMessage() for r in caplog.records if r.name == "nexus.health"]
    assert any("is unhealthy" in m and "invalid JSON" in m for m in messages)
    assert any("is healthy" in m for m in messages)


async def test_errors_are_named(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        backends = [
            {"name": "refused", "url": "http://127.0.0.1:1", "type": "vllm"},  # nothing listens
            {"name": "tls", "url": f"https://127.0.0.1:{fake.port}", "type": "vllm"},  # plain HTTP
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            refused = nexus.state.registry.find("refused")
            tls = nexus.state.registry.find("tls")
            assert refused and tls
            assert "connection refused" in (refused.last_error or "")
            assert "TLS" in (tls.last_error or ""), tls.last_error


def test_dns_failure_is_named() -> None:
    # Built directly: a real lookup would leave loopback, which tests never do.
    exc = socket.gaierror(-2, "Name or service not known")
    assert str(connect_error(exc, "llm.invalid", 80)) == "DNS resolution failed for llm.invalid"


async def test_probe_timeout_counts_unless_the_backend_is_busy(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        hc = {"interval_seconds": 0.1, "timeout_seconds": 0.2, "failure_threshold": 1}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], health_check=hc
        ) as nexus:
            backend = nexus.state.registry.find("v")
            assert backend is not None
            # Generating: a real request in flight, so a slow probe is expected, not a failure.
            fake.chat_behavior = Behavior.HANG
            busy = asyncio.create_task(
                nexus.post(
                    "/v1/chat/completions",
                    {"model": "qwen", "messages": [{"role": "user", "content": "hi"}]},
                )
            )
            await wait_until(lambda: backend.pending_requests == 1, what="one request in flight")
            fake.health_behavior = Behavior.HANG
            # Three probes time out (0.2 s each) while the request is in flight...
            probes = sum(1 for r in fake.requests if r.path == "/v1/models")
            await wait_until(
                lambda: sum(1 for r in fake.requests if r.path == "/v1/models") >= probes + 4,
                what="three probes timed out",
            )
            assert backend.status is BackendStatus.HEALTHY  # ...and none counted
            assert backend.pending_requests == 1  # (still generating all along)
            busy.cancel()  # the client leaves: Nexus is idle again
            with contextlib.suppress(asyncio.CancelledError):
                await busy
            await wait_until(lambda: backend.pending_requests == 0, what="no request in flight")
            await wait_until(lambda: backend.status is BackendStatus.UNHEALTHY, what="unhealthy")
            assert "timed out" in (backend.last_error or "")


async def test_health_status_and_concurrent_probes(tmp_path: Path) -> None:
    # One backend hangs on its probe: the other is still probed on time (probes run
    # concurrently, one loop per backend), and /health goes healthy -> degraded -> unhealthy.
    async with FakeVLLM([FakeModel("a")]) as slow, FakeVLLM([FakeModel("b")]) as quick:
        hc = {"interval_seconds": 0.1, "timeout_seconds": 1, "failure_threshold": 1}
        backends = [backend_entry(slow, "slow", "vllm"), backend_entry(quick, "quick", "vllm")]
        async with running_nexus(tmp_path, backends, health_check=hc) as nexus:
            assert (await nexus.get("/health"))[1]["status"] == "healthy"
            slow.health_behavior = Behavior.HANG
            before = sum(1 for r in quick.requests if r.path == "/v1/models")
            slow_before = sum(1 for r in slow.requests if r.path == "/v1/models")
            await wait_until(
                lambda: sum(1 for r in quick.requests if r.path == "/v1/models") >= before + 3,
                what="three probes of the quick backend",
            )
            # ...all within the hanging probe's 1 s timeout: no second probe of "slow" yet.
            assert sum(1 for r in slow.requests if r.path == "/v1/models") <= slow_before + 1
            await wait_until(
                lambda: status_is(nexus, "degraded"), interval=0.05, what="/health degraded"
            )
            health = (await nexus.get("/health"))[1]
            assert health["backends"] == {"total": 2, "healthy": 1, "unhealthy": 1}
            assert health["models"] == 1
            await quick.stop()
            await wait_until(
                lambda: status_is(nexus, "unhealthy"), interval=0.05, what="/health unhealthy"
            )


async def status_is(nexus: Nexus, status: str) -> bool:
    return bool((await nexus.get("/health"))[1]["status"] == status)
