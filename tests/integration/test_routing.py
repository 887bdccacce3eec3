"""Routing end to end: strategies, capabilities, aliases, fallbacks, failover."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes import Behavior, FakeLlamaCpp, FakeModel, FakeOllama, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

MSG = [{"role": "user", "content": "hi"}]


async def served_by(nexus: Nexus, n: int, model: str = "m", **extra: Any) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = await nexus.client.chat.completions.with_raw_response.create(
            model=model,
            messages=MSG,
            **extra,  # type: ignore[arg-type]
        )
        seen[resp.headers["X-Nexus-Backend"]] += 1
    return seen


@pytest.mark.parametrize(
    ("strategy", "check"),
    [
        ("round_robin", lambda c: sorted(c.values()) == [10, 10, 10]),
        ("priority_only", lambda c: c == {"b1": 30}),
        ("smart", lambda c: c == {"b1": 30}),  # b1 has the best priority, all idle
        ("random", lambda c: len(c) >= 2 and sum(c.values()) == 30),
    ],
)
async def test_strategies_over_three_backends(tmp_path: Path, strategy: str, check: Any) -> None:
    async with (
        FakeVLLM([FakeModel("m")]) as f1,
        FakeVLLM([FakeModel("m")]) as f2,
        FakeVLLM([FakeModel("m")]) as f3,
    ):
        backends = [
            backend_entry(f, f"b{i}", "vllm", priority=i * 10)
            for i, f in enumerate((f1, f2, f3), 1)
        ]
        async with running_nexus(tmp_path, backends, routing={"strategy": strategy}) as nexus:
            seen = await served_by(nexus, 30)
            assert check(seen), seen


async def test_smart_spreads_equal_backends_and_prefers_less_loaded(tmp_path: Path) -> None:
    # "a" also serves "hold", which "b" does not: requests for it occupy "a" alone.
    async with (
        FakeVLLM([FakeModel("m"), FakeModel("hold")]) as f1,
        FakeVLLM([FakeModel("m")]) as f2,
    ):
        backends = [backend_entry(f1, "a", "vllm"), backend_entry(f2, "b", "vllm")]
        async with running_nexus(tmp_path, backends) as nexus:
            # Equal scores rotate. (Whatever the first answer measured, the second request
            # starts its rotation at the backend no request has reached yet, which counts as
            # fast: both serve, even on a machine slow enough to split their latencies.)
            seen = await served_by(nexus, 20)
            assert set(seen) == {"a", "b"}
            # Less loaded wins only as far as the score says: one in-flight request weighs
            # `load` (30), each whole 10 ms of observed latency `latency` (20), and latency
            # counts up to 100 points. On a busy machine "b"'s latency, measured on the very
            # requests below, can grow past "a"'s (frozen: "a" finishes nothing meanwhile) by
            # more than a few in-flight requests are worth. Enough of them outweigh any
            # latency: then every request must go to the idle backend.
            weights = nexus.state.config.routing.weights
            held = math.floor(100 * weights.latency / weights.load) + 1  # 67 by default
            f1.chat_behavior, f1.delay = Behavior.SLOW, 3.0
            a_backend, b_backend = nexus.state.registry.find("a"), nexus.state.registry.find("b")
            assert a_backend is not None and b_backend is not None
            occupy = [
                asyncio.create_task(
                    nexus.client.chat.completions.create(model="hold", messages=MSG)
                )  # type: ignore[arg-type]
                for _ in range(held)
            ]
            await wait_until(
                lambda: a_backend.pending_requests == held, what=f"{held} requests with 'a'"
            )
            assert b_backend.pending_requests == 0
            # While "a" is busy, new requests go to the idle "b".
            assert await served_by(nexus, 10) == {"b": 10}
            assert a_backend.pending_requests == held  # still busy throughout
            replies = await asyncio.gather(*occupy)
            assert all(r.choices[0].message.content for r in replies)
            assert nexus.pending() == {"a": 0, "b": 0}


async def test_capabilities_route_only_to_capable_backends(tmp_path: Path) -> None:
    async with (
        FakeOllama(
            [FakeModel("llava", vision=True, tools=False, context_length=4096)]
        ) as vision_box,
        FakeOllama(
            [FakeModel("llava", vision=False, tools=True, context_length=32768)]
        ) as text_box,
    ):
        backends = [
            backend_entry(vision_box, "vision", "ollama"),
            backend_entry(text_box, "text", "ollama"),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            image = [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ]
            for _ in range(5):
                resp = await nexus.client.chat.completions.with_raw_response.create(
                    model="llava", messages=image
                )  # type: ignore[arg-type]
                assert resp.headers["X-Nexus-Backend"] == "vision"
                assert resp.headers["X-Nexus-Route-Reason"] == "capability-match"
            tools = [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ]
            assert await served_by(nexus, 5, "llava", tools=tools) == {"text": 5}
            long_prompt = [{"role": "user", "content": "word " * 6000}]  # ~7500 tokens > 4096
            for _ in range(5):
                resp = await nexus.client.chat.completions.with_raw_response.create(
                    model="llava", messages=long_prompt
                )  # type: ignore[arg-type]
                assert resp.headers["X-Nexus-Backend"] == "text"
            # Nobody can do both: 400 naming the unmet needs and why each backend was excluded.
            with pytest.raises(openai.BadRequestError) as info:
                await nexus.client.chat.completions.create(
                    model="llava", messages=image, tools=tools
                )  # type: ignore[arg-type]
            message = info.value.body["message"]  # type: ignore[index]
            assert "vision" in message and "tools" in message
            assert (
                "vision: llava: no tool calling" in message and "text: llava: no vision" in message
            )


async def test_legacy_completions_for_a_model_only_a_cloud_api_without_them_serves_is_a_400(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anthropic's and Google's APIs have no /v1/completions: nothing could ever serve it, so
    it is the request's mismatch (400 naming the need), not an outage (503)."""
    from tests.fakes.anthropic import FakeAnthropic

    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test-0123456789")
    async with FakeAnthropic(api_key="sk-ant-test-0123456789") as claude:
        entry = {
            "name": "claude",
            "url": claude.url,
            "type": "anthropic",
            "api_key_env": "TEST_ANTHROPIC_KEY",
        }
        async with running_nexus(tmp_path, [entry]) as nexus:
            with pytest.raises(openai.BadRequestError) as info:
                await nexus.client.completions.create(model="claude-sonnet-4-5", prompt="Once")
            error = info.value.body
            assert error["code"] == "capability_mismatch"  # type: ignore[index]
            assert "legacy completions" in error["message"]  # type: ignore[index]
            assert "anthropic backends cannot serve" in error["message"]  # type: ignore[index]
            assert all(r.method == "GET" for r in claude.requests)  # probes only: nothing sent


