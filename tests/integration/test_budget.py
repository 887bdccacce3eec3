"""The monthly budget (F14) through ``nexus serve``'s wiring: a fake OpenAI cloud priced by
config (every token a cent), a fake local vLLM, the ``openai`` SDK as the client, a real
SQLite file, and the budget's clock injected where time matters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus import tokens
from nexus.store.sqlite import BUSY_TIMEOUT_SECONDS
from tests.fakes import Behavior, FakeModel, FakeOpenAI, FakeVLLM
from tests.helpers import (
    Nexus,
    backend_entry,
    nexus_cli,
    running_nexus,
    spawn_nexus,
    wait_until,
    write_config,
)

CENT = {"input": 10000.0, "output": 10000.0}  # USD per million tokens: a cent a token
MSG: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CLOUD_KEY", "sk-cloud-0123456789")


def cloud_entry(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "name": "cloud",
        "url": fake.url,
        "type": "openai",
        "api_key_env": "TEST_CLOUD_KEY",
        "priority": 1,  # preferred over the local box while the budget allows
        "prices": {"cloud-only": CENT, "shared": CENT},
        **extra,
    }


def sections(tmp_path: Path, **budget: Any) -> dict[str, Any]:
    return {
        "budget": {"monthly_limit": 1.0, "soft_limit_percent": 50, **budget},
        "storage": {"path": str(tmp_path / "nexus.db")},
    }


@asynccontextmanager
async def lab(tmp_path: Path, **budget: Any) -> AsyncIterator[tuple[Nexus, FakeVLLM, FakeOpenAI]]:
    async with (
        FakeVLLM([FakeModel("shared")]) as box,
        FakeOpenAI([FakeModel("cloud-only"), FakeModel("shared")]) as cloud,
    ):
        backends = [backend_entry(box, "box", "vllm", zone="open"), cloud_entry(cloud)]
        async with running_nexus(tmp_path, backends, **sections(tmp_path, **budget)) as nexus:
            yield nexus, box, cloud


async def ask(nexus: Nexus, model: str = "cloud-only", **extra: Any) -> Any:
    return await nexus.client.chat.completions.with_raw_response.create(
        model=model, messages=MSG, **extra
    )


def cost_of(reply: Any) -> float:
    usage = reply.parse().usage
    return (usage.prompt_tokens + usage.completion_tokens) / 100


async def spend_past(nexus: Nexus, status: str) -> list[float]:
    """Cloud requests until the budget reaches ``status`` (for the hard limit: until the
    cloud is refused, which may come a request before, when that request would cross it);
    their costs."""
    costs = []
    for _ in range(20):
        try:
            reply = await ask(nexus, extra_headers={"X-Nexus-Queue-Timeout": "0.2"})
        except openai.APIStatusError:
            if status == "hard-limit":
                return costs
            raise
        costs.append(cost_of(reply))
        nexus.state.recorder.flush()
        if nexus.state.budget and nexus.state.budget.status() == status:
            return costs
    raise AssertionError(f"never reached {status}")


async def test_soft_limit_prefers_local_and_the_hard_limit_keeps_cloud_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with lab(tmp_path) as (nexus, _, _):
        reply = await ask(nexus, "shared")
        assert reply.headers["x-nexus-backend"] == "cloud"  # normal: the admin's priority
        assert reply.headers["x-nexus-budget-status"] == "normal"
        before = float(reply.headers["x-nexus-budget-remaining"]) - cost_of(reply)
        costs = await spend_past(nexus, "soft-limit")
        reply = await ask(nexus, "shared")
        assert reply.headers["x-nexus-backend"] == "box"  # soft: local preferred
        assert reply.headers["x-nexus-budget-status"] == "soft-limit"
        assert float(reply.headers["x-nexus-budget-remaining"]) == pytest.approx(
            before - sum(costs), abs=1e-4
        )
        assert (await ask(nexus)).headers["x-nexus-backend"] == "cloud"  # nothing local has it
        await spend_past(nexus, "hard-limit")
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(nexus)
        error = caught.value.response.json()["error"]
        assert caught.value.status_code == 503 and error["code"] == "no_healthy_backend"
        assert error["context"]["budget_status"] in ("soft-limit", "hard-limit")
        assert "monthly budget keeps cloud backends out" in error["message"]
        status = error["context"]["budget_status"]
        assert caught.value.response.headers["x-nexus-budget-status"] == status
        reply = await ask(nexus, "shared")
        assert reply.headers["x-nexus-backend"] == "box"
        warnings = [r.getMessage() for r in caplog.records if r.name == "nexus.budget"]
        assert len(warnings) == {"soft-limit": 1, "hard-limit": 2}[status]  # one per crossing
        # Visible: /v1/stats, /metrics, the CLI, the dashboard.
        _, stats, _ = await nexus.get("/v1/stats")
        budget = stats["budget"]
        assert budget["limit_usd"] == 1.0 and budget["spent_usd"] > 0.9
        assert budget["status"] == status
        assert budget["by_backend_model"][0]["backend"] == "cloud"
        async with aiohttp.ClientSession() as session:
            async with session.get(nexus.url + "/metrics") as resp:
                text = await resp.text()
        level = {"soft-limit": "1.0", "hard-limit": "2.0"}[status]
        assert f"nexus_budget_status {level}" in text and "nexus_budget_limit_usd 1.0" in text
        assert 'nexus_cost_usd_total{backend="cloud"' in text
        code, out, _ = await nexus_cli("budget", "--url", nexus.url)
        assert code == 0 and f"Status: {status}" in out and "cloud-only" in out
        _, snap, _ = await nexus.get("/dashboard.json")
        assert snap["budget"]["status"] == status


async def test_reject_answers_429_until_the_cycle_resets(tmp_path: Path) -> None:
    async with lab(tmp_path, hard_limit_action="reject", billing_cycle_day=20) as (nexus, _, _):
        budget = nexus.state.budget
        assert budget is not None
        budget.clock = lambda: datetime(2027, 1, 19, 23, 0, tzinfo=UTC)  # an hour to the reset
        budget.cycle_start, budget.cycle_end = (
            datetime(2026, 12, 20, tzinfo=UTC),
            datetime(2027, 1, 20, tzinfo=UTC),
        )
        await spend_past(nexus, "hard-limit")
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(nexus)
        assert caught.value.response.json()["error"]["code"] == "budget_exceeded"
        assert caught.value.response.headers["retry-after"] == "3600"
        assert (await ask(nexus, "shared")).headers["x-nexus-backend"] == "box"
        # The new cycle: the cloud serves again.
        budget.clock = lambda: datetime(2027, 1, 20, 0, 0, 1, tzinfo=UTC)
        reply = await ask(nexus)
        assert reply.headers["x-nexus-backend"] == "cloud"
        assert reply.headers["x-nexus-budget-status"] == "normal"


async def test_queue_makes_cloud_bound_requests_wait_for_local_capacity(tmp_path: Path) -> None:
    async with lab(tmp_path, hard_limit_action="queue") as (nexus, _, _):
        await spend_past(nexus, "hard-limit")
        started = time.perf_counter()
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(nexus, extra_headers={"X-Nexus-Queue-Timeout": "0.3"})
        assert caught.value.response.json()["error"]["code"] == "queue_timeout"
        assert time.perf_counter() - started >= 0.3  # it waited
        assert (await ask(nexus, "shared")).headers["x-nexus-backend"] == "box"


async def test_a_request_that_would_cross_the_limit_is_over_it(tmp_path: Path) -> None:
    async with lab(tmp_path, soft_limit_percent=100) as (nexus, _, cloud):
        await ask(nexus, max_tokens=10)  # ~22 tokens: 0.22 of 1.00
        served = len(cloud.chat_requests)
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(nexus, max_tokens=500)  # could cost up to $5: more than is left
        assert "would cross the monthly limit" in caught.value.response.json()["error"]["message"]
        assert len(cloud.chat_requests) == served  # never sent
        assert (await ask(nexus, max_tokens=10)).headers["x-nexus-backend"] == "cloud"


async def test_the_tokenizer_loads_once_spend_nears_the_limit_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encoding costs 40-80 MB and ~0.5 s to load, and exact counts only decide near the
    limit: it is loaded (in a thread, for the configured cloud types only) once spend passes
    the soft limit, never while a budget is far from it."""
    asked: list[Any] = []
    monkeypatch.setattr(tokens, "preload", lambda providers=None: asked.append(providers))
    async with lab(tmp_path) as (nexus, _, _):
        reply = await ask(nexus)
        assert reply.headers["x-nexus-budget-status"] == "normal"
        await asyncio.sleep(0.2)  # room for a start-up preload, were there one
        assert asked == []
        await spend_past(nexus, "soft-limit")
        await wait_until(lambda: asked, what="the tokenizer preloaded")
        await ask(nexus, "shared")
        await asyncio.sleep(0.1)
    assert asked == [["openai"]]  # once


