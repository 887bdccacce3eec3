"""Cloud backends (F12) through Nexus, with the official ``openai`` SDK as the client and
fakes of the Anthropic and Gemini APIs (proven faithful by their own SDKs in
tests/unit/test_cloud_fakes.py) as the providers."""

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

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

ANTHROPIC_KEY = "sk-ant-secret-0123456789"
GOOGLE_KEY = "AIza-secret-0123456789"
CLIENT_KEY = "sk-client-9876543210"
MSG = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
    "hKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("TEST_GOOGLE_KEY", GOOGLE_KEY)


def anthropic_entry(fake: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {
        "name": "claude",
        "url": fake.url,
        "type": "anthropic",
        "api_key_env": "TEST_ANTHROPIC_KEY",
        **extra,
    }


def google_entry(fake: FakeGemini, **extra: Any) -> dict[str, Any]:
    return {
        "name": "gemini",
        "url": fake.url,
        "type": "google",
        "api_key_env": "TEST_GOOGLE_KEY",
        **extra,
    }


@asynccontextmanager
async def clouds(
    tmp_path: Path, **sections: Any
) -> AsyncIterator[tuple[Nexus, FakeAnthropic, FakeGemini]]:
    async with (
        FakeAnthropic(api_key=ANTHROPIC_KEY) as claude,
        FakeGemini(api_key=GOOGLE_KEY) as gemini,
    ):
        backends = [anthropic_entry(claude), google_entry(gemini)]
        async with running_nexus(tmp_path, backends, **sections) as nexus:
            nexus.client = nexus.client.with_options(api_key=CLIENT_KEY)
            yield nexus, claude, gemini


MODELS = ["claude-sonnet-4-5", "gemini-2.5-flash"]


@pytest.mark.parametrize("model", MODELS)
async def test_chat_and_usage_in_openai_shape(tmp_path: Path, model: str) -> None:
    async with clouds(tmp_path) as (nexus, claude, gemini):
        resp = await nexus.client.chat.completions.with_raw_response.create(
            model=model, messages=MSG
        )  # type: ignore[arg-type]
        reply = resp.parse()
        assert reply.object == "chat.completion" and reply.model == model
        assert "capital of France" in (reply.choices[0].message.content or "")
        assert reply.choices[0].finish_reason == "stop"
        assert (
            reply.usage is not None
            and reply.usage.prompt_tokens > 0
            and reply.usage.completion_tokens > 0
        )
        assert resp.headers["X-Nexus-Backend-Type"] == "cloud"
        assert resp.headers["X-Nexus-Privacy-Zone"] == "open"
        assert float(resp.headers["X-Nexus-Cost-Estimated"]) > 0
        fake = claude if model.startswith("claude") else gemini
        request = fake.requests[-1]
        assert CLIENT_KEY not in json.dumps(dict(request.headers))
        assert "key" not in request.query  # never in a URL


@pytest.mark.parametrize("model", MODELS)
async def test_streaming_text_usage_and_done(tmp_path: Path, model: str) -> None:
    async with clouds(tmp_path) as (nexus, _, _):
        stream = await nexus.client.chat.completions.create(
            model=model,
            messages=MSG,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        text, usage, finish = "", None, None
        async for chunk in stream:
            assert chunk.model == model
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert "capital of France" in text and finish == "stop"
        assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_round_trip(tmp_path: Path, model: str, stream: bool) -> None:
    async with clouds(tmp_path) as (nexus, _, _):
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
        if stream:
            calls: dict[int, dict[str, Any]] = {}
            finish = None
            async for chunk in await nexus.client.chat.completions.create(
                model=model,
                messages=messages,
                tools=TOOLS,
                stream=True,  # type: ignore[arg-type]
            ):
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    for delta in choice.delta.tool_calls or []:
                        call = calls.setdefault(
                            delta.index, {"id": "", "name": "", "arguments": ""}
                        )
                        call["id"] = delta.id or call["id"]
                        call["name"] = (delta.function and delta.function.name) or call["name"]
                        call["arguments"] += (delta.function and delta.function.arguments) or ""
            assert finish == "tool_calls" and len(calls) == 1
            call = calls[0]
        else:
            reply = await nexus.client.chat.completions.create(
                model=model, messages=messages, tools=TOOLS
            )  # type: ignore[arg-type]
            assert reply.choices[0].finish_reason == "tool_calls"
            tool_call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
            call = {
                "id": tool_call.id,
                "name": tool_call.function.name,
                "arguments": tool_call.function.arguments,
            }
        assert call["name"] == "get_weather" and "city" in json.loads(call["arguments"])
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"},
        ]
        answer = await nexus.client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS
        )  # type: ignore[arg-type]
        assert "Sunny, 21 C" in (answer.choices[0].message.content or "")


