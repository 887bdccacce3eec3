"""Every error a client can meet is OpenAI-shaped, with the right status."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

MSG = [{"role": "user", "content": "hi"}]


def assert_openai_error(body: Any, *, param: str | None = None) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"messages": MSG}, "model", "model"),
        ({"model": 5, "messages": MSG}, "model", "model"),
        ({"model": "qwen"}, "messages", "messages"),
        ({"model": "qwen", "messages": []}, "messages", "messages"),
        ({"model": "qwen", "messages": ["hi"]}, "messages[0]", "messages[0]"),
        ({"model": "qwen", "messages": [{"content": "x"}]}, "messages[0].role", "role"),
        (
            {"model": "qwen", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "content",
        ),
        ({"model": "qwen", "messages": MSG, "stream": "yes"}, "stream", "stream"),
        ({"model": "qwen", "messages": MSG, "max_tokens": 0}, "max_tokens", "max_tokens"),
        ({"model": "qwen", "messages": MSG, "n": 1000}, "n", "'n'"),
        ({"model": "qwen", "messages": MSG, "temperature": "hot"}, "temperature", "temperature"),
        ({"model": "qwen", "messages": MSG, "tools": {}}, "tools", "tools"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(
    tmp_path: Path, body: dict[str, Any], param: str, needle: str
) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            status, reply, headers = await nexus.post("/v1/chat/completions", body)
            assert status == 400
            error = assert_openai_error(reply, param=param)
            assert needle in error["message"]
            assert headers["X-Request-Id"] == error["request_id"]
            assert fake.chat_requests == []


async def test_malformed_json_and_media_type(tmp_path: Path) -> None:
    async with running_nexus(tmp_path, []) as nexus:
        status, reply, _ = await nexus.post(
            "/v1/chat/completions",
            data=b'{"model": "x",',
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and "not valid JSON" in assert_openai_error(reply)["message"]
        status, reply, _ = await nexus.post(
            "/v1/chat/completions",
            data=b"model=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 415
        assert_openai_error(reply)
        status, reply, _ = await nexus.post("/v1/nope", {"x": 1})
        assert status == 404
        assert_openai_error(reply)
        async with aiohttp.ClientSession() as s, s.get(nexus.url + "/v1/chat/completions") as r:
            assert r.status == 405
            assert_openai_error(await r.json())


async def test_body_over_limit_is_413(tmp_path: Path) -> None:
    async with running_nexus(tmp_path, [], server={"max_request_bytes": 4096}) as nexus:
        big = {"model": "x", "messages": [{"role": "user", "content": "a" * 10_000}]}
        status, reply, _ = await nexus.post("/v1/chat/completions", big)
        assert status == 413
        assert_openai_error(reply)

        # Chunked upload with no Content-Length: still bounded.
        async def gen() -> Any:
            for _ in range(10):
                yield b"a" * 1000

        async with (
            aiohttp.ClientSession() as s,
            s.post(
                nexus.url + "/v1/chat/completions",
                data=gen(),
                headers={"Content-Type": "application/json"},
            ) as r,
        ):
            assert r.status == 413


async def test_unknown_model_is_404_listing_models(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen"), FakeModel("mistral")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            with pytest.raises(openai.NotFoundError) as info:
                await nexus.client.chat.completions.create(model="gpt-9", messages=MSG)  # type: ignore[arg-type]
            message = info.value.body["message"]  # type: ignore[index]
            assert "gpt-9" in message and "qwen" in message and "mistral" in message


async def test_no_healthy_backend_is_503(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        hc = {"interval_seconds": 0.1, "failure_threshold": 1}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], health_check=hc
        ) as nexus:
            fake.health_behavior = Behavior.ERROR_500
            # Down for chat too: panic routing tries an unhealthy backend before a 503
            # (test_real_clients.py shows it serving when chat works).
            fake.chat_behavior = Behavior.ERROR_503
            await wait_status(nexus, "unhealthy")
            status, reply, headers = await nexus.post(
                "/v1/chat/completions", {"model": "qwen", "messages": MSG}
            )
            assert status == 503 and "Retry-After" in headers
            assert "no healthy backend" in assert_openai_error(reply)["message"]


async def wait_status(nexus: Nexus, status: str) -> None:
    await wait_until(
        lambda: {b.status.value for b in nexus.state.registry} == {status},
        what=f"every backend {status}",
    )


async def test_unreachable_backend_is_502(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            await fake.stop()
            status, reply, _ = await nexus.post(
                "/v1/chat/completions", {"model": "qwen", "messages": MSG}
            )
            assert status == 502
            assert "connection refused" in assert_openai_error(reply)["message"]
            assert nexus.pending() == {"v": 0}


@pytest.mark.parametrize("behavior", [Behavior.HANG, Behavior.HEADERS_THEN_STALL])
async def test_backend_timeout_is_504(tmp_path: Path, behavior: Behavior) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        server = {"request_timeout_seconds": 0.5, "stream_idle_timeout_seconds": 0.5}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server=server
        ) as nexus:
            fake.chat_behavior = behavior
            for stream in (False, True):
                body = {"model": "qwen", "messages": MSG, "stream": stream}
                status, reply, _ = await nexus.post("/v1/chat/completions", body)
                assert status == 504, (stream, reply)
                assert_openai_error(reply)
            assert nexus.pending() == {"v": 0}


@pytest.mark.parametrize(
    ("behavior", "status"),
    [
        (Behavior.ERROR_400, 400),
        (Behavior.ERROR_401, 401),
        (Behavior.ERROR_403, 403),
        (Behavior.ERROR_429, 429),
    ],
)
async def test_upstream_4xx_passes_through(tmp_path: Path, behavior: Behavior, status: int) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            fake.chat_behavior = behavior
            got, reply, headers = await nexus.post(
                "/v1/chat/completions", {"model": "qwen", "messages": MSG}
            )
            assert got == status
            assert_openai_error(reply)
            if status == 429:
                assert headers["Retry-After"] == "7"
            assert len(fake.chat_requests) == 1  # not retried


async def test_upstream_500_without_alternative_is_502(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            for behavior in (Behavior.ERROR_500, Behavior.INVALID_JSON, Behavior.TRUNCATED):
                fake.chat_behavior = behavior
                status, reply, _ = await nexus.post(
                    "/v1/chat/completions", {"model": "qwen", "messages": MSG}
                )
                assert status == 502, behavior
                assert_openai_error(reply)


async def test_max_concurrent_requests_gives_fast_503(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        fake.chat_behavior = Behavior.SLOW
        fake.delay = 1.0
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server={"max_concurrent_requests": 2}
        ) as nexus:
            body = {"model": "qwen", "messages": MSG}
            slow = [asyncio.create_task(nexus.post("/v1/chat/completions", body)) for _ in range(2)]
            await wait_until(lambda: nexus.state.in_flight >= 2, what="two requests in flight")
            status, reply, headers = await nexus.post("/v1/chat/completions", body)
            assert status == 503 and headers["Retry-After"]
            assert assert_openai_error(reply)["code"] == "overloaded"
            assert [r[0] for r in await asyncio.gather(*slow)] == [200, 200]
            assert nexus.state.in_flight == 0