async def test_without_a_budget_nothing_is_stored_or_tokenized(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("shared")]) as box:
        storage = {"path": str(tmp_path / "nexus.db")}
        async with running_nexus(
            tmp_path, [backend_entry(box, "box", "vllm")], storage=storage
        ) as (nexus):
            counted = dict(tokens.COUNTED)
            reply = await ask(nexus, "shared")
            assert "x-nexus-budget-status" not in reply.headers
            assert counted == tokens.COUNTED
            _, stats, _ = await nexus.get("/v1/stats")
            assert stats["budget"] is None
        assert not (tmp_path / "nexus.db").exists()


async def test_spend_survives_a_restart_of_nexus_serve(tmp_path: Path) -> None:
    async with FakeOpenAI([FakeModel("cloud-only")]) as cloud:
        config = write_config(tmp_path, [cloud_entry(cloud)], **sections(tmp_path))
        env = {"TEST_CLOUD_KEY": "sk-cloud-0123456789"}
        total = 0.0
        async with spawn_nexus(config, env=env) as first:
            await first.wait_healthy()
            client = openai.AsyncOpenAI(base_url=first.url + "/v1", api_key="x", max_retries=0)
            for _ in range(2):
                reply = await client.chat.completions.with_raw_response.create(
                    model="cloud-only", messages=MSG
                )
                total += cost_of(reply)
            await client.close()
        async with spawn_nexus(config, env=env) as second:
            async with aiohttp.ClientSession() as session:
                async with session.get(second.url + "/v1/stats") as resp:
                    stats = await resp.json()
        assert stats["budget"]["spent_usd"] == pytest.approx(total, abs=1e-6)