@pytest.mark.parametrize("model", MODELS)
async def test_images_reach_the_provider(tmp_path: Path, model: str) -> None:
    async with clouds(tmp_path) as (nexus, claude, gemini):
        content = [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG}},
        ]
        reply = await nexus.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}]
        )  # type: ignore[arg-type]
        assert "1 image" in (reply.choices[0].message.content or "")
        fake = claude if model.startswith("claude") else gemini
        assert fake.images


async def test_json_mode_goes_where_it_can_be_served(tmp_path: Path) -> None:
    async with clouds(tmp_path) as (nexus, claude, _):
        fmt = {"type": "json_object"}
        reply = await nexus.client.chat.completions.create(
            model="gemini-2.5-flash", messages=MSG, response_format=fmt
        )  # type: ignore[arg-type]
        json.loads(reply.choices[0].message.content or "")
        with pytest.raises(openai.BadRequestError) as caught:  # Claude has no JSON mode
            await nexus.client.chat.completions.create(
                model="claude-sonnet-4-5", messages=MSG, response_format=fmt
            )  # type: ignore[arg-type]
        assert "json_mode" in str(caught.value)
        assert not claude.message_requests


async def test_finish_reason_length(tmp_path: Path) -> None:
    async with clouds(tmp_path) as (nexus, _, _):
        for model in MODELS:
            reply = await nexus.client.chat.completions.create(
                model=model, messages=MSG, max_tokens=1
            )  # type: ignore[arg-type]
            assert reply.choices[0].finish_reason == "length", model


@pytest.mark.parametrize(
    ("status", "expected"), [(401, 502), (403, 502), (429, 429), (529, 503), (500, 502)]
)
async def test_provider_errors(tmp_path: Path, status: int, expected: int) -> None:
    async with clouds(tmp_path) as (nexus, claude, _):
        claude.error_status = status
        code, body, headers = await nexus.post(
            "/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": MSG}
        )
        assert code == expected, body
        assert set(body) == {"error"} and body["error"]["message"]
        if status in (401, 403):
            assert "API key rejected by Anthropic" in body["error"]["message"]
        if status in (429, 529):
            assert headers["Retry-After"]
        assert ANTHROPIC_KEY not in json.dumps(body)


async def test_a_declined_answer_finishes_with_content_filter(tmp_path: Path) -> None:
    """Anthropic's stop_reason "refusal" and Gemini's finishReason "SAFETY" are OpenAI's
    finish_reason "content_filter", streamed or not (the other reasons: the tests above)."""
    async with clouds(tmp_path) as (nexus, claude, gemini):
        claude.refuse = gemini.refuse = True
        for model in MODELS:
            reply = await nexus.client.chat.completions.create(model=model, messages=MSG)  # type: ignore[arg-type]
            assert reply.choices[0].finish_reason == "content_filter", model
            assert not reply.choices[0].message.content
            reasons = [
                chunk.choices[0].finish_reason
                async for chunk in await nexus.client.chat.completions.create(
                    model=model, messages=MSG, stream=True
                )  # type: ignore[arg-type]
                if chunk.choices and chunk.choices[0].finish_reason
            ]
            assert reasons == ["content_filter"], model


