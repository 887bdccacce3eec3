"""Metrics, /v1/stats and the one structured log line per request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus, spawn_nexus, write_config

MSG = [{"role": "user", "content": "hi"}]
API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SECRET = "the-password-is-swordfish"
REQUIRED = {
    "timestamp",
    "request_id",
    "model",
    "backend",
    "backend_type",
    "status",
    "latency_ms",
    "tokens_prompt",
    "tokens_completion",
    "stream",
    "route_reason",
    "retry_count",
    "fallback_chain",
}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def scrape(nexus: Nexus) -> str:
    async with aiohttp.ClientSession() as s, s.get(nexus.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_metrics_move_with_real_requests(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "gpu", "vllm")]) as nexus:
            await nexus.client.chat.completions.create(model="qwen", messages=MSG)  # type: ignore[arg-type]
            stream = await nexus.client.chat.completions.create(
                model="qwen", messages=MSG, stream=True
            )  # type: ignore[arg-type]
            [c async for c in stream]
            fake.chat_behavior = Behavior.ERROR_500
            await nexus.post("/v1/chat/completions", {"model": "qwen", "messages": MSG})
            fake.chat_behavior = Behavior.ERROR_429
            await nexus.post("/v1/chat/completions", {"model": "qwen", "messages": MSG})
            await nexus.post("/v1/chat/completions", {"model": "made-up-1", "messages": MSG})
            await nexus.post("/v1/chat/completions", {"model": "made-up-2", "messages": MSG})
            await nexus.post("/v1/chat/completions", {"model": "qwen"})
            text = await scrape(nexus)
            assert (
                sample(text, "nexus_requests_total", model="qwen", backend="gpu", status="200") == 2
            )
            assert (
                sample(text, "nexus_requests_total", model="qwen", backend="gpu", status="502") == 1
            )
            assert (
                sample(text, "nexus_requests_total", model="qwen", backend="gpu", status="429") == 1
            )
            assert (
                sample(text, "nexus_requests_total", model="unknown", backend="none", status="404")
                == 2
            )
            assert (
                sample(text, "nexus_requests_total", model="unknown", backend="none", status="400")
                == 1
            )
            assert "made-up" not in text  # client-invented names never become series
            assert sample(text, "nexus_errors_total", type="backend_error") == 1
            assert sample(text, "nexus_errors_total", type="model_not_found") == 2
            assert sample(text, "nexus_errors_total", type="invalid_request") == 1
            assert (
                sample(text, "nexus_request_duration_seconds_count", model="qwen", backend="gpu")
                == 4
            )
            assert 'le="300.0"' in text and 'le="0.1"' in text
            assert (
                sample(text, "nexus_time_to_first_token_seconds_count", model="qwen", backend="gpu")
                == 1
            )
            assert (
                sample(text, "nexus_tokens_total", model="qwen", backend="gpu", type="completion")
                == 24
            )
            assert (
                sample(text, "nexus_tokens_total", model="qwen", backend="gpu", type="prompt") > 0
            )
            assert sample(text, "nexus_overhead_seconds_count") == 7
            assert (
                sample(text, "nexus_backends_total") == 1
                and sample(text, "nexus_backends_healthy") == 1
            )
            assert sample(text, "nexus_models_available") == 1
            assert sample(text, "nexus_pending_requests", backend="gpu") == 0
            assert sample(text, "nexus_health_check_duration_seconds_count", backend="gpu") >= 1
            assert sample(text, "nexus_backend_latency_seconds_count", backend="gpu") >= 1


async def test_fallback_metric(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("small")]) as fake:
        routing = {"fallbacks": {"big": ["small"]}}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "gpu", "vllm")], routing=routing
        ) as nexus:
            await nexus.client.chat.completions.create(model="big", messages=MSG)  # type: ignore[arg-type]
            text = await scrape(nexus)
            assert sample(text, "nexus_fallbacks_total", from_model="big", to_model="small") == 1


async def test_stats_match_the_requests_made(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as a, FakeVLLM([FakeModel("qwen")]) as b:
        backends = [backend_entry(a, "a", "vllm"), backend_entry(b, "b", "vllm")]
        async with running_nexus(tmp_path, backends) as nexus:
            for _ in range(6):
                await nexus.client.chat.completions.create(model="qwen", messages=MSG)  # type: ignore[arg-type]
            await nexus.post("/v1/chat/completions", {"model": "nope", "messages": MSG})
            status, stats, _ = await nexus.get("/v1/stats")
            assert status == 200
            assert stats["requests"] == {"total": 7, "success": 6, "errors": 1, "in_flight": 0}
            assert stats["backends"]["a"]["requests"] + stats["backends"]["b"]["requests"] == 6
            assert (
                stats["backends"]["a"]["pending"] == 0
                and stats["backends"]["a"]["status"] == "healthy"
            )
            assert stats["backends"]["a"]["avg_latency_ms"] > 0
            assert (
                stats["models"]["qwen"]["requests"] == 6
                and stats["models"]["qwen"]["avg_duration_ms"] > 0
            )
            assert stats["uptime_seconds"] > 0
            assert stats["quality"]["qwen"]["a"]["1h"]["requests"] >= 1
            # Two backends serve qwen: /v1/models still lists it once, naming both.
            listing = (await nexus.get("/v1/models"))[1]["data"]
            assert [m["id"] for m in listing] == ["qwen"]
            assert sorted(b["name"] for b in listing[0]["backends"]) == ["a", "b"]


async def test_request_id_is_taken_or_generated(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "gpu", "vllm")]) as nexus:
            body = {"model": "qwen", "messages": MSG}
            _, _, headers = await nexus.post(
                "/v1/chat/completions", body, headers={"X-Request-Id": "abc-123"}
            )
            assert headers["X-Request-Id"] == "abc-123"
            assert fake.chat_requests[-1].headers["X-Request-Id"] == "abc-123"
            _, _, headers = await nexus.post(
                "/v1/chat/completions", body, headers={"X-Request-Id": "bad id <script>"}
            )
            generated = headers["X-Request-Id"]
            assert re.fullmatch(
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", generated
            )
            _, _, again = await nexus.post("/v1/chat/completions", body)
            assert again["X-Request-Id"] != generated
            status, reply, headers = await nexus.post(
                "/v1/chat/completions", {"model": "x"}, headers={"X-Request-Id": "r-9"}
            )
            assert (
                status == 400 and reply["error"]["request_id"] == "r-9" == headers["X-Request-Id"]
            )


async def run_and_collect(tmp_path: Path, logging_cfg: dict[str, object], *args: str) -> list[str]:
    async with (
        FakeVLLM([FakeModel("qwen")], stream_chunks=4) as a,
        FakeVLLM([FakeModel("qwen")]) as b,
    ):
        a.chat_behavior = Behavior.ERROR_503  # the first attempt fails over: one record still
        config = write_config(
            tmp_path,
            [
                backend_entry(a, "first", "vllm", priority=1),
                backend_entry(b, "second", "vllm", priority=2),
            ],
            logging=logging_cfg,
        )
        async with spawn_nexus(config, *args) as nexus:
            await nexus.wait_healthy(backends=2)
            secret = [{"role": "user", "content": SECRET}]
            async with aiohttp.ClientSession() as s:
                for stream in (False, True):
                    async with s.post(
                        nexus.url + "/v1/chat/completions",
                        json={"model": "qwen", "messages": secret, "stream": stream},
                        headers={
                            "X-Request-Id": f"req-{int(stream)}",
                            "Authorization": "Bearer sk-very-secret",
                        },
                    ) as r:
                        assert r.status == 200
                        await r.read()
            await nexus.stop()  # flushes the log; stop() reads stderr to its end
            return list(nexus.lines)


async def test_json_logs_one_line_per_request_no_content(tmp_path: Path) -> None:
    lines = await run_and_collect(tmp_path, {"format": "json", "level": "debug"})
    parsed = [json.loads(line) for line in lines]  # every line is valid JSON
    requests = [p for p in parsed if p["logger"] == "nexus.request"]
    assert [r["request_id"] for r in requests] == ["req-0", "req-1"]
    for record in requests:
        assert set(record) >= REQUIRED
        assert record["status"] == 200 and record["backend"] == "second"
        assert record["backend_type"] == "vllm" and record["level"] == "info"
    # The failover shows in the one record of the request that had it; "first" is then
    # penalised, so the next request goes straight to "second".
    assert requests[0]["retry_count"] == 1 and requests[0]["attempts"] == ["first", "second"]
    assert requests[1]["retry_count"] == 0 and requests[1]["attempts"] == ["second"]
    assert all(isinstance(r["tokens_completion"], int) for r in requests)
    assert [r["stream"] for r in requests] == [False, True]
    text = "\n".join(lines)
    assert SECRET not in text and "sk-very-secret" not in text


async def test_pretty_logs_and_content_opt_in(tmp_path: Path) -> None:
    lines = await run_and_collect(tmp_path, {"format": "pretty"}, "--log-level", "debug")
    request_lines = [line for line in lines if "nexus.request" in line]
    assert len(request_lines) == 2
    assert all("request_id=req-" in line and "status=200" in line for line in request_lines)
    assert SECRET not in "\n".join(lines)
    (tmp_path / "opt").mkdir()
    lines = await run_and_collect(
        tmp_path / "opt", {"format": "pretty", "log_content": True, "level": "debug"}
    )
    text = "\n".join(lines)
    assert "log_content is on" in text
    content = [line for line in lines if SECRET in line]
    assert content and all("DEBUG" in line and "nexus.content" in line for line in content)
    assert "sk-very-secret" not in text


@pytest.mark.parametrize("level", ["info", "warn"])
async def test_component_levels(tmp_path: Path, level: str) -> None:
    lines = await run_and_collect(
        tmp_path, {"format": "json", "level": "info", "components": {"request": level}}
    )
    count = sum(1 for line in lines if '"nexus.request"' in line)
    assert count == (2 if level == "info" else 0)


async def test_every_metric_is_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every family /metrics exposes, with every feature on (a budget, auth, the queue, a
    per-backend rate limit), has its row in docs/api.md."""
    docs = API_DOCS.read_text()
    monkeypatch.setenv("OBS_TENANT_KEY", "tenant-key-0123456789abcdef")
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        entry = backend_entry(fake, "v", "vllm", rate_limit={"requests_per_minute": 600})
        sections = {
            "budget": {"monthly_limit": 10.0},
            "auth": {"enabled": True, "tenants": [{"name": "t", "key_env": "OBS_TENANT_KEY"}]},
            "storage": {"path": str(tmp_path / "nexus.db")},
        }
        async with running_nexus(tmp_path, [entry], **sections) as nexus:
            headers = {"Authorization": "Bearer tenant-key-0123456789abcdef"}
            status, _, _ = await nexus.post(
                "/v1/chat/completions", {"model": "qwen", "messages": MSG}, headers=headers
            )
            assert status == 200
            nexus.state.recorder.flush()
            text = await scrape(nexus)
    families = sorted(set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.MULTILINE)))
    assert len(families) > 20
    missing = [
        name for name, kind in families if f"`{name}`" not in docs and f"`{name}_total`" not in docs
    ]
    assert missing == [], f"not in docs/api.md: {missing}"