async def test_kill_9_loses_at_most_the_last_second_of_spend(tmp_path: Path) -> None:
    async with FakeOpenAI([FakeModel("cloud-only")]) as cloud:
        sections_ = sections(tmp_path)
        sections_["budget"]["monthly_limit"] = 1000.0
        config = write_config(tmp_path, [cloud_entry(cloud)], **sections_)
        env = {"TEST_CLOUD_KEY": "sk-cloud-0123456789"}
        answered: list[tuple[float, float]] = []  # (when, cost)
        async with spawn_nexus(config, env=env) as nexus:
            await nexus.wait_healthy()
            client = openai.AsyncOpenAI(base_url=nexus.url + "/v1", api_key="x", max_retries=0)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                reply = await client.chat.completions.with_raw_response.create(
                    model="cloud-only", messages=MSG
                )
                answered.append((time.monotonic(), cost_of(reply)))
            killed = time.monotonic()
            os.kill(nexus.proc.pid, signal.SIGKILL)
            await nexus.proc.wait()
            await client.close()
        db = sqlite3.connect(tmp_path / "nexus.db")
        stored = db.execute("SELECT coalesce(sum(cost_usd), 0) FROM spend").fetchone()[0]
        db.close()
        lost = sum(cost for _, cost in answered) - stored
        assert lost >= -1e-9  # never more than was spent
        # What was answered before the last flush interval (and a little slack) is stored.
        safe = sum(cost for when, cost in answered if when < killed - 1.0 - 0.25)
        assert stored >= safe - 1e-9, (stored, safe, len(answered))
        assert len(answered) > 10
        await asyncio.sleep(0)


