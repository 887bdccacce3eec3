"""docs/errors.md's fault matrix, row by row: with and without a healthy alternative."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

MSG = [{"role": "user", "content": "hi"}]
SERVER = {"request_timeout_seconds": 0.6, "stream_idle_timeout_seconds": 0.6}

# fault -> (no alternative, non-stream), (no alternative, stream); ("event", code) = 200 + error event
FAULTS: dict[str, tuple[Any, Any]] = {
    "refuse": (502, 502),
    "tls": (503, 503),  # never probed healthy: its models are unknown
    "hang": (504, 504),
    "headers_then_stall": (504, 504),
    "stall_mid_stream": (504, ("event", "backend_timeout")),
    "cut_mid_body": (502, ("event", "backend_unreachable")),
    "error_500": (502, 502),
    "error_502": (502, 502),
    "error_503": (502, 502),
    "error_429": (429, 429),
    "error_401": (401, 401),
    "error_403": (403, 403),
    "invalid_json": (502, 502),
    "slow": (200, 200),
}


def apply(fault: str, fake: FakeVLLM) -> None:
    fake.cut_after = 2
    fake.delay = 0.3
    fake.chat_behavior = {
        "hang": Behavior.HANG,
        "headers_then_stall": Behavior.HEADERS_THEN_STALL,
        "stall_mid_stream": Behavior.STALL_STREAM,
        "cut_mid_body": Behavior.TRUNCATED,
        "invalid_json": Behavior.INVALID_JSON,
        "slow": Behavior.SLOW,
    }.get(fault, Behavior(fault) if fault.startswith("error_") else Behavior.OK)


async def call(nexus: Nexus, stream: bool, fault: str) -> tuple[int, Any, CIMultiDict[str]]:
    body = {"model": "m", "messages": MSG, "stream": stream}
    async with (
        aiohttp.ClientSession() as s,
        s.post(nexus.url + "/v1/chat/completions", json=body) as r,
    ):
        raw = await r.read()
        if r.content_type == "text/event-stream":
            events = [e[6:] for e in raw.split(b"\n\n") if e]
            return r.status, events, CIMultiDict(r.headers)
        return r.status, json.loads(raw), CIMultiDict(r.headers)


def entry(fake: FakeVLLM, name: str, fault: str, priority: int) -> dict[str, Any]:
    url = f"https://127.0.0.1:{fake.port}" if fault == "tls" else fake.url
    return {"name": name, "url": url, "type": "vllm", "priority": priority}


async def settle_counters(nexus: Nexus) -> None:
    await wait_until(
        lambda: not (nexus.state.in_flight or any(nexus.pending().values())),
        what="no request in flight",
    )


async def still_serving(nexus: Nexus, good: FakeVLLM | None) -> None:
    status, health, _ = await nexus.get("/health")
    assert status == 200 and health["backends"]["total"] >= 1
    if good is not None:
        good.chat_behavior = Behavior.OK
        reply = await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
        assert reply.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_without_alternative(tmp_path: Path, fault: str, stream: bool) -> None:
    async with FakeVLLM([FakeModel("m")]) as fake:
        async with running_nexus(tmp_path, [entry(fake, "only", fault, 1)], server=SERVER) as nexus:
            if fault == "refuse":
                await fake.stop()
            apply(fault, fake)
            expected = FAULTS[fault][int(stream)]
            status, body, headers = await call(nexus, stream, fault)
            if isinstance(expected, tuple):
                assert status == 200
                assert body[-1] == b"[DONE]" and body.count(b"[DONE]") == 1
                error = json.loads(body[-2])["error"]
                assert error["code"] == expected[1] and error["request_id"]
            elif expected == 200:
                assert status == 200
                if stream:  # a whole answer: [DONE] and no error event before it
                    assert body[-1] == b"[DONE]" and not any(b'"error"' in e for e in body)
                else:
                    assert body["choices"]
            else:
                assert status == expected, body
                assert set(body) == {"error"} and body["error"]["message"]
                if status == 429:
                    assert headers["Retry-After"] == "7"
            assert "Traceback" not in json.dumps(
                body if isinstance(body, dict) else [e.decode() for e in body]
            )
            await settle_counters(nexus)
            await still_serving(nexus, None if fault in ("refuse", "tls") else fake)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_with_alternative(tmp_path: Path, fault: str, stream: bool) -> None:
    async with FakeVLLM([FakeModel("m")]) as bad, FakeVLLM([FakeModel("m")]) as good:
        backends = [entry(bad, "bad", fault, 1), entry(good, "good", "ok", 2)]
        async with running_nexus(tmp_path, backends, server=SERVER) as nexus:
            if fault == "refuse":
                await bad.stop()
            apply(fault, bad)
            status, body, headers = await call(nexus, stream, fault)
            expected = FAULTS[fault][int(stream)]
            if fault in ("error_401", "error_403"):
                assert status == expected  # a configuration problem: passed through
            elif isinstance(expected, tuple):
                # The first byte had gone out: no switch, the stream ends with an error event.
                assert status == 200 and headers["X-Nexus-Backend"] == "bad"
                assert json.loads(body[-2])["error"]["code"] == expected[1]
                assert body[-1] == b"[DONE]"
            else:
                assert status == 200, body
                expect_backend = "bad" if fault == "slow" else "good"
                assert headers["X-Nexus-Backend"] == expect_backend
                if stream:  # a whole answer: [DONE] and no error event before it
                    assert body[-1] == b"[DONE]" and not any(b'"error"' in e for e in body)
                else:
                    assert body["choices"]
            await settle_counters(nexus)
            bad.chat_behavior = Behavior.OK
            await still_serving(nexus, good)


async def test_flapping_backend_with_alternative(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as flappy, FakeVLLM([FakeModel("m")]) as steady:
        backends = [
            backend_entry(flappy, "flappy", "vllm", priority=1),
            backend_entry(steady, "steady", "vllm", priority=2),
        ]
        hc = {"interval_seconds": 0.1, "failure_threshold": 1, "recovery_threshold": 1}
        async with running_nexus(tmp_path, backends, health_check=hc, server=SERVER) as nexus:
            port = flappy.port

            async def flap() -> None:
                for _ in range(6):
                    await asyncio.sleep(0.25)
                    await flappy.stop()
                    await asyncio.sleep(0.25)
                    await flappy.start(port=port)

            flapping = asyncio.create_task(flap())
            served: dict[str, int] = {}
            while not flapping.done():
                for stream in (False, True):
                    status, _, headers = await call(nexus, stream, "flap")
                    assert status == 200
                    served[headers["X-Nexus-Backend"]] = (
                        served.get(headers["X-Nexus-Backend"], 0) + 1
                    )
            await flapping
            assert served.get("steady", 0) > 0
            await settle_counters(nexus)


async def test_flapping_backend_alone_never_hangs_or_500s(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as flappy:
        hc = {"interval_seconds": 0.1, "failure_threshold": 1, "recovery_threshold": 1}
        async with running_nexus(
            tmp_path, [backend_entry(flappy, "flappy", "vllm")], health_check=hc, server=SERVER
        ) as nexus:
            port = flappy.port
            statuses: set[int] = set()
            for _ in range(5):
                await flappy.stop()
                for _ in range(3):
                    statuses.add((await call(nexus, False, "flap"))[0])
                await flappy.start(port=port)
                await asyncio.sleep(0.25)
                statuses.add((await call(nexus, True, "flap"))[0])
            assert statuses <= {200, 502, 503} and 200 in statuses
            await settle_counters(nexus)
