"""The request queue (F18) and per-backend rate limits (F22) through ``nexus serve``'s wiring,
with the official ``openai`` SDK as the client and fakes holding a fixed number of slots."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

MODEL = "qwen"
MSG: list[Any] = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def one_slot(
    tmp_path: Path, slots: int = 1, **queuing: Any
) -> AsyncIterator[tuple[Nexus, FakeVLLM]]:
    async with FakeVLLM([FakeModel(MODEL)]) as fake:
        backends = [backend_entry(fake, "box", "vllm", max_concurrent=slots)]
        async with running_nexus(tmp_path, backends, queuing=queuing) as nexus:
            yield nexus, fake


def queued(nexus: Nexus) -> int:
    assert nexus.state.queue is not None
    return len(nexus.state.queue)


async def ask(nexus: Nexus, priority: str | None = None, model: str = MODEL, **extra: Any) -> Any:
    headers = {"X-Nexus-Priority": priority} if priority else {}
    headers.update(extra.pop("extra_headers", {}))
    return await nexus.client.chat.completions.with_raw_response.create(
        model=model, messages=MSG, extra_headers=headers, **extra
    )


async def metrics_text(nexus: Nexus) -> str:
    nexus.state.recorder.flush()
    async with aiohttp.ClientSession() as session, session.get(nexus.url + "/metrics") as resp:
        return await resp.text()


async def test_a_burst_on_a_one_slot_backend_waits_its_turn(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.delay = 0.05
        fake.chat_behavior = fake.chat_behavior.SLOW
        replies = await asyncio.gather(*(ask(nexus) for _ in range(8)))
        assert all(r.http_response.status_code == 200 for r in replies)
        assert fake.peak_requests == 1  # never more than its one slot
        waited = [r for r in replies if "x-nexus-queue-wait-ms" in r.headers]
        assert len(waited) >= 6  # all but the first (and maybe one that found the slot free)
        streamed = [
            await nexus.client.chat.completions.create(model=MODEL, messages=MSG, stream=True)
            for _ in range(1)
        ]
        burst = await asyncio.gather(
            *(
                nexus.client.chat.completions.create(model=MODEL, messages=MSG, stream=True)
                for _ in range(4)
            )
        )
        for stream in [*streamed, *burst]:
            assert [c async for c in stream]  # streams wait too, and then stream
        assert fake.peak_requests == 1
        text = await metrics_text(nexus)
        assert "nexus_queue_wait_seconds_count" in text
        assert 'nexus_queue_depth{priority="normal"} 0.0' in text
        _, stats, _ = await nexus.get("/v1/stats")
        assert stats["queue"]["waited"] >= 6 and stats["queue"]["depth"]["normal"] == 0


async def test_priorities_are_served_in_order(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        tasks = []
        for n, priority in enumerate(["low", "normal", "low", "high", "critical", "HIGH"], 1):
            tasks.append(asyncio.create_task(ask(nexus, priority, user=f"{priority}-{n}")))
            await wait_until(lambda n=n: queued(nexus) == n, what=f"{n} queued")
        fake.gate.set()
        await asyncio.gather(first, *tasks)
        order = [r.json["user"] for r in fake.chat_requests[1:]]
        assert order == ["critical-5", "high-4", "HIGH-6", "normal-2", "low-1", "low-3"]


async def test_a_full_queue_evicts_the_oldest_of_the_lowest_priority(tmp_path: Path) -> None:
    async with one_slot(tmp_path, max_queue_size=2) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        old_low = asyncio.create_task(ask(nexus, "low", user="old-low"))
        await wait_until(lambda: queued(nexus) == 1, what="one queued")
        young_low = asyncio.create_task(ask(nexus, "low", user="young-low"))
        await wait_until(lambda: queued(nexus) == 2, what="two queued")
        high = asyncio.create_task(ask(nexus, "high", user="high"))
        with pytest.raises(openai.APIStatusError) as evicted:
            await old_low
        assert evicted.value.status_code == 503
        assert evicted.value.response.json()["error"]["code"] == "queue_evicted"
        assert evicted.value.response.headers["retry-after"]
        with pytest.raises(openai.APIStatusError) as full:  # normal: nothing below it queued
            await ask(nexus, "low")
        assert full.value.response.json()["error"]["code"] == "queue_full"
        fake.gate.set()
        await asyncio.gather(first, young_low, high)
        assert [r.json.get("user") for r in fake.chat_requests[1:]] == ["high", "young-low"]
        text = await metrics_text(nexus)
        assert 'nexus_queue_rejections_total{reason="evicted"} 1.0' in text
        assert 'nexus_queue_rejections_total{reason="full"} 1.0' in text


async def test_a_timeout_is_a_503_with_an_eta(tmp_path: Path) -> None:
    async with one_slot(tmp_path, default_timeout_seconds=5) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.client.chat.completions.create(
                model=MODEL, messages=MSG, extra_headers={"X-Nexus-Queue-Timeout": "0.3"}
            )  # the header lowers the 5 s
        error = caught.value.response.json()["error"]
        assert caught.value.status_code == 503 and error["code"] == "queue_timeout"
        assert error["context"]["eta_seconds"] >= 1
        assert int(caught.value.response.headers["retry-after"]) == error["context"]["eta_seconds"]
        assert queued(nexus) == 0
        fake.gate.set()
        await first
        assert len(fake.chat_requests) == 1  # the timed-out one never reached the backend


async def test_a_client_that_leaves_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        impatient = openai.AsyncOpenAI(
            base_url=nexus.url + "/v1", api_key="x", max_retries=0, timeout=0.3
        )
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(model=MODEL, messages=MSG)
        await impatient.close()
        await wait_until(lambda: queued(nexus) == 0, what="the queue empty")
        fake.gate.set()
        await first
        await wait_until(lambda: nexus.state.in_flight == 0, what="nothing in flight")
        assert len(fake.chat_requests) == 1 and nexus.pending() == {"box": 0}
        await ask(nexus)  # the slot is free again: no reservation leaked


async def test_requests_that_no_backend_can_serve_never_wait(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        with pytest.raises(openai.NotFoundError):
            await nexus.client.chat.completions.create(model="nope", messages=MSG)
        long = [{"role": "user", "content": "word " * 40000}]  # beyond the 8k context
        with pytest.raises(openai.BadRequestError):
            await nexus.client.chat.completions.create(model=MODEL, messages=long)
        with pytest.raises(openai.BadRequestError) as bad:
            await ask(nexus, "urgent")
        assert "critical, high, normal, low" in bad.value.response.json()["error"]["message"]
        with pytest.raises(openai.BadRequestError) as bad:
            await nexus.client.chat.completions.create(
                model=MODEL, messages=MSG, extra_headers={"X-Nexus-Queue-Timeout": "soon"}
            )
        assert "X-Nexus-Queue-Timeout" in bad.value.response.json()["error"]["message"]
        assert queued(nexus) == 0
        fake.gate.set()
        await first


async def test_a_backend_that_goes_down_fails_its_waiters_at_once(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        waiting = asyncio.create_task(ask(nexus))
        await wait_until(lambda: queued(nexus) == 1, what="one queued")
        box = nexus.state.registry.find("box")
        assert box is not None
        fake.health_behavior = fake.health_behavior.ERROR_503
        for _ in range(nexus.state.config.health_check.failure_threshold):
            await nexus.state.health.check(box)
        with pytest.raises(openai.APIStatusError) as caught:
            await asyncio.wait_for(waiting, 5)
        assert caught.value.status_code == 503
        assert caught.value.response.json()["error"]["code"] == "no_healthy_backend"
        fake.gate.set()
        await first


async def test_shutdown_answers_queued_requests_at_once(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel(MODEL)]) as fake:
        backends = [backend_entry(fake, "box", "vllm", max_concurrent=1)]
        async with running_nexus(tmp_path, backends, server={"shutdown_grace_seconds": 5}) as nexus:
            fake.gate = asyncio.Event()
            first = asyncio.create_task(ask(nexus))
            await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
            waiting = asyncio.create_task(ask(nexus))
            await wait_until(lambda: queued(nexus) == 1, what="one queued")
            stopping = asyncio.create_task(nexus.server.stop())
            with pytest.raises(openai.APIStatusError) as caught:
                await asyncio.wait_for(waiting, 2)
            assert caught.value.response.json()["error"]["code"] == "shutting_down"
            fake.gate.set()  # the in-flight one drains
            assert (await first).http_response.status_code == 200
            await stopping


async def test_the_log_line_says_how_long_a_request_waited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.request")
    async with one_slot(tmp_path) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        second = asyncio.create_task(ask(nexus, "high"))
        await wait_until(lambda: queued(nexus) == 1, what="one queued")
        await asyncio.sleep(0.1)
        fake.gate.set()
        reply = await second
        await first
        assert int(reply.headers["x-nexus-queue-wait-ms"]) >= 100
        nexus.state.recorder.flush()
        lines = [r.request.to_dict() for r in caplog.records if hasattr(r, "request")]
        assert [line.get("queue_wait_ms", 0) >= 100 for line in lines] == [False, True]


async def test_the_eta_grows_with_the_service_time_and_the_queue_ahead(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.chat_behavior, fake.delay = fake.chat_behavior.SLOW, 2.0
        started = time.monotonic()
        await ask(nexus)  # observed: this backend holds a request ~2 s
        took = time.monotonic() - started
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")

        async def eta() -> int:
            with pytest.raises(openai.APIStatusError) as caught:
                await ask(nexus, extra_headers={"X-Nexus-Queue-Timeout": "0.1"})
            error = caught.value.response.json()["error"]
            assert error["code"] == "queue_timeout"
            assert caught.value.response.headers["retry-after"] == str(
                error["context"]["eta_seconds"]
            )
            return int(error["context"]["eta_seconds"])

        alone = await eta()  # next in line: one service time (1 s before any was observed)
        assert 2 <= alone <= math.ceil(took) + 1, (alone, took)
        waiting = []
        for n in (1, 2):
            waiting.append(asyncio.create_task(ask(nexus)))
            await wait_until(lambda n=n: queued(nexus) == n, what=f"{n} queued")
        third = await eta()  # two ahead of it: three service times
        assert 6 <= third <= math.ceil(3 * took) + 1, (third, took)
        assert third > alone
        fake.chat_behavior = fake.chat_behavior.OK
        fake.gate.set()
        await asyncio.gather(first, *waiting)


# -- fallbacks before waiting (F13) ---------------------------------------------------------


@asynccontextmanager
async def primary_and_fallback(
    tmp_path: Path, *, primary_tier: int, fallback_tier: int
) -> AsyncIterator[tuple[Nexus, FakeVLLM, FakeVLLM]]:
    """Model "a" on backend A and its configured fallback "b" on B, one slot each."""
    async with FakeVLLM([FakeModel("a")]) as a, FakeVLLM([FakeModel("b")]) as b:
        backends = [
            backend_entry(a, "A", "vllm", max_concurrent=1, tier=primary_tier),
            backend_entry(b, "B", "vllm", max_concurrent=1, tier=fallback_tier),
        ]
        routing = {"fallbacks": {"a": ["b"]}}
        async with running_nexus(tmp_path, backends, routing=routing) as nexus:
            yield nexus, a, b


async def test_a_busy_primary_goes_to_a_same_tier_fallback_instead_of_waiting(
    tmp_path: Path,
) -> None:
    async with primary_and_fallback(tmp_path, primary_tier=3, fallback_tier=3) as (nexus, a, b):
        a.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus, model="a"))
        await wait_until(lambda: a.active_requests == 1, what="A's slot taken")
        reply = await asyncio.wait_for(ask(nexus, model="a"), 5)
        assert reply.headers["x-nexus-backend"] == "B"
        assert reply.headers["x-nexus-fallback-model"] == "b"
        assert "x-nexus-queue-wait-ms" not in reply.headers  # it never waited
        assert [r.json["model"] for r in b.chat_requests] == ["b"]
        a.gate.set()
        assert (await first).headers["x-nexus-backend"] == "A"


async def test_a_busy_primary_waits_rather_than_fall_to_a_lower_tier(tmp_path: Path) -> None:
    async with primary_and_fallback(tmp_path, primary_tier=4, fallback_tier=2) as (nexus, a, b):
        a.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus, model="a"))
        await wait_until(lambda: a.active_requests == 1, what="A's slot taken")
        second = asyncio.create_task(ask(nexus, model="a"))
        await wait_until(lambda: queued(nexus) == 1, what="the second queued")
        a.gate.set()
        await first
        reply = await asyncio.wait_for(second, 5)
        assert reply.headers["x-nexus-backend"] == "A"
        assert "x-nexus-fallback-model" not in reply.headers
        assert "x-nexus-queue-wait-ms" in reply.headers
        assert b.chat_requests == []


# -- rate limits ---------------------------------------------------------------------------


@asynccontextmanager
async def limited(
    tmp_path: Path, *, queue: bool, second: bool
) -> AsyncIterator[tuple[Nexus, FakeVLLM, FakeVLLM]]:
    async with FakeVLLM([FakeModel(MODEL)]) as a, FakeVLLM([FakeModel(MODEL)]) as b:
        limit = {"requests_per_minute": 60, "burst": 1}
        backends = [backend_entry(a, "a", "vllm", priority=1, rate_limit=limit)]
        if second:
            backends.append(backend_entry(b, "b", "vllm", priority=90))
        sections = {"queuing": {"enabled": queue}}
        async with running_nexus(tmp_path, backends, **sections) as nexus:
            yield nexus, a, b


async def test_a_rate_limited_backend_is_skipped_for_another(tmp_path: Path) -> None:
    async with limited(tmp_path, queue=False, second=True) as (nexus, _, _):
        served = [(await ask(nexus)).headers["x-nexus-backend"] for _ in range(3)]
        assert served == ["a", "b", "b"]  # one token a second: a is out after the first
        text = await metrics_text(nexus)
        assert 'nexus_rate_limit_tokens{backend="a"}' in text


async def test_no_backend_left_under_its_limit_is_a_429_or_a_wait(tmp_path: Path) -> None:
    async with limited(tmp_path, queue=False, second=False) as (nexus, _, _):
        await ask(nexus)
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(nexus)
        assert caught.value.response.json()["error"]["code"] == "rate_limited"
        assert caught.value.response.headers["retry-after"] == "1"
    async with limited(tmp_path, queue=True, second=False) as (nexus, a, _):
        replies = await asyncio.gather(*(ask(nexus) for _ in range(3)))  # a token a second
        assert all(r.http_response.status_code == 200 for r in replies)
        waits = sorted(int(r.headers.get("x-nexus-queue-wait-ms", 0)) for r in replies)
        # The third waited for the bucket's third token (2 s after the first was taken),
        # less however late it arrived: under load the three may not start together.
        assert waits[0] == 0 and waits[-1] >= 900
        assert len(a.chat_requests) == 3


async def test_the_queue_is_shown_on_the_dashboard(tmp_path: Path) -> None:
    async with one_slot(tmp_path) as (nexus, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(ask(nexus))
        await wait_until(lambda: fake.active_requests == 1, what="the slot taken")
        waiting = asyncio.create_task(ask(nexus))
        await wait_until(lambda: queued(nexus) == 1, what="one queued")
        _, snap, _ = await nexus.get("/dashboard.json")
        assert snap["queued"] == 1
        async with aiohttp.ClientSession() as session, session.get(nexus.url + "/") as resp:
            page = await resp.text()
        assert 'data-tile="queued"' in page
        fake.gate.set()
        await asyncio.gather(first, waiting)
        nexus.state.recorder.flush()
        _, snap, _ = await nexus.get("/dashboard.json")
        assert snap["queued"] == 0
        assert any(e["queued_ms"] is not None for e in snap["history"])
        assert json.dumps(snap)  # plain JSON