async def test_provider_error_mid_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    async with clouds(tmp_path) as (nexus, claude, gemini):
        claude.stream_error = 529
        gemini.stream_error = 503
        for model in MODELS:
            with pytest.raises(openai.APIError):
                async for _ in await nexus.client.chat.completions.create(
                    model=model, messages=MSG, stream=True
                ):  # type: ignore[arg-type]
                    pass
        assert nexus.pending() == {"claude": 0, "gemini": 0}
        for model in MODELS:  # on the wire: chunks, one error event, then [DONE]; nothing raw
            body = {"model": model, "messages": MSG, "stream": True}
            headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
            async with (
                aiohttp.ClientSession() as session,
                session.post(nexus.url + "/v1/chat/completions", json=body, headers=headers) as r,
            ):
                raw = await r.read()
            blocks = [b for b in raw.split(b"\n\n") if b]
            assert all(b.startswith(b"data: ") for b in blocks), raw[:300]
            assert blocks[-1] == b"data: [DONE]" and raw.count(b"[DONE]") == 1
            error = json.loads(blocks[-2][6:])["error"]
            assert error["code"] == "backend_error" and "mid-stream" in error["message"]
            assert b"event:" not in raw and b"overloaded_error" not in raw


async def test_failover_local_to_cloud_and_back(tmp_path: Path) -> None:
    async with (
        FakeVLLM([FakeModel("claude-sonnet-4-5")]) as local,
        FakeAnthropic(api_key=ANTHROPIC_KEY) as claude,
    ):
        # An open local box serving the same model: local first, the cloud when it fails.
        backends = [backend_entry(local, "local", "vllm", zone="open"), anthropic_entry(claude)]
        async with running_nexus(tmp_path, backends) as nexus:
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-5", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "local"
            local.chat_behavior = Behavior.ERROR_503
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-5", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "claude"
            assert resp.headers["X-Nexus-Backend-Type"] == "cloud"
            assert resp.headers["X-Nexus-Route-Reason"] == "capacity-overflow"
    async with (
        FakeVLLM([FakeModel("claude-sonnet-4-5")]) as local,
        FakeAnthropic(api_key=ANTHROPIC_KEY) as claude,
    ):
        # The cloud preferred (a better priority than the local box's), failing: local serves.
        backends = [
            backend_entry(local, "local", "vllm", zone="open"),
            anthropic_entry(claude, priority=1),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-5", messages=MSG
            )  # type: ignore[arg-type]
            # The local box is idle: the cloud answers by the admin's choice, not overflow.
            assert resp.headers["X-Nexus-Route-Reason"] == "best-score"
            claude.error_status = 500
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-5", messages=MSG
            )  # type: ignore[arg-type]
            assert resp.headers["X-Nexus-Backend"] == "local"
            assert len(claude.message_requests) == 2


async def test_a_restricted_local_model_never_overflows_to_the_cloud(tmp_path: Path) -> None:
    async with (
        FakeVLLM([FakeModel("claude-sonnet-4-5")]) as local,
        FakeAnthropic(api_key=ANTHROPIC_KEY) as claude,
    ):
        backends = [
            backend_entry(local, "local", "vllm"),
            anthropic_entry(claude),
        ]  # restricted by default
        async with running_nexus(tmp_path, backends) as nexus:
            await local.stop()
            code, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": MSG}
            )
            assert code in (502, 503) and not claude.message_requests
            assert body["error"]["code"] in ("backend_unreachable", "no_healthy_backend")


async def test_missing_key_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nexus")
    monkeypatch.delenv("TEST_ANTHROPIC_KEY")
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        async with running_nexus(tmp_path, [anthropic_entry(claude)]) as nexus:
            backend = nexus.state.registry.find("claude")
            assert backend is not None and backend.status.value == "unhealthy"
            assert backend.last_error == "environment variable TEST_ANTHROPIC_KEY is not set"
            assert claude.requests == []  # not even a probe: it could only be refused
    assert any("TEST_ANTHROPIC_KEY is not set" in r.getMessage() for r in caplog.records)


