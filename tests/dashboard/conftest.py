"""Shared fixtures of the dashboard tests: a small fleet of fakes behind a real Nexus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeModel, FakeOllama, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus

# Markup cannot name a backend (config, admin API and mDNS refuse it), so the backend's name
# is only odd; the payload comes from the network, as a model id a backend lists.
XSS_NAME = "gpu box (vllm) @lab/2"
XSS_MODEL = "<img src=x onerror=alert(1)><b>bold</b>-model"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@dataclass
class Fleet:
    nexus: Nexus
    ollama: FakeOllama
    vllm: FakeVLLM


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """Two healthy backends; one of them has an odd name and serves a model whose id is
    markup. Health probes are fast so that status changes show within a second."""
    async with (
        FakeOllama(
            [
                FakeModel("llama3:8b"),
                FakeModel("llava:7b", vision=True),
                FakeModel("nomic-embed-text", embedding=True),
            ]
        ) as ollama,
        FakeVLLM(
            [
                FakeModel("meta-llama/Llama-3.1-8B-Instruct", context_length=131072),
                FakeModel(XSS_MODEL, context_length=4096),
            ]
        ) as vllm,
    ):
        backends = [
            backend_entry(ollama, "ollama-box", "ollama"),
            backend_entry(vllm, XSS_NAME, "vllm"),
        ]
        async with running_nexus(
            tmp_path, backends, health_check={"interval_seconds": 0.2, "failure_threshold": 1}
        ) as nexus:
            yield Fleet(nexus, ollama, vllm)


async def chat(nexus: Nexus, model: str = "llama3:8b", *, stream: bool = False) -> None:
    messages: Any = [{"role": "user", "content": "SECRET-CONTENT-do-not-show"}]
    if stream:
        response = await nexus.client.chat.completions.create(
            model=model, messages=messages, stream=True
        )
        async for _ in response:
            pass
    else:
        await nexus.client.chat.completions.create(model=model, messages=messages)


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Every message up to and including the first one for which ``done`` holds."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data = msg.json()
            seen.append(data)
            if done(data):
                return seen


def seed_traffic(nexus: Nexus, backends: dict[str, str], minutes: float = 10) -> int:
    """Feed the dashboard's recorder sink finished requests spread over the last minutes (as
    the recorder would have, had they happened), so charts have a window to draw.

    The oldest 10 s bucket of the window is left empty: the page drawn a few seconds later
    (many, on a busy machine) may be in the next bucket, and the window moves with it."""
    import math
    import time

    from nexus.records import RequestRecord

    hub = nexus.server.app.dashboard.hub
    now = time.time()
    count = 0
    for step in range(int(minutes * 6) - 2, 0, -1):  # oldest first, one per 10 s bucket
        for k, (name, model) in enumerate(backends.items()):
            wave = math.sin(step / 6 + k * 1.7)
            for j in range(3 + int(4 * (1 + wave)) + k):
                rec = RequestRecord(
                    request_id=f"seed{step}-{k}-{j}",
                    endpoint="chat",
                    model=model,
                    routed_model=model,
                    backend=name,
                    status=200,
                    stream=j % 2 == 0,
                    route_reason="seeded",
                )
                rec.timestamp = now - step * 10 + j * 0.1
                rec.duration_seconds = (0.08 + 0.05 * k + 0.04 * (1 + math.cos(step / 4 + k))) * (
                    1 + 0.1 * j
                )
                if (step + j) % 23 == 0:
                    rec.status, rec.error_type, rec.error = 502, "backend_error", "upstream 502"
                hub.record(rec)
                count += 1
    return count