async def test_a_corrupt_store_stops_nexus_serve_with_one_line(tmp_path: Path) -> None:
    async with FakeOpenAI([FakeModel("cloud-only")]) as cloud:
        config = write_config(tmp_path, [cloud_entry(cloud)], **sections(tmp_path))
        (tmp_path / "nexus.db").write_bytes(b"not a database " * 1000)
        code, _, err = await nexus_cli(
            "serve", "-c", str(config), env={"TEST_CLOUD_KEY": "sk-cloud-0123456789"}
        )
        assert code != 0
        errors = [line for line in err.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "not a SQLite database" in errors[0], err
        assert "Traceback" not in err


async def test_a_cloud_stream_cut_before_its_usage_is_costed_from_counted_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.request")
    model = "gpt-4o-mini"  # a model Nexus has a tokenizer for: its prompt is counted
    messages: list[Any] = [{"role": "user", "content": "hello world " * 50}]
    async with FakeOpenAI([FakeModel(model)]) as cloud:
        entry = cloud_entry(cloud, prices={model: CENT})
        lab = sections(tmp_path, monthly_limit=100.0)
        async with running_nexus(tmp_path, [entry], **lab) as nexus:
            cloud.chat_behavior, cloud.cut_after = Behavior.CUT_STREAM, 2  # deltas, no usage
            relayed = ""
            with pytest.raises(openai.APIError, match="failed mid-stream"):  # the cut
                stream = await nexus.client.chat.completions.create(
                    model=model, messages=messages, stream=True
                )
                async for chunk in stream:
                    assert chunk.usage is None
                    relayed += "".join(c.delta.content or "" for c in chunk.choices)
            assert relayed  # some text came through before the cut
            assert cloud.chat_requests[0].json["stream_options"] == {"include_usage": True}
            nexus.state.recorder.flush()
            prompt = tokens.count_chat({"messages": messages}, provider="openai", model=model)
            assert prompt.method == "exact"
            assert prompt.tokens < tokens.estimate(len("hello world " * 50))  # not its size
            counted = (prompt.tokens + tokens.estimate(len(relayed))) / 100  # a cent a token
            lines = [r.request.to_dict() for r in caplog.records if hasattr(r, "request")]
            assert len(lines) == 1
            line = lines[0]
            assert line["cost_flag"] == "estimated" and line["tokens_prompt"] is None
            assert line["cost_usd"] == pytest.approx(counted)
            budget = nexus.state.budget
            assert budget is not None and budget.spent == pytest.approx(counted)
            text = nexus.state.metrics.exposition().decode()
            assert f'nexus_cost_usd_total{{backend="cloud",model="{model}"}} {counted}' in text


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def next_cycle_start(now: datetime, day: int) -> datetime:
    """The next 00:00 UTC on ``day`` of a month (day <= 28 here, so every month has it)."""
    if now.day < day:
        return datetime(now.year, now.month, day, tzinfo=UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, day, tzinfo=UTC)


async def test_the_budget_is_shown_by_the_cli_metrics_and_stats_of_nexus_serve(
    tmp_path: Path,
) -> None:
    async with FakeOpenAI([FakeModel("cloud-only")]) as cloud:
        budget = {"billing_cycle_day": 15, "monthly_limit": 2.0}
        config = write_config(tmp_path, [cloud_entry(cloud)], **sections(tmp_path, **budget))
        env = {"TEST_CLOUD_KEY": "sk-cloud-0123456789"}
        async with spawn_nexus(config, env=env) as nexus:
            await nexus.wait_healthy()
            client = openai.AsyncOpenAI(base_url=nexus.url + "/v1", api_key="x", max_retries=0)
            spent, status = 0.0, "normal"
            while status == "normal":  # past the soft limit (50 %): a status other than 0
                reply = await client.chat.completions.with_raw_response.create(
                    model="cloud-only", messages=MSG
                )
                spent += cost_of(reply)
                status = reply.headers["x-nexus-budget-status"]
            await client.close()
            assert status == "soft-limit" and 1.0 <= spent < 2.0
            now = datetime.now(UTC)
            async with aiohttp.ClientSession() as session:
                async with session.get(nexus.url + "/v1/stats") as resp:
                    stats = (await resp.json())["budget"]
                async with session.get(nexus.url + "/metrics") as resp:
                    metrics = metric_values(await resp.text())
            code, out, err = await nexus_cli("budget", "--json", "--url", nexus.url)
        assert code == 0, err
        shown = json.loads(out)
        assert shown == stats  # the CLI shows what the server says, all of it
        assert stats["spent_usd"] == pytest.approx(spent, abs=1e-6)
        assert stats["remaining_usd"] == pytest.approx(2.0 - spent, abs=1e-6)
        assert stats["status"] == "soft-limit" and stats["limit_usd"] == 2.0
        assert datetime.fromisoformat(stats["cycle_end"]) == next_cycle_start(now, 15)
        [row] = stats["by_backend_model"]
        assert row["backend"] == "cloud" and row["model"] == "cloud-only"
        assert row["cost_usd"] == pytest.approx(spent, abs=1e-6)
        assert metrics[("nexus_budget_spent_usd", ())] == pytest.approx(spent, abs=1e-6)
        assert metrics[("nexus_budget_limit_usd", ())] == 2.0
        assert metrics[("nexus_budget_status", ())] == 1.0  # soft-limit
        labels = (("backend", "cloud"), ("model", "cloud-only"))
        assert metrics[("nexus_cost_usd_total", labels)] == pytest.approx(spent, abs=1e-6)


async def reach_the_hard_limit(nexus: Nexus, cloud: FakeOpenAI) -> None:
    """One cloud request: estimated at its prompt (~$0.08, under the $0.15 limit, so sent),
    it costs its usage ($0.16: 4 prompt and 12 completion tokens): spent is past the limit."""
    assert (await ask(nexus)).headers["x-nexus-backend"] == "cloud"
    nexus.state.recorder.flush()
    budget = nexus.state.budget
    assert budget is not None and budget.status() == "hard-limit" and budget.spent >= 0.15
    assert len(cloud.chat_requests) == 1


async def test_queue_at_the_hard_limit_serves_locally_once_a_local_backend_can(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path, hard_limit_action="queue", monthly_limit=0.15) as (nexus, box, cloud):
        await reach_the_hard_limit(nexus, cloud)
        waiting = asyncio.create_task(ask(nexus))  # "cloud-only": nothing local has it (yet)
        assert nexus.state.queue is not None
        await wait_until(lambda: len(nexus.state.queue or ()) == 1, what="the request queued")
        assert not waiting.done()
        box.models.append(FakeModel("cloud-only"))  # the local box gets the model...
        backend = nexus.state.registry.find("box")
        assert backend is not None
        await nexus.state.health.check(backend)  # ...and Nexus sees it: the waiter is served
        reply = await asyncio.wait_for(waiting, 10)
        assert reply.headers["x-nexus-backend"] == "box"
        assert int(reply.headers["x-nexus-queue-wait-ms"]) >= 0
        assert reply.headers["x-nexus-budget-status"] == "hard-limit"
        assert len(cloud.chat_requests) == 1  # the cloud never saw it
        assert [r.json["model"] for r in box.chat_requests] == ["cloud-only"]


async def test_local_only_at_the_hard_limit_keeps_the_cloud_out(tmp_path: Path) -> None:
    async with lab(tmp_path, hard_limit_action="local-only", monthly_limit=0.15) as lab_:
        nexus, _, cloud = lab_
        await reach_the_hard_limit(nexus, cloud)
        with pytest.raises(openai.APIStatusError) as caught:
            await asyncio.wait_for(ask(nexus), 5)  # answered at once: no waiting
        error = caught.value.response.json()["error"]
        assert caught.value.status_code == 503 and error["code"] == "no_healthy_backend"
        assert error["context"]["budget_status"] == "hard-limit"
        assert "the monthly limit ($0.15) is reached" in error["message"]  # not "would cross"
        assert caught.value.response.headers["x-nexus-budget-status"] == "hard-limit"
        reply = await ask(nexus, "shared")  # the cloud is preferred (priority 1), but spent
        assert reply.headers["x-nexus-backend"] == "box"
        assert len(cloud.chat_requests) == 1


async def test_a_locked_store_stops_nexus_serve_with_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    holder = sqlite3.connect(path, isolation_level=None)  # another process's writer, in effect
    try:
        holder.execute("CREATE TABLE other (x)")  # a rollback-journal file: no one reads it
        holder.execute("BEGIN EXCLUSIVE")  # while it holds this lock
        async with FakeOpenAI([FakeModel("cloud-only")]) as cloud:
            config = write_config(tmp_path, [cloud_entry(cloud)], **sections(tmp_path))
            started = time.monotonic()
            code, _, err = await nexus_cli(  # bounded: 30 s
                "serve", "-c", str(config), env={"TEST_CLOUD_KEY": "sk-cloud-0123456789"}
            )
            waited = time.monotonic() - started
    finally:
        holder.close()
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert str(path) in errors[0] and "locked by another process" in errors[0]
    assert "Traceback" not in err
    assert waited >= BUSY_TIMEOUT_SECONDS  # it waited for the lock as long as it should