async def test_keys_never_leave_in_logs_metrics_dashboard_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(1, logger="nexus")
    async with clouds(tmp_path, logging={"level": "trace"}) as (nexus, claude, _):
        seen: list[str] = []
        for model in MODELS:
            await nexus.client.chat.completions.create(model=model, messages=MSG)  # type: ignore[arg-type]
        claude.error_status = 401
        seen.append(
            json.dumps(
                (await nexus.post("/v1/chat/completions", {"model": MODELS[0], "messages": MSG}))[1]
            )
        )
        for path in ("/metrics", "/v1/stats", "/v1/models", "/admin/backends", "/dashboard.json"):
            _, body, _ = (
                await nexus.get(path)
                if path != "/metrics"
                else (0, nexus.state.metrics.exposition().decode(), None)
            )
            seen.append(json.dumps(body))
    everything = "\n".join(seen + [r.getMessage() for r in caplog.records])
    for secret in (ANTHROPIC_KEY, GOOGLE_KEY, CLIENT_KEY):
        assert secret not in everything


async def test_cost_is_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    async with clouds(tmp_path) as (nexus, _, _):
        await nexus.client.chat.completions.create(model="claude-sonnet-4-5", messages=MSG)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        nexus.state.recorder.flush()
        record = next(r.request for r in caplog.records if r.name == "nexus.request")  # type: ignore[attr-defined]
        assert record.cost_usd > 0 and record.cost_flag == ""
        text = nexus.state.metrics.exposition().decode()
        assert 'nexus_cost_usd_total{backend="claude",model="claude-sonnet-4-5"}' in text


async def test_a_model_without_a_price_costs_zero_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    models = [FakeModel("claude-in-house-1"), FakeModel("claude-sonnet-4-5")]
    async with FakeAnthropic(models, api_key=ANTHROPIC_KEY) as claude:
        entry = anthropic_entry(
            claude, prices={"claude-sonnet-4-5": {"input": 1000.0, "output": 0}}
        )
        async with running_nexus(tmp_path, [entry]) as nexus:
            for _ in range(2):
                resp = await nexus.client.chat.completions.with_raw_response.create(
                    model="claude-in-house-1", messages=MSG
                )  # type: ignore[arg-type]
            assert float(resp.headers["X-Nexus-Cost-Estimated"]) == 0
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-5", messages=MSG
            )  # type: ignore[arg-type]
            usage = resp.parse().usage
            assert usage is not None
            # The configured price wins over the bundled one: 1000 USD per million input tokens.
            assert float(resp.headers["X-Nexus-Cost-Estimated"]) == pytest.approx(
                usage.prompt_tokens / 1000, abs=1e-6
            )
            nexus.state.recorder.flush()
    records = [r.request for r in caplog.records if r.name == "nexus.request"]  # type: ignore[attr-defined]
    assert [r.cost_flag for r in records] == ["cost_unknown", "cost_unknown", ""]
    warnings = [r for r in caplog.records if "no price known" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("provider", "status"), [("Anthropic", 401), ("Google", 403), ("Google", 400)]
)
async def test_a_rejected_key_on_the_probe_marks_the_backend_unhealthy(
    tmp_path: Path, provider: str, status: int
) -> None:
    if provider == "Anthropic":  # a real 401: the key in the variable is not the fake's
        fake: FakeAnthropic | FakeGemini = FakeAnthropic(api_key="sk-ant-another-key")
        entry, model = anthropic_entry, "claude-sonnet-4-5"
    elif status == 400:  # Google's own answer to a wrong key: 400, reason API_KEY_INVALID
        fake = FakeGemini(api_key="another-google-key")
        entry, model = google_entry, "gemini-2.5-flash"
    else:
        fake = FakeGemini(api_key=GOOGLE_KEY)
        fake.health_behavior = Behavior.ERROR_403
        entry, model = google_entry, "gemini-2.5-flash"
    async with fake, running_nexus(tmp_path, [entry(fake)]) as nexus:  # type: ignore[arg-type]
        code, body, _ = await nexus.get("/admin/backends")
        assert code == 200
        (listed,) = body["backends"]
        assert listed["status"] == "unhealthy" and listed["models"] == []
        assert listed["last_error"] == f"API key rejected by {provider} (HTTP {status})"
        assert all(r.method == "GET" and "models" in r.path for r in fake.requests)
        code, body, _ = await nexus.post("/v1/chat/completions", {"model": model, "messages": MSG})
        assert code in (404, 503), body
        for secret in (ANTHROPIC_KEY, GOOGLE_KEY):
            assert secret not in json.dumps(body)


