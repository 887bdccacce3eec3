"""Several Nexus replicas sharing one Redis (F21, F22): three real ``nexus serve`` processes,
a real ``redis-server`` on a free loopback port, a fake vLLM and a fake OpenAI cloud.

What a team behind a load balancer relies on: one rate limit for all replicas together, one
quota, one budget, a key revoked on one replica refused by all within about a second, and
Redis dying and coming back mid-traffic without a single 5xx or a lost usage record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeModel, FakeOpenAI, FakeVLLM
from tests.helpers import NexusProcess, backend_entry, spawn_nexus, wait_until, write_config
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.timeout(90)

KEYS = {
    "TEAM_KEY": "team-key-0123456789abcdef",  # rpm 60, burst 5
    "QUOTA_KEY": "quota-key-0123456789abcdef",  # 40 tokens a month
    "OPEN_KEY": "open-key-0123456789abcdef",  # no limits
}
CENT = {"input": 10000.0, "output": 10000.0}  # USD per million tokens: a cent a token
FLUSH = 0.2


@dataclass
class Fleet:
    redis: RedisServer
    replicas: list[NexusProcess]
    session: aiohttp.ClientSession

    async def chat(self, replica: int, key: str, model: str = "m") -> tuple[int, Any, Any]:
        url = self.replicas[replica % len(self.replicas)].url + "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {key}"}
        async with self.session.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    async def admin(self, replica: int, method: str, path: str, body: Any = None) -> Any:
        url = self.replicas[replica].url + path
        async with self.session.request(method, url, json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()


@asynccontextmanager
async def fleet(tmp_path: Path, *, budget: float = 0) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path / "redis"))
        box = await stack.enter_async_context(FakeVLLM([FakeModel("m")]))
        cloud = await stack.enter_async_context(FakeOpenAI([FakeModel("cloud-m")]))
        backends = [
            backend_entry(box, "box", "vllm"),
            {
                "name": "cloud",
                "url": cloud.url,
                "type": "openai",
                "api_key_env": "CLOUD_KEY",
                "prices": {"cloud-m": CENT},
            },
        ]
        tenants = [
            {"name": "team", "key_env": "TEAM_KEY", "rpm": 60, "burst": 5},
            {"name": "quota", "key_env": "QUOTA_KEY", "monthly_tokens": 40},
            {"name": "open", "key_env": "OPEN_KEY"},
        ]
        sections: dict[str, Any] = {
            # (every 401 while waiting for a revocation counts as a failed attempt)
            "auth": {"enabled": True, "tenants": tenants, "failed_attempts_per_minute": 1000},
            "storage": {"url": redis.url, "flush_interval_seconds": FLUSH},
            "queuing": {"enabled": False},
        }
        if budget:
            sections["budget"] = {"monthly_limit": budget, "hard_limit_action": "reject"}
        config = write_config(tmp_path, backends, **sections)
        env = {**KEYS, "CLOUD_KEY": "sk-cloud-0123456789"}
        replicas = [await stack.enter_async_context(spawn_nexus(config, env=env)) for _ in range(3)]
        for replica in replicas:
            await replica.wait_healthy()
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Fleet(redis, replicas, session)


async def test_one_rate_limit_one_quota_and_revocation_for_all_replicas(tmp_path: Path) -> None:
    async with fleet(tmp_path) as lab:
        # Rate: 30 requests spread over the three replicas at once. Alone, each replica would
        # admit its own burst of 5 (15 in all); together they admit 5 plus one a second.
        started = time.monotonic()
        answers = await asyncio.gather(*(lab.chat(i, KEYS["TEAM_KEY"]) for i in range(30)))
        elapsed = time.monotonic() - started
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert 5 <= statuses.count(200) <= 5 + int(elapsed) + 1, (statuses, elapsed)
        refused = next(a for a in answers if a[0] == 429)
        assert refused[2]["x-ratelimit-limit-requests"] == "60"
        assert 0 < float(refused[2]["Retry-After"]) <= 2
        assert {a[2]["x-ratelimit-remaining-requests"] for a in answers if a[0] == 200}

        # Quota: 40 tokens a month, 16 an answer (4 prompt + 12 completion). Three answers on
        # replica 0 use it up; the others refuse once the usage is flushed.
        for _ in range(3):
            status, _, _ = await lab.chat(0, KEYS["QUOTA_KEY"])
            assert status == 200

        async def refused_everywhere() -> bool:
            results = [await lab.chat(i, KEYS["QUOTA_KEY"]) for i in (1, 2)]
            return all(
                status == 429 and body["error"]["code"] == "quota_exceeded"
                for status, body, _ in results
            )

        await wait_until(refused_everywhere, timeout=5, interval=0.1, what="quota everywhere")

        # Keys: made on replica 0, valid on all; revoked on replica 0, refused by all.
        await lab.admin(0, "POST", "/admin/tenants", {"name": "alice"})
        made = await lab.admin(0, "POST", "/admin/keys", {"tenant": "alice"})
        key = made["key"]

        async def works_everywhere() -> bool:
            return all([(await lab.chat(i, key))[0] == 200 for i in range(3)])

        await wait_until(works_everywhere, timeout=5, interval=0.1, what="new key everywhere")
        await lab.admin(0, "DELETE", f"/admin/keys/{made['id']}")
        revoked_at = time.monotonic()
        assert (await lab.chat(0, key))[0] == 401

        async def revoked_everywhere() -> bool:
            return all([(await lab.chat(i, key))[0] == 401 for i in (1, 2)])

        await wait_until(revoked_everywhere, timeout=5, interval=0.05, what="revoked everywhere")
        assert time.monotonic() - revoked_at < 2.5  # polled once a second


async def test_the_budget_is_one_budget_across_replicas(tmp_path: Path) -> None:
    """A $0.50 budget, a cent a token: each cloud answer costs about $0.16 (4 + 12 tokens).
    Whatever replica serves them, the fourth is refused everywhere once spend is flushed."""
    async with fleet(tmp_path, budget=0.5) as lab:
        for i in range(3):  # one on each replica
            status, body, _ = await lab.chat(i, KEYS["OPEN_KEY"], "cloud-m")
            assert status == 200, body
        await asyncio.sleep(FLUSH * 5)  # every replica flushed and re-read the shared total

        for i in range(3):
            status, body, _ = await lab.chat(i, KEYS["OPEN_KEY"], "cloud-m")
            assert status == 429 and body["error"]["code"] == "budget_exceeded", (i, body)
        async with lab.session.get(lab.replicas[2].url + "/v1/stats") as resp:
            stats = await resp.json()
        assert stats["budget"]["spent_usd"] == pytest.approx(0.48, abs=0.001)


async def test_redis_killed_and_restarted_mid_traffic_no_5xx_and_no_usage_lost(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as lab:
        statuses: list[int] = []
        stop = asyncio.Event()

        async def client(n: int) -> None:
            i = n
            while not stop.is_set():
                statuses.append((await lab.chat(i, KEYS["OPEN_KEY"]))[0])
                i += 1

        clients = [asyncio.create_task(client(n)) for n in range(3)]
        try:
            await asyncio.sleep(1.0)
            lab.redis.kill()
            down = len(statuses)
            await asyncio.sleep(2.0)
            assert len(statuses) > down + 10  # served all along while Redis was away
            lab.redis.start()  # same port, same append-only file
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))

        async def all_usage_written() -> Any:
            usage = await lab.admin(0, "GET", "/admin/usage/open")
            total = sum(row["requests"] for row in usage["usage"])
            return usage if total == len(statuses) else None

        # Usage buffered during the outage is flushed once Redis is back: every answer counted.
        await wait_until(all_usage_written, timeout=10, interval=0.2, what="usage complete")
        async with lab.session.get(lab.replicas[0].url + "/metrics") as resp:
            metrics = await resp.text()
        assert "nexus_store_errors_total{" in metrics
        errors = [
            line
            for line in metrics.splitlines()
            if line.startswith("nexus_store_errors_total{") and not line.endswith(" 0.0")
        ]
        assert errors
        # The outage is logged once when it starts and once when it ends, never per attempt.
        for replica in lab.replicas:
            text = "\n".join(replica.lines)
            assert text.count("is unreachable") == 1, text[-3000:]
            assert text.count("is reachable again") == 1 and "Traceback" not in text
