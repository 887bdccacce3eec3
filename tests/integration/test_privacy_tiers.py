"""Privacy zones, capability tiers and conversation affinity (F13) through ``nexus serve``'s
wiring, with the official ``openai`` SDK as the client.

The local backends are fakes of vLLM (restricted by default); the cloud is a fake of the
OpenAI API configured as an ``openai`` backend (open by default, with its own key).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes import Behavior, FakeModel, FakeOpenAI, FakeVLLM
from tests.helpers import Nexus, backend_entry, nexus_cli, running_nexus, wait_until

MODEL = "llama3:8b"
HISTORY: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "PRIVATE-first-question"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "files", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "PRIVATE-tool-result"},
    {"role": "assistant", "content": "PRIVATE-earlier-answer"},
    {"role": "user", "content": "And the capital of France?"},
]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CLOUD_KEY", "sk-cloud-0123456789")


def cloud_entry(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "name": "cloud",
        "url": fake.url,
        "type": "openai",
        "api_key_env": "TEST_CLOUD_KEY",
        **extra,
    }


@asynccontextmanager
async def box_and_cloud(
    tmp_path: Path, box_extra: dict[str, Any] | None = None, **sections: Any
) -> AsyncIterator[tuple[Nexus, FakeVLLM, FakeOpenAI]]:
    """One local box and one cloud, both serving MODEL (and the cloud gpt-4o too)."""
    async with (
        FakeVLLM([FakeModel(MODEL)]) as box,
        FakeOpenAI([FakeModel(MODEL), FakeModel("gpt-4o")]) as cloud,
    ):
        backends = [backend_entry(box, "box", "vllm", **(box_extra or {})), cloud_entry(cloud)]
        async with running_nexus(tmp_path, backends, **sections) as nexus:
            yield nexus, box, cloud


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert isinstance(body, dict)
    error = body["error"]
    assert isinstance(error, dict)
    return error


async def metric(nexus: Nexus, line_start: str) -> float:
    nexus.state.recorder.flush()
    async with aiohttp.ClientSession() as session, session.get(nexus.url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- zones ---------------------------------------------------------------------------------


async def test_zones_and_tiers_are_shown_everywhere(tmp_path: Path) -> None:
    # Zone values in any case (the docs say lowercase; "Restricted" must not be a trap).
    async with box_and_cloud(tmp_path, {"zone": "Restricted", "tier": 4}) as (nexus, _, _):
        _, listing, _ = await nexus.get("/admin/backends")
        shown = {b["name"]: (b["zone"], b["tier"]) for b in listing["backends"]}
        assert shown == {"box": ("restricted", 4), "cloud": ("open", 3)}
        _, models, _ = await nexus.get("/v1/models")
        entry = next(m for m in models["data"] if m["id"] == MODEL)
        assert (entry["zone"], entry["tier"]) == ("restricted", 3)
        assert {b["name"]: b["zone"] for b in entry["backends"]} == {
            "box": "restricted",
            "cloud": "open",
        }
        _, dashboard, _ = await nexus.get("/dashboard.json")
        assert {b["name"]: b["zone"] for b in dashboard["backends"]} == {
            "box": "restricted",
            "cloud": "open",
        }
        code, out, _ = await nexus_cli("backends", "--url", nexus.url)
        assert code == 0
        cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
        rows = {row[0]: row for row in cells if row}
        assert rows["Name"][3:5] == ["Zone", "Tier"]
        assert rows["box"][3:5] == ["restricted", "4"]
        assert rows["cloud"][3:5] == ["open", "3"]


async def test_backends_added_at_run_time_have_a_zone_and_a_tier(tmp_path: Path) -> None:
    async with (
        box_and_cloud(tmp_path) as (nexus, _, _),
        FakeOpenAI([FakeModel("gpt-4o")]) as cloud,
        FakeVLLM([FakeModel(MODEL)]) as box,
    ):
        added = {"url": cloud.url, "name": "cloud-2", "type": "openai"}
        status, body, _ = await nexus.post("/admin/backends", added)
        assert status == 400 and "api_key_env" in body["error"]["message"]
        added["api_key_env"] = "TEST_CLOUD_KEY"
        status, body, _ = await nexus.post("/admin/backends", {**added, "tier": 9})
        assert status == 400 and "'tier'" in body["error"]["message"]
        status, body, _ = await nexus.post("/admin/backends", {**added, "tier": 5})
        assert status == 201, body
        assert (body["zone"], body["tier"], body["status"]) == ("open", 5, "healthy")
        local = {"url": box.url, "name": "box-2", "type": "vllm", "zone": "Open"}
        status, body, _ = await nexus.post("/admin/backends", local)
        assert status == 201 and (body["zone"], body["tier"]) == ("open", 3)


async def test_a_restricted_request_never_reaches_the_cloud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nexus.routing")
    async with box_and_cloud(tmp_path) as (nexus, box, cloud):
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HISTORY
        )
        assert reply.headers["x-nexus-privacy-zone"] == "restricted"
        assert reply.headers["x-nexus-backend"] == "box"
        assert "zone restricted for llama3:8b: served by restricted backend(s) box" in caplog.text
        await box.stop()  # the box dies; the cloud serves the same model, and is idle
        for _ in range(2):  # just died (tried, failed), then known down (panic, failed)
            with pytest.raises(openai.APIStatusError) as caught:
                await nexus.client.chat.completions.create(model=MODEL, messages=HISTORY)
            assert caught.value.status_code == 503
            assert caught.value.response.headers["retry-after"]
            error = error_of(caught.value)
            assert error["context"]["privacy_zone"] == "restricted"
            assert error["context"]["required_tier"] == 3
            assert [b["name"] for b in error["context"]["available_backends"]] == ["box"]
            assert "box" in error["message"]
            assert not cloud.chat_requests
        blocked = 'nexus_privacy_blocks_total{action="blocked",zone="restricted"}'
        assert await metric(nexus, blocked) >= 2


async def test_the_zone_is_decided_after_aliases(tmp_path: Path) -> None:
    """ "assistant" is served by no backend: it is an alias of a model only the restricted box
    has, with an open cloud model as its fallback. The request is restricted, like a request
    for the model itself: the fallback on the cloud never answers it."""
    async with (
        FakeVLLM([FakeModel("secret-model")]) as box,
        FakeOpenAI([FakeModel("gpt-4o")]) as cloud,
    ):
        backends = [backend_entry(box, "box", "vllm"), cloud_entry(cloud)]
        routing = {"aliases": {"assistant": "secret-model"}, "fallbacks": {"assistant": ["gpt-4o"]}}
        async with running_nexus(tmp_path, backends, routing=routing) as nexus:
            reply = await nexus.client.chat.completions.with_raw_response.create(
                model="assistant", messages=HISTORY
            )
            assert reply.headers["x-nexus-privacy-zone"] == "restricted"
            assert reply.headers["x-nexus-backend"] == "box"
            assert box.chat_requests[-1].json["model"] == "secret-model"
            await box.stop()  # the only restricted holder is gone: the cloud fallback is idle
            with pytest.raises(openai.APIStatusError) as caught:
                await nexus.client.chat.completions.create(model="assistant", messages=HISTORY)
            assert caught.value.status_code == 503
            assert error_of(caught.value)["context"]["privacy_zone"] == "restricted"
            assert not cloud.chat_requests
            # (The cloud is reachable: the same fallback serves an open request.)
            reply = await nexus.client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=HISTORY
            )
            assert reply.headers["x-nexus-privacy-zone"] == "open"
            assert len(cloud.chat_requests) == 1


async def test_declared_capability_scores_are_shown(tmp_path: Path) -> None:
    scores = {"reasoning": 4, "coding": 5, "context_window": 32768}
    async with box_and_cloud(tmp_path, {"capabilities": {**scores, "vision": 0}}) as (
        nexus,
        _,
        _,
    ):
        _, listing, _ = await nexus.get("/admin/backends")
        shown = {b["name"]: b["scores"] for b in listing["backends"]}
        assert shown == {"box": scores, "cloud": {}}  # 0: not declared, not shown
        code, out, err = await nexus_cli("backends", "--json", "--url", nexus.url)
        assert code == 0, err
        listed = json.loads(out)
        rows = listed["backends"] if isinstance(listed, dict) else listed
        assert {b["name"]: b["scores"] for b in rows} == {"box": scores, "cloud": {}}


async def test_fresh_context_overflow_carries_no_history(tmp_path: Path) -> None:
    overflow = {"privacy": {"cross_zone_overflow": "fresh-context"}}
    async with box_and_cloud(tmp_path, routing=overflow) as (nexus, box, cloud):
        await box.stop()
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HISTORY
        )
        headers = reply.headers
        assert headers["x-nexus-backend"] == "cloud"
        assert headers["x-nexus-privacy-zone"] == "open"
        assert headers["x-nexus-route-reason"] == "capacity-overflow"
        assert headers["x-nexus-context-stripped"] == "true"
        sent = cloud.chat_requests[-1].json
        assert sent["messages"] == [HISTORY[0], HISTORY[-1]]
        assert "PRIVATE" not in str(cloud.chat_requests[-1].body)
        stripped = 'nexus_privacy_blocks_total{action="stripped",zone="restricted"}'
        assert await metric(nexus, stripped) == 1
        # Embeddings and prompts are all content: they never overflow.
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.client.completions.create(model=MODEL, prompt="PRIVATE")
        assert caught.value.status_code == 503
        assert not [r for r in cloud.requests if r.path == "/v1/completions"]


async def test_a_full_restricted_backend_overflows_only_when_allowed(tmp_path: Path) -> None:
    for mode, expected in (("block", "box"), ("fresh-context", "cloud")):
        routing = {"privacy": {"cross_zone_overflow": mode}}
        async with box_and_cloud(tmp_path, {"max_concurrent": 1}, routing=routing) as (
            nexus,
            box,
            cloud,
        ):
            box.chat_behavior, box.delay = Behavior.SLOW, 0.5
            first = asyncio.create_task(
                nexus.client.chat.completions.create(model=MODEL, messages=HISTORY)
            )
            await wait_until(lambda: nexus.pending()["box"] == 1, what="the box busy")
            second = await nexus.client.chat.completions.with_raw_response.create(
                model=MODEL, messages=HISTORY
            )
            await first
            assert second.headers["x-nexus-backend"] == expected, mode
            if expected == "cloud":
                assert second.headers["x-nexus-route-reason"] == "capacity-overflow"
                assert cloud.chat_requests[-1].json["messages"] == [HISTORY[0], HISTORY[-1]]
            else:
                assert not cloud.chat_requests


async def test_an_open_request_never_overflows_into_a_restricted_backend(tmp_path: Path) -> None:
    fallbacks = {"fallbacks": {"gpt-4o": [MODEL]}}
    async with box_and_cloud(tmp_path, routing=fallbacks) as (nexus, box, cloud):
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HISTORY
        )
        assert reply.headers["x-nexus-privacy-zone"] == "open"
        cloud.chat_behavior = Behavior.ERROR_502
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.client.chat.completions.create(model="gpt-4o", messages=HISTORY)
        assert caught.value.status_code == 503
        assert error_of(caught.value)["context"]["privacy_zone"] == "open"
        assert not box.chat_requests


# -- tiers ---------------------------------------------------------------------------------


@asynccontextmanager
async def tiered(
    tmp_path: Path, **routing: Any
) -> AsyncIterator[tuple[Nexus, FakeVLLM, FakeVLLM, FakeVLLM]]:
    """big: llama3:70b (tier 4); small: llama3:8b (tier 2); mid: qwen:32b (tier 4, a 2k
    context) and llava:34b (tier 5, 32k)."""
    async with (
        FakeVLLM([FakeModel("llama3:70b", context_length=32768)]) as big,
        FakeVLLM([FakeModel("llama3:8b", context_length=32768)]) as small,
        FakeVLLM(
            [
                FakeModel("qwen:32b", context_length=2048),
                FakeModel("llava:34b", context_length=32768),
            ]
        ) as mid,
    ):
        backends = [
            backend_entry(big, "big", "vllm", tier=4, models=["llama3:70b"]),
            backend_entry(small, "small", "vllm", tier=2, models=["llama3:8b"]),
            backend_entry(mid, "mid", "vllm", tier=4, model_tiers={"llava:34b": 5}),
        ]
        async with running_nexus(tmp_path, backends, routing=routing) as nexus:
            yield nexus, big, small, mid


async def test_a_fallback_never_answers_with_a_lower_tier(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain = {"llama3:70b": ["llama3:8b", "qwen:32b"]}
    async with tiered(tmp_path, fallbacks=chain) as (nexus, big, small, mid):
        assert "llama3:8b (tier 2) is below llama3:70b (tier 4)" in caplog.text  # at start-up
        big.chat_behavior = Behavior.ERROR_503
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model="llama3:70b", messages=HISTORY
        )
        assert reply.headers["x-nexus-fallback-model"] == "qwen:32b"
        assert reply.headers["x-nexus-backend"] == "mid"
        assert not small.chat_requests
        await mid.stop()
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.client.chat.completions.create(model="llama3:70b", messages=HISTORY)
        assert caught.value.status_code in (502, 503)
        assert not small.chat_requests


async def test_strict_means_the_requested_model_only(tmp_path: Path) -> None:
    async with tiered(tmp_path, fallbacks={"llama3:70b": ["qwen:32b"]}) as (nexus, big, _, mid):
        await big.stop()
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.client.chat.completions.create(
                model="llama3:70b", messages=HISTORY, extra_headers={"X-Nexus-Strict": "true"}
            )
        assert caught.value.status_code in (502, 503)
        assert not mid.chat_requests
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model="llama3:70b", messages=HISTORY
        )  # without the header, the configured fallback answers
        assert reply.headers["x-nexus-fallback-model"] == "qwen:32b"


async def test_flexible_takes_a_model_of_the_same_tier_or_higher(tmp_path: Path) -> None:
    async with tiered(tmp_path) as (nexus, big, small, _):
        big.chat_behavior = Behavior.ERROR_503
        with pytest.raises(openai.APIStatusError) as caught:  # no fallbacks configured
            await nexus.client.chat.completions.create(model="llama3:70b", messages=HISTORY)
        assert caught.value.status_code == 502
        flexible = {"X-Nexus-Flexible": "true"}
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model="llama3:70b", messages=HISTORY, extra_headers=flexible
        )
        assert reply.headers["x-nexus-fallback-model"] == "qwen:32b"  # tier 4: the closest
        assert reply.parse().model == "llama3:70b"
        long = [{"role": "user", "content": "word " * 4000}]  # beyond qwen's context
        reply = await nexus.client.chat.completions.with_raw_response.create(
            model="llama3:70b", messages=long, extra_headers=flexible
        )
        assert reply.headers["x-nexus-fallback-model"] == "llava:34b"  # the one it fits
        assert not small.chat_requests  # tier 2: never a substitute


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"X-Nexus-Strict": "true", "X-Nexus-Flexible": "true"}, "X-Nexus-Strict"),
        ({"X-Nexus-Flexible": "yes"}, "X-Nexus-Flexible"),
        ({"X-Nexus-Strict": "1"}, "X-Nexus-Strict"),
    ],
)
async def test_bad_routing_headers_are_a_400_naming_the_header(
    tmp_path: Path, headers: dict[str, str], named: str
) -> None:
    async with tiered(tmp_path) as (nexus, big, _, _):
        with pytest.raises(openai.BadRequestError) as caught:
            await nexus.client.chat.completions.create(
                model="llama3:70b", messages=HISTORY, extra_headers=headers
            )
        assert named in error_of(caught.value)["message"]
        assert not big.chat_requests


async def test_a_503_carries_the_required_tier(tmp_path: Path) -> None:
    async with tiered(tmp_path) as (nexus, big, _, _):
        big.health_behavior = big.chat_behavior = Behavior.ERROR_503
        backend = nexus.state.registry.find("big")
        assert backend is not None
        for _ in range(nexus.state.config.health_check.failure_threshold):
            await nexus.state.health.check(backend)  # known down: a 503, not a 502
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.client.chat.completions.create(
                model="llama3:70b", messages=HISTORY, extra_headers={"X-Nexus-Strict": "true"}
            )
        context = error_of(caught.value)["context"]
        assert context["required_tier"] == 4 and context["privacy_zone"] == "restricted"


# -- conversation affinity -----------------------------------------------------------------


def turns(n: int) -> list[list[Any]]:
    """The first and second turn of conversation ``n``."""
    first = [{"role": "system", "content": "terse"}, {"role": "user", "content": f"topic {n}"}]
    return [first, [*first, {"role": "assistant", "content": "ok"}, HISTORY[-1]]]


@asynccontextmanager
async def twins(
    tmp_path: Path, zone: str = "restricted", **routing: Any
) -> AsyncIterator[tuple[Nexus, FakeVLLM, FakeVLLM]]:
    async with FakeVLLM([FakeModel(MODEL)]) as one, FakeVLLM([FakeModel(MODEL)]) as two:
        backends = [
            backend_entry(one, "one", "vllm", zone=zone, max_concurrent=1),
            backend_entry(two, "two", "vllm", zone=zone, max_concurrent=1),
        ]
        async with running_nexus(tmp_path, backends, routing=routing) as nexus:
            yield nexus, one, two


async def served(nexus: Nexus, messages: list[Any], **extra: Any) -> tuple[str, str]:
    reply = await nexus.client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, **extra
    )
    return reply.headers["x-nexus-backend"], reply.headers["x-nexus-route-reason"]


async def test_a_conversation_sticks_to_its_backend(tmp_path: Path) -> None:
    async with twins(tmp_path) as (nexus, _, _):
        firsts = []
        for n in range(6):
            first, second = turns(n)
            backend, _ = await served(nexus, first)
            firsts.append(backend)
            assert await served(nexus, second) == (backend, "affinity")
        assert set(firsts) == {"one", "two"}  # first turns are still balanced


async def test_affinity_off_balances_open_conversations_but_restricted_ones_stick(
    tmp_path: Path,
) -> None:
    async with twins(tmp_path, zone="open", affinity=False) as (nexus, _, _):
        pairs = [
            ((await served(nexus, first))[0], (await served(nexus, second))[0])
            for first, second in map(turns, range(6))
        ]
        assert any(a != b for a, b in pairs)
    async with twins(tmp_path, zone="restricted", affinity=False) as (nexus, _, _):
        for first, second in map(turns, range(4)):
            backend, _ = await served(nexus, first)
            assert await served(nexus, second) == (backend, "affinity")


async def test_session_header_and_user_field_name_a_conversation(tmp_path: Path) -> None:
    async with twins(tmp_path) as (nexus, _, _):
        session = {"extra_headers": {"X-Nexus-Session": "s-1"}}
        user = {"user": "alice"}
        msgs = [{"role": "user", "content": "q"}]
        by_session, _ = await served(nexus, msgs, **session)
        by_user, _ = await served(nexus, msgs, **user)
        for n in range(4):  # different content every time: only the name joins them
            msgs = [{"role": "user", "content": f"q{n}"}]
            assert await served(nexus, msgs, **session) == (by_session, "affinity")
            assert await served(nexus, msgs, **user) == (by_user, "affinity")


async def test_affinity_yields_to_a_down_or_full_backend(tmp_path: Path) -> None:
    async with twins(tmp_path) as (nexus, one, two):
        first, second = turns(0)
        backend, _ = await served(nexus, first)
        fakes = {"one": one, "two": two}
        other = "two" if backend == "one" else "one"
        # Full: a slow request holds its only slot; the next turn goes to the other one.
        fakes[backend].chat_behavior, fakes[backend].delay = Behavior.SLOW, 0.5
        busy = asyncio.create_task(served(nexus, second))  # sticks, and is slow
        await wait_until(lambda: nexus.pending()[backend] == 1, what="its backend busy")
        assert (await served(nexus, second))[0] == other
        assert await busy == (backend, "affinity")
        fakes[backend].chat_behavior = Behavior.OK
        # The turn answered last was the slow one: the conversation is back on its backend.
        assert await served(nexus, second) == (backend, "affinity")
        await fakes[backend].stop()  # down: the conversation moves on
        assert (await served(nexus, second))[0] == other