def probes(fake: Any) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests]


async def test_cloud_probes_only_list_models_at_their_own_interval(tmp_path: Path) -> None:
    listings = {"GET /v1/models", "GET /v1beta/models"}
    for local_every, cloud_every in ((0.05, 300), (300, 0.05)):
        async with (
            FakeVLLM([FakeModel("qwen")]) as local,
            FakeAnthropic(api_key=ANTHROPIC_KEY) as claude,
            FakeGemini(api_key=GOOGLE_KEY) as gemini,
        ):
            backends = [
                backend_entry(local, "local", "vllm"),
                anthropic_entry(claude),
                google_entry(gemini),
            ]
            checks = {"interval_seconds": local_every, "cloud_interval_seconds": cloud_every}
            async with running_nexus(tmp_path, backends, health_check=checks) as nexus:
                await nexus.client.chat.completions.create(model="claude-sonnet-4-5", messages=MSG)  # type: ignore[arg-type]
                first = {
                    name: len(f.requests) for name, f in (("local", local), ("claude", claude))
                }
                busy, idle = (local, claude) if local_every < 1 else (claude, local)
                await wait_until(
                    lambda b=busy, f=first: len(b.requests) >= 3 * max(f.values()) + 3,
                    what="three more probe rounds of the backend with the short interval",
                )
                if idle is claude:
                    assert len(claude.requests) == first["claude"]
                    assert len(gemini.requests) == 1
                else:
                    assert len(local.requests) == first["local"]
                    await wait_until(lambda: len(gemini.requests) >= 3, what="gemini probes")
            # Whatever the interval, a cloud probe only ever lists models (a completion would
            # be billed): the one chat request is the client's.
            assert [p for p in probes(claude) if p not in listings] == ["POST /v1/messages"]
            assert set(probes(gemini)) == {"GET /v1beta/models"}


async def test_the_models_filter_hides_what_the_provider_lists_beyond_it(tmp_path: Path) -> None:
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        assert {m.id for m in claude.models} == {"claude-sonnet-4-5", "claude-haiku-4-5"}
        entry = anthropic_entry(claude, models=["claude-haiku-4-5"])
        async with running_nexus(tmp_path, [entry]) as nexus:
            listed = [m.id async for m in nexus.client.models.list()]
            assert "claude-haiku-4-5" in listed and "claude-sonnet-4-5" not in listed
            code, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": MSG}
            )
            assert code == 404 and body["error"]["code"] == "model_not_found", body
            reply = await nexus.client.chat.completions.create(
                model="claude-haiku-4-5", messages=MSG
            )  # type: ignore[arg-type]
            assert reply.model == "claude-haiku-4-5"
            assert [r.json["model"] for r in claude.message_requests] == ["claude-haiku-4-5"]