async def test_capable_backend_down_is_503_naming_the_need(tmp_path: Path) -> None:
    async with (
        FakeOllama([FakeModel("llava", vision=True)]) as vision_box,
        FakeOllama([FakeModel("llava", vision=False)]) as text_box,
    ):
        backends = [
            backend_entry(vision_box, "vision", "ollama"),
            backend_entry(text_box, "text", "ollama"),
        ]
        hc = {"interval_seconds": 0.1, "failure_threshold": 1}
        async with running_nexus(tmp_path, backends, health_check=hc) as nexus:
            await vision_box.stop()
            backend = nexus.state.registry.find("vision")
            await wait_until(lambda: backend is None or not backend.routable, what="not routable")
            image = [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
            status, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "llava", "messages": image}
            )
            assert status == 503
            assert (
                "vision" in body["error"]["message"]
                and "vision: unhealthy" in body["error"]["message"]
            )


@pytest.mark.parametrize(
    ("fake_cls", "kind"), [(FakeOllama, "ollama"), (FakeVLLM, "vllm"), (FakeLlamaCpp, "llamacpp")]
)
async def test_json_mode_is_routable_to_ollama_vllm_llamacpp(
    tmp_path: Path, fake_cls: Any, kind: str
) -> None:
    async with fake_cls([FakeModel("m")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, kind, kind)]) as nexus:
            assert nexus.state.registry.find(kind).models["m"].supports_json_mode is True  # type: ignore[union-attr]
            reply = await nexus.client.chat.completions.create(
                model="m",
                messages=MSG,
                response_format={"type": "json_object"},  # type: ignore[arg-type]
            )
            assert reply.choices[0].message.content
            assert fake.chat_requests[-1].json["response_format"] == {"type": "json_object"}


async def test_alias_chain_direct_match_and_requested_name_in_replies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nexus.routing")
    async with FakeOllama([FakeModel("llama3:70b"), FakeModel("gpt-3.5-turbo")]) as fake:
        aliases = {"gpt-4": "llama-70b", "llama-70b": "llama3:70b", "gpt-3.5-turbo": "llama3:70b"}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "o", "ollama")], routing={"aliases": aliases}
        ) as nexus:
            reply = await nexus.client.chat.completions.create(model="gpt-4", messages=MSG)  # type: ignore[arg-type]
            assert reply.model == "gpt-4"
            assert fake.chat_requests[-1].json["model"] == "llama3:70b"
            stream = await nexus.client.chat.completions.create(
                model="gpt-4", messages=MSG, stream=True
            )  # type: ignore[arg-type]
            models = {c.model async for c in stream}
            assert models == {"gpt-4"}
            debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
            assert "alias gpt-4 -> llama3:70b" in debug
            # A model a backend has directly wins over an alias of the same name.
            await nexus.client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG)  # type: ignore[arg-type]
            assert fake.chat_requests[-1].json["model"] == "gpt-3.5-turbo"


