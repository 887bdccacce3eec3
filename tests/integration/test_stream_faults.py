"""Streams: no total cap, idle and mid-stream failures end with one error event and [DONE],
and a client that leaves cancels the upstream and releases every counter."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus, wait_until

BODY = {"model": "qwen", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def read_stream(url: str) -> list[bytes]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=BODY) as r:
        assert r.status == 200
        raw = await r.read()
    return [b[6:] for b in raw.split(b"\n\n") if b]


async def test_long_healthy_stream_is_not_cut(tmp_path: Path) -> None:
    # 6 chunks 0.3 s apart: 1.8 s in all, far beyond the 0.5 s first-byte timeout.
    async with FakeVLLM([FakeModel("qwen")], stream_chunks=6) as fake:
        fake.chat_behavior, fake.delay = Behavior.SLOW, 0.3
        server = {"request_timeout_seconds": 0.5, "stream_idle_timeout_seconds": 0.6}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server=server
        ) as nexus:
            events = await read_stream(nexus.url)
            assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
            assert not any(b'"error"' in e for e in events)


async def test_stall_mid_stream_ends_with_one_error_event(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        fake.chat_behavior, fake.cut_after = Behavior.STALL_STREAM, 2
        server = {"stream_idle_timeout_seconds": 0.4}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server=server
        ) as nexus:
            events = await read_stream(nexus.url)
            assert len(events) == 4 and events[-1] == b"[DONE]"  # after the error event
            error = json.loads(events[-2])["error"]
            assert error["code"] == "backend_timeout" and "stalled" in error["message"]
            await wait_until(
                lambda: nexus.pending() == {"v": 0} and fake.active_streams == 0,
                what="counters released and the upstream stream closed",
            )
            assert nexus.pending() == {"v": 0}
            assert fake.active_streams == 0  # the upstream stream was closed, not leaked


async def test_cut_mid_stream_ends_with_error_event(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        fake.chat_behavior, fake.cut_after = Behavior.CUT_STREAM, 2
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            events = await read_stream(nexus.url)
            assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
            assert json.loads(events[-2])["error"]["type"] == "upstream_error"
            assert nexus.pending() == {"v": 0}


async def test_client_disconnect_cancels_upstream_and_releases_counters(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")], stream_chunks=50) as fake:
        fake.chat_behavior, fake.delay = Behavior.SLOW, 0.2
        async with running_nexus(tmp_path, [backend_entry(fake, "v", "vllm")]) as nexus:
            stream = await nexus.client.chat.completions.create(
                model="qwen", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for _ in stream:
                break  # got the first chunk; now walk away
            await stream.close()
            await wait_until(
                lambda: (
                    not (
                        fake.active_streams
                        or nexus.state.in_flight
                        or any(nexus.pending().values())
                    )
                ),
                what="the stream and the counters released",
            )
            assert fake.cancelled_streams == 1
            assert nexus.pending() == {"v": 0} and nexus.state.in_flight == 0


async def test_client_disconnect_before_first_byte_cancels_upstream(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        fake.chat_behavior = Behavior.HANG
        # The first-byte timeout is far beyond the wait below: only the client leaving can
        # release the request in time (with the default 5 s it raced the 5 s wait).
        server = {"request_timeout_seconds": 30}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server=server
        ) as nexus:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(
                    s.post(nexus.url + "/v1/chat/completions", json={**BODY, "stream": False})
                )
                await wait_until(lambda: fake.chat_requests, what="the request at the backend")
                task.cancel()
            await wait_until(
                lambda: (
                    not (
                        nexus.state.in_flight
                        or any(nexus.pending().values())
                        or fake.active_requests
                    )
                ),
                what="the request released everywhere",
            )