async def test_an_overloaded_provider_fails_over_to_another_backend(tmp_path: Path) -> None:
    async with (
        FakeAnthropic(api_key=ANTHROPIC_KEY) as first,
        FakeAnthropic(api_key=ANTHROPIC_KEY) as second,
    ):
        first.error_status = 529
        backends = [
            anthropic_entry(first, priority=1),
            anthropic_entry(second, name="claude-b", priority=2),
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            for stream in (False, True):
                resp = await nexus.client.chat.completions.with_raw_response.create(
                    model="claude-sonnet-4-5", messages=MSG, stream=stream
                )  # type: ignore[arg-type]
                assert resp.headers["X-Nexus-Backend"] == "claude-b"
                assert resp.headers["X-Nexus-Route-Reason"] == "failover"
                assert "Retry-After" not in resp.headers
                if stream:
                    text = ""
                    async for chunk in resp.parse():  # type: ignore[attr-defined]
                        text += "".join(c.delta.content or "" for c in chunk.choices)
                    assert "capital of France" in text
                else:
                    assert "capital of France" in (resp.parse().choices[0].message.content or "")
            assert len(first.message_requests) == 2 and len(second.message_requests) == 2


async def test_local_answers_say_local_and_carry_no_cost(tmp_path: Path) -> None:
    async with (
        FakeVLLM([FakeModel("claude-sonnet-4-5"), FakeModel("qwen")]) as local,
        FakeAnthropic(api_key=ANTHROPIC_KEY) as claude,
    ):
        # The local box is restricted (the default): a request for a model it serves stays
        # on it, and the zone rule is why the cloud backend serving it too was passed over.
        # Local backends cost nothing, even given prices.
        prices = {"qwen": {"input": 1000.0, "output": 1000.0}}
        backends = [backend_entry(local, "local", "vllm", prices=prices), anthropic_entry(claude)]
        async with running_nexus(tmp_path, backends) as nexus:
            for model, reason in (("claude-sonnet-4-5", "privacy-requirement"), ("qwen", None)):
                for stream in (False, True):
                    resp = await nexus.client.chat.completions.with_raw_response.create(
                        model=model, messages=MSG, stream=stream
                    )  # type: ignore[arg-type]
                    headers = resp.headers
                    assert headers["X-Nexus-Backend"] == "local"
                    assert headers["X-Nexus-Backend-Type"] == "local"
                    assert headers["X-Nexus-Privacy-Zone"] == "restricted"
                    assert "X-Nexus-Cost-Estimated" not in headers
                    assert headers["X-Nexus-Route-Reason"] == (reason or "only-candidate")
            assert claude.message_requests == []


async def test_a_stream_carries_the_estimate_and_logs_the_exact_cost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        # Output dearer than input: the estimate (the prompt only) cannot pass for the cost.
        prices = {"claude-sonnet-4-5": {"input": 1000.0, "output": 3000.0}}
        async with running_nexus(tmp_path, [anthropic_entry(claude, prices=prices)]) as nexus:
            resp = await nexus.client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-5",
                messages=MSG,
                stream=True,
                stream_options={"include_usage": True},
            )  # type: ignore[arg-type]
            estimate = float(resp.headers["X-Nexus-Cost-Estimated"])
            usage = None
            async for chunk in resp.parse():  # type: ignore[attr-defined]
                usage = chunk.usage or usage
            assert usage is not None and usage.completion_tokens > 0
            exact = (usage.prompt_tokens * 1000 + usage.completion_tokens * 3000) / 1e6
            assert 0 < estimate < exact
            records = await wait_until(
                lambda: [r.request for r in caplog.records if r.name == "nexus.request"],
                what="the request's log line",
            )
            text = nexus.state.metrics.exposition().decode()
    (record,) = records
    assert record.cost_usd == pytest.approx(exact, abs=1e-9) and record.cost_flag == ""
    series = 'nexus_cost_usd_total{backend="claude",model="claude-sonnet-4-5"} '
    (line,) = [x for x in text.splitlines() if x.startswith(series)]
    assert float(line.removeprefix(series)) == pytest.approx(exact, abs=1e-9)


async def test_an_openai_cloud_model_gets_its_listed_context_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's model listing has no context length: the bundled price list's is used, so a
    prompt too long for gpt-4o is the request's mismatch (400) before anything is sent,
    while a model the list does not know stays "may fit"."""
    from tests.fakes import FakeOpenAI

    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-0123456789")
    async with FakeOpenAI([FakeModel("gpt-4o"), FakeModel("my-own-model")]) as fake:
        entry = {"name": "oa", "url": fake.url, "type": "openai", "api_key_env": "TEST_OPENAI_KEY"}
        async with running_nexus(tmp_path, [entry]) as nexus:
            _, listing, _ = await nexus.get("/v1/models")
            contexts = {m["id"]: m.get("context_length") for m in listing["data"]}
            assert contexts == {"gpt-4o": 128000, "my-own-model": None}
            huge = [{"role": "user", "content": "word " * 110_000}]  # ~130k tokens estimated
            with pytest.raises(openai.BadRequestError) as refused:
                await nexus.client.chat.completions.create(model="gpt-4o", messages=huge)  # type: ignore[arg-type]
            assert "context 128000" in refused.value.body["message"]  # type: ignore[index]
            assert not fake.chat_requests
            await nexus.client.chat.completions.create(model="my-own-model", messages=huge)  # type: ignore[arg-type]