async def test_fallback_chain_header_model_and_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nexus.routing")
    async with FakeOllama([FakeModel("mixtral:8x7b")]) as fake:
        routing = {"fallbacks": {"llama3:70b": ["qwen2:72b", "mixtral:8x7b"]}}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "o", "ollama")], routing=routing
        ) as nexus:
            # llama3:70b is served by nobody at the moment: the chain still applies.
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="llama3:70b", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Fallback-Model"] == "mixtral:8x7b"
            assert resp.headers["X-Nexus-Route-Reason"] == "fallback"
            assert resp.parse().model == "llama3:70b"
            stream = await nexus.client.chat.completions.with_raw_response.create(
                model="llama3:70b",
                messages=MSG,
                stream=True,  # type: ignore[arg-type]
            )
            assert stream.headers["X-Nexus-Fallback-Model"] == "mixtral:8x7b"
            assert {c.model async for c in stream.parse()} == {"llama3:70b"}
            warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(
                "llama3:70b" in w and "mixtral:8x7b" in w and "no backend serves" in w
                for w in warning
            )
            # Exhausted chain: the only candidate (still healthy, probes are 30 s apart) refuses
            # the connection, and no model of the chain has another backend: 502.
            await fake.stop()
            status, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "llama3:70b", "messages": MSG}
            )
            assert status == 502, body
            assert "connection refused" in body["error"]["message"]


async def test_fallback_when_primary_unhealthy(tmp_path: Path) -> None:
    async with FakeOllama([FakeModel("big")]) as big, FakeOllama([FakeModel("small")]) as small:
        backends = [
            backend_entry(big, "big-box", "ollama"),
            backend_entry(small, "small-box", "ollama"),
        ]
        routing = {"fallbacks": {"big": ["small"]}}
        hc = {"interval_seconds": 0.1, "failure_threshold": 1}
        async with running_nexus(tmp_path, backends, routing=routing, health_check=hc) as nexus:
            assert await served_by(nexus, 2, "big") == {"big-box": 2}
            big.health_behavior = Behavior.ERROR_500
            backend = nexus.state.registry.find("big-box")
            await wait_until(lambda: backend is None or not backend.routable, what="not routable")
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="big", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "small-box"
            assert resp.headers["X-Nexus-Fallback-Model"] == "small"


