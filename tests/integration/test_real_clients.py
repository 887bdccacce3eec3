"""What real clients found (the requests below mirror theirs), against fakes: a request two
backends refuse is the request's fault, aliases are models clients can see, panic routing,
every failure named. tests/interop/test_llamacpp.py repeats the first three against real
llama.cpp servers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import openai
import pytest

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus

MSG = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


async def test_a_request_two_backends_refuse_is_refused_and_blamed_on_neither(
    tmp_path: Path,
) -> None:
    fakes = [FakeVLLM([FakeModel("m")]) for _ in range(3)]
    for fake in fakes:
        await fake.start()
        fake.chat_behavior = Behavior.ERROR_500  # as llama-cpp-python answers a json_schema
    try:
        backends = [backend_entry(f, f"b{i}", "vllm") for i, f in enumerate(fakes)]
        async with running_nexus(tmp_path, backends) as nexus:
            # The SDK's own retries (2 by default) do not retry a 400: two backend calls in all.
            client = nexus.client.with_options(max_retries=2)
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model="m", messages=MSG, response_format=SCHEMA
                )  # type: ignore[arg-type]
            error = caught.value.body
            assert isinstance(error, dict) and error["code"] == "invalid_request"
            assert "fake vllm error 500" in error["message"]
            assert error["context"] == {"upstream_status": 500}
            assert sum(len(f.chat_requests) for f in fakes) == 2
            registry = nexus.state.registry
            assert [b.failed_requests for b in registry] == [0, 0, 0]
            assert all(b.penalized_until == 0 for b in registry)
            assert nexus.state.quality.error_rates("m", 0) is None
            for fake in fakes:
                fake.chat_behavior = Behavior.OK
            reply = await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
    finally:
        for fake in fakes:
            await fake.stop()


async def test_a_500_that_another_backend_does_not_repeat_is_the_backends(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as broken, FakeVLLM([FakeModel("m")]) as good:
        backends = [
            backend_entry(broken, "broken", "vllm", priority=1),
            backend_entry(good, "good", "vllm", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            broken.chat_behavior = Behavior.ERROR_500
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="m", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "good"
            registry = nexus.state.registry
            assert registry.find("broken").failed_requests == 1  # type: ignore[union-attr]
            assert registry.find("good").failed_requests == 0  # type: ignore[union-attr]


async def test_aliases_are_listed_and_retrievable(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen2.5:7b", context_length=32768)]) as fake:
        routing = {
            "aliases": {"gpt-4o-mini": "qwen2.5:7b", "gpt-4": "gpt-4o-mini", "ghost": "nowhere"}
        }
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], routing=routing
        ) as nexus:
            listing = await nexus.client.models.list()
            by_id = {m.id: m.model_dump() for m in listing.data}
            assert by_id["gpt-4o-mini"]["alias_of"] == "qwen2.5:7b"
            assert by_id["gpt-4"]["alias_of"] == "qwen2.5:7b"  # chains resolve to what serves
            assert by_id["gpt-4o-mini"]["context_length"] == 32768
            assert "ghost" not in by_id  # an alias of nothing served is not offered
            assert "alias_of" not in by_id["qwen2.5:7b"]
            model = await nexus.client.models.retrieve("qwen2.5:7b")
            assert model.id == "qwen2.5:7b"
            alias = await nexus.client.models.retrieve("gpt-4o-mini")
            assert alias.model_dump()["alias_of"] == "qwen2.5:7b"
            with pytest.raises(openai.NotFoundError):
                await nexus.client.models.retrieve("gpt-5")
            with pytest.raises(openai.NotFoundError) as caught:
                await nexus.client.chat.completions.create(model="gpt-5", messages=MSG)  # type: ignore[arg-type]
            assert "gpt-4o-mini" in str(caught.value)


async def test_panic_routing_serves_from_a_backend_whose_probes_fail(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as fake:
        hc = {"interval_seconds": 60, "failure_threshold": 1, "recovery_threshold": 2}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], health_check=hc
        ) as nexus:
            backend = nexus.state.registry.find("v")
            assert backend is not None
            fake.health_behavior = Behavior.ERROR_500
            await nexus.state.health.check(backend)
            assert backend.status.value == "unhealthy"
            # Back for chat before the health checker knows: served, not a 503.
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="m", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Route-Reason"] == "panic"
            assert backend.status.value == "unhealthy"  # one success of the two needed
            await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            assert backend.status.value == "healthy"


async def test_every_backend_tried_is_named_when_all_fail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    async with FakeVLLM([FakeModel("m")]) as one, FakeVLLM([FakeModel("m")]) as two:
        backends = [
            backend_entry(one, "one", "vllm", priority=1),
            backend_entry(two, "two", "vllm", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            one.chat_behavior = Behavior.ERROR_503
            await two.stop()
            status, body, headers = await nexus.post(
                "/v1/chat/completions", {"model": "m", "messages": MSG}
            )
            assert status == 502
            message = body["error"]["message"]
            assert "one: backend 'one' answered HTTP 503" in message
            assert "two: backend 'two' unreachable: connection refused" in message
            assert headers["X-Nexus-Backend"] == "two"
            nexus.state.recorder.flush()
            line = next(r for r in caplog.records if r.name == "nexus.request")
            assert line.request.attempts == ["one", "two"]  # type: ignore[attr-defined]


async def test_unknown_endpoints_are_named_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    async with running_nexus(tmp_path, []) as nexus:
        status, body, _ = await nexus.get("/v1/files")
        assert status == 404 and "GET /v1/files" in body["error"]["message"]
        status, body, _ = await nexus.post("/v1/completionz", {"prompt": "secret"})
        assert status == 404 and "POST /v1/completionz" in body["error"]["message"]
        lines = [r.getMessage() for r in caplog.records if "unknown endpoint" in r.getMessage()]
        assert lines == [
            "unknown endpoint: GET /v1/files",
            "unknown endpoint: POST /v1/completionz",
        ]
        text = nexus.state.metrics.exposition().decode()
        assert 'nexus_unknown_endpoint_total{method="GET"} 1.0' in text
        assert 'nexus_unknown_endpoint_total{method="POST"} 1.0' in text
        assert "secret" not in text and not any("secret" in r.getMessage() for r in caplog.records)


async def test_single_slot_backends_share_a_burst_whatever_their_priorities(tmp_path: Path) -> None:
    # Two llama.cpp servers with one slot each (/props total_slots = 1): four concurrent
    # chats used to all go to the preferred one and wait in its single slot.
    from tests.fakes import FakeLlamaCpp

    async with FakeLlamaCpp([FakeModel("m")]) as first, FakeLlamaCpp([FakeModel("m")]) as second:
        for fake in (first, second):
            fake.chat_behavior, fake.delay = Behavior.SLOW, 0.5
        backends = [
            backend_entry(first, "first", "llamacpp", priority=10),
            backend_entry(second, "second", "llamacpp", priority=20),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            assert nexus.state.registry.find("first").capacity == 1  # type: ignore[union-attr]
            replies = await asyncio.gather(
                *(
                    nexus.client.chat.completions.with_raw_response.create(model="m", messages=MSG)  # type: ignore[arg-type]
                    for _ in range(4)
                )
            )
            served = sorted(r.headers["X-Nexus-Backend"] for r in replies)
            assert served == ["first", "first", "second", "second"]


async def test_configured_max_concurrent_wins_over_what_is_reported(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as small, FakeVLLM([FakeModel("m")]) as big:
        for fake in (small, big):
            fake.chat_behavior, fake.delay = Behavior.SLOW, 0.5
        backends = [
            backend_entry(small, "small", "vllm", priority=1, max_concurrent=1),
            backend_entry(big, "big", "vllm", priority=90),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            replies = await asyncio.gather(
                *(
                    nexus.client.chat.completions.with_raw_response.create(model="m", messages=MSG)  # type: ignore[arg-type]
                    for _ in range(3)
                )
            )
            served = sorted(r.headers["X-Nexus-Backend"] for r in replies)
            assert served == ["big", "big", "small"]


async def test_a_backend_error_that_echoes_the_prompt_reaches_the_client_but_not_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # llama-cpp-python's validation errors quote the input they refused.
    caplog.set_level(logging.INFO, logger="nexus")
    async with FakeVLLM([FakeModel("m")]) as one, FakeVLLM([FakeModel("m")]) as two:
        for fake in (one, two):
            fake.chat_behavior = Behavior.ERROR_500
            fake.error_message = "invalid input: SECRET-PROMPT-TEXT"
        backends = [backend_entry(one, "one", "vllm"), backend_entry(two, "two", "vllm")]
        async with running_nexus(tmp_path, backends) as nexus:
            status, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "m", "messages": MSG}
            )
            assert status == 400 and "SECRET-PROMPT-TEXT" in body["error"]["message"]
            nexus.state.recorder.flush()
            snapshot = nexus.server.app.dashboard.hub.snapshot()
    logged = [r.getMessage() + str(getattr(r, "request", "")) for r in caplog.records]
    assert any(r.name == "nexus.request" for r in caplog.records)
    assert not any("SECRET-PROMPT-TEXT" in line for line in logged)
    assert "SECRET-PROMPT-TEXT" not in str(snapshot)
