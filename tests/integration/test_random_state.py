"""Nexus draws its jitter and its random routing from generators of its own: the random
module's shared one is left alone (a test framework that seeded it and replays examples,
as hypothesis does, would otherwise see it move under its feet)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_probes_and_random_routing_leave_the_shared_generator_alone(
    tmp_path: Path,
) -> None:
    async with FakeVLLM([FakeModel("m")]) as one, FakeVLLM([FakeModel("m")]) as two:
        backends = [backend_entry(one, "one", "vllm"), backend_entry(two, "two", "vllm")]
        async with running_nexus(
            tmp_path,
            backends,
            health_check={"interval_seconds": 0.02},
            routing={"strategy": "random"},
        ) as nexus:
            registry = nexus.state.registry
            state = random.getstate()
            checked = {b.id: b.last_health_check for b in registry}
            for _ in range(10):  # and probes every 20 ms meanwhile, each with its jitter
                await nexus.client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
            # However busy the machine, each backend was probed since (its jitter is drawn
            # as its probe ends), not merely some time went by.
            await wait_until(
                lambda: all(b.last_health_check != checked[b.id] for b in registry),
                what="a probe of each backend",
            )
            assert random.getstate() == state