@pytest.mark.parametrize(
    "fault",
    [
        "refuse",
        Behavior.HANG,
        Behavior.ERROR_500,
        Behavior.ERROR_503,
        Behavior.INVALID_JSON,
        Behavior.CUT_STREAM,
        Behavior.HEADERS_THEN_STALL,
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_failover_to_second_backend(tmp_path: Path, fault: Any, stream: bool) -> None:
    async with FakeVLLM([FakeModel("m")]) as bad, FakeVLLM([FakeModel("m")]) as good:
        backends = [
            backend_entry(bad, "bad", "vllm", priority=1),
            backend_entry(good, "good", "vllm", priority=2),
        ]
        server = {"request_timeout_seconds": 1, "stream_idle_timeout_seconds": 1}
        async with running_nexus(tmp_path, backends, server=server) as nexus:
            if fault == "refuse":
                await bad.stop()
            else:
                bad.chat_behavior, bad.cut_after = fault, 0
            started = time.monotonic()
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="m", messages=MSG, stream=stream
            )  # type: ignore[call-overload]
            assert resp.headers["X-Nexus-Backend"] == "good"
            assert resp.headers["X-Nexus-Route-Reason"] == "failover"
            reply = resp.parse()
            if stream:
                text = "".join([c.choices[0].delta.content or "" async for c in reply if c.choices])
            else:
                text = reply.choices[0].message.content
            assert str(good.port) in text
            # The good backend's latency is its own, not the failed attempt's 1 s before it.
            good_backend = nexus.state.registry.find("good")
            assert good_backend is not None and good_backend.avg_latency_ms < 900
            if fault == "refuse":
                assert time.monotonic() - started < 0.5  # refused fails over in milliseconds
            assert nexus.pending() == {"bad": 0, "good": 0}
            bad_backend = nexus.state.registry.find("bad")
            assert bad_backend is not None and bad_backend.penalized_until > 0
            # Penalised at once: the next request goes straight to the good backend.
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="m", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "good"
            assert resp.headers["X-Nexus-Route-Reason"] != "failover"


async def test_no_retry_on_400_and_429_tries_another(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as first, FakeVLLM([FakeModel("m")]) as second:
        backends = [
            backend_entry(first, "first", "vllm", priority=1),
            backend_entry(second, "second", "vllm", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            first.chat_behavior = Behavior.ERROR_400
            with pytest.raises(openai.BadRequestError):
                await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            assert len(second.chat_requests) == 0
            first.chat_behavior = Behavior.ERROR_429
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="m", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "second"
            second.chat_behavior = Behavior.ERROR_429
            first.chat_behavior = Behavior.ERROR_429
            status, _, headers = await nexus.post(
                "/v1/chat/completions", {"model": "m", "messages": MSG}
            )
            assert status == 429 and headers["Retry-After"] == "7"


async def test_retries_are_bounded_by_max_retries(tmp_path: Path) -> None:
    fakes = [FakeVLLM([FakeModel("m")]) for _ in range(4)]
    for f in fakes:
        await f.start()
        # 503, not 500: two backends answering one request with a 500 is the request's
        # fault (test_errors.py::test_a_request_two_backends_refuse_is_refused).
        f.chat_behavior = Behavior.ERROR_503
    try:
        backends = [backend_entry(f, f"b{i}", "vllm") for i, f in enumerate(fakes)]
        async with running_nexus(tmp_path, backends, routing={"max_retries": 1}) as nexus:
            status, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "m", "messages": MSG}
            )
            assert status == 502 and "HTTP 503" in body["error"]["message"]
            assert sum(len(f.chat_requests) for f in fakes) == 2
    finally:
        for f in fakes:
            await f.stop()


async def test_quality_tracking_deprioritises_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus import quality

    async with FakeVLLM([FakeModel("m")]) as flaky, FakeVLLM([FakeModel("m")]) as steady:
        backends = [backend_entry(flaky, "flaky", "vllm"), backend_entry(steady, "steady", "vllm")]
        async with running_nexus(
            tmp_path, backends, health_check={"interval_seconds": 0.05}
        ) as nexus:
            flaky.chat_behavior = Behavior.ERROR_500
            seen = await served_by(nexus, 10)  # every answer comes from steady (failover)
            assert seen == {"steady": 10}
            rates = nexus.state.quality.error_rates("m", time.monotonic())  # what routing reads
            assert rates is not None and rates["flaky"] > 0.1
            flaky.chat_behavior = Behavior.OK
            flaky_backend = nexus.state.registry.find("flaky")
            assert flaky_backend is not None
            # The live-traffic penalty lapses after one interval.
            await wait_until(
                lambda: flaky_backend.penalized_until <= time.monotonic(), what="penalty lapsed"
            )
            assert await served_by(nexus, 10) == {"steady": 10}  # still deprioritised
            # Not excluded for good: the error rate decays and flaky gets traffic again.
            monkeypatch.setattr(quality, "ERROR_HALF_LIFE_SECONDS", 0.05)
            await wait_until(
                lambda: (
                    "flaky" not in (nexus.state.quality.error_rates("m", time.monotonic()) or {})
                ),
                what="flaky's error rate decayed to negligible",
            )
            seen = await served_by(nexus, 10)
            assert seen["flaky"] >= 3, seen
            stats = (await nexus.get("/v1/stats"))[1]
            window = stats["quality"]["m"]["flaky"]["1h"]
            assert window["requests"] > 1 and 0 < window["error_rate"] < 1
            assert window["latency_ms"]["p50"] is not None


async def test_429_is_relayed_when_no_other_backend_can_serve(tmp_path: Path) -> None:
    async with (
        FakeOllama([FakeModel("llava", vision=True)]) as vision_box,
        FakeOllama([FakeModel("llava", vision=False)]) as text_box,
    ):
        # The vision box is preferred, so every request meets its 429 first.
        backends = [
            backend_entry(vision_box, "vision", "ollama", priority=1),
            backend_entry(text_box, "text", "ollama", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            vision_box.chat_behavior = Behavior.ERROR_429
            image = [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
            # The text box is healthy but cannot see: the vision box's 429 is the answer.
            status, body, headers = await nexus.post(
                "/v1/chat/completions", {"model": "llava", "messages": image}
            )
            assert status == 429 and headers["Retry-After"] == "7" and body["error"]
            assert text_box.chat_requests == []
            # A 429 followed by a good answer elsewhere is a success, not an error.
            status, _, headers = await nexus.post(
                "/v1/chat/completions", {"model": "llava", "messages": MSG}
            )
            assert status == 200 and headers["X-Nexus-Backend"] == "text"
            assert len(vision_box.chat_requests) == 2
            stats = (await nexus.get("/v1/stats"))[1]
            assert stats["requests"] == {"total": 2, "success": 1, "errors": 1, "in_flight": 0}
