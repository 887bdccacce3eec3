"""Tenants, their keys, models, quotas and rate limits (F21, F22) through ``nexus serve``'s
wiring: a fake vLLM (every answer 4 prompt + 12 completion tokens), the official ``openai``,
``anthropic`` and ``ollama`` clients, raw sockets for what no client would send, a real SQLite
file, the real CLI, and two real ``nexus serve`` processes sharing one store."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import pytest
from openai import AsyncOpenAI

from nexus.budget import cycle_bounds, utc_now
from tests.fakes import FakeModel, FakeOpenAI, FakeVLLM
from tests.helpers import (
    Nexus,
    backend_entry,
    nexus_cli,
    running_nexus,
    spawn_nexus,
    wait_until,
    write_config,
)

MSG: list[Any] = [{"role": "user", "content": "hi"}]
MODELS = [FakeModel("llama3:8b"), FakeModel("qwen2:7b")]
PROMPT, COMPLETION = 4, 12  # the fake's usage for MSG
TOKENS_PER_ANSWER = PROMPT + COMPLETION
ADMIN_TOKEN = "admin-token-0123456789abcdef"
UNKNOWN_KEY = "nx-abcdefgh-" + "A" * 43  # well-formed, never issued


@pytest.fixture(autouse=True)
def _no_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN", raising=False)


def auth_sections(tmp_path: Path, **auth: Any) -> dict[str, Any]:
    return {
        "auth": {"enabled": True, "failed_attempts_per_minute": 1000, **auth},
        "storage": {"path": str(tmp_path / "nexus.db"), "flush_interval_seconds": 0.2},
    }


@asynccontextmanager
async def lab(tmp_path: Path, **auth: Any) -> AsyncIterator[tuple[Nexus, FakeVLLM]]:
    async with FakeVLLM(list(MODELS)) as fake:
        backends = [backend_entry(fake, "box", "vllm")]
        async with running_nexus(tmp_path, backends, **auth_sections(tmp_path, **auth)) as nexus:
            yield nexus, fake


async def http(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, json=body, headers=headers) as resp,
    ):
        raw = await resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed, resp.headers


async def admin(url: str, method: str, path: str, body: Any = None) -> Any:
    """The admin API as the CLI uses it (loopback; the admin token when one is set)."""
    import os

    token = os.environ.get("NEXUS_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    status, data, _ = await http(url, method, path, body, headers)
    assert status < 300, (status, data)
    return data


async def tenant_with_key(url: str, name: str, **fields: Any) -> str:
    await admin(url, "POST", "/admin/tenants", {"name": name, **fields})
    return str((await admin(url, "POST", "/admin/keys", {"tenant": name}))["key"])


def client(nexus: Nexus, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=nexus.url + "/v1", api_key=key, max_retries=0, timeout=15)


async def ask(nexus: Nexus, key: str, model: str = "llama3:8b") -> Any:
    async with client(nexus, key) as c:
        return await c.chat.completions.with_raw_response.create(model=model, messages=MSG)


async def refused(nexus: Nexus, key: str, model: str = "llama3:8b") -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(nexus, key, model)
    return caught.value


def claude(nexus: Nexus, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=nexus.url, api_key=key, max_retries=0, timeout=15)


async def claude_ask(nexus: Nexus, key: str, model: str = "llama3:8b") -> Any:
    async with claude(nexus, key) as c:
        return await c.messages.create(model=model, max_tokens=16, messages=MSG)


def ollama_client(nexus: Nexus, key: str | None) -> ollama.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ollama.AsyncClient(host=nexus.url, timeout=15, headers=headers)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus exposition (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if found == labels:
                return float(match.group(3))
    return None


# -- off by default --------------------------------------------------------------------------


async def test_auth_is_off_by_default_and_nothing_needs_a_key(tmp_path: Path) -> None:
    async with FakeVLLM(list(MODELS)) as fake:
        async with running_nexus(tmp_path, [backend_entry(fake, "box", "vllm")]) as nexus:
            assert nexus.state.tenants is None and nexus.server.app.gate is None
            reply = await ask(nexus, "anything-at-all")
            assert reply.status_code == 200
            assert not [h for h in reply.headers if h.startswith("x-ratelimit")]
            status, _, _ = await http(
                nexus.url, "POST", "/v1/chat/completions", {"model": "qwen2:7b", "messages": MSG}
            )
            assert status == 200  # no Authorization header at all
            status, listing, _ = await http(nexus.url, "GET", "/v1/models")
            assert status == 200 and {m["id"] for m in listing["data"]} == {"llama3:8b", "qwen2:7b"}
            status, stats, _ = await http(nexus.url, "GET", "/v1/stats")
            assert status == 200 and stats["tenants"] is None
            status, error, _ = await http(nexus.url, "GET", "/admin/tenants")
            assert status == 409 and error["error"]["code"] == "auth_disabled"
            assert fake.chat_requests  # the requests did reach the backend


# -- 401 -----------------------------------------------------------------------------------


async def test_missing_unknown_revoked_and_expired_keys_are_401_in_each_dialect(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as (nexus, _):
        url = nexus.url
        good = await tenant_with_key(url, "team")
        revoked = await admin(url, "POST", "/admin/keys", {"tenant": "team"})
        expiring = await admin(
            url, "POST", "/admin/keys", {"tenant": "team", "expires": time.time() + 1.0}
        )
        # Before: each works (Bearer from the openai SDK, x-api-key from the anthropic SDK).
        assert (await ask(nexus, good)).status_code == 200
        assert (await ask(nexus, revoked["key"])).status_code == 200
        assert (await ask(nexus, expiring["key"])).status_code == 200
        message = await claude_ask(nexus, good)
        assert message.type == "message" and message.content
        status, _, _ = await http(
            url,
            "POST",
            "/v1/chat/completions",
            {"model": "llama3:8b", "messages": MSG},
            {"x-api-key": good},
        )
        assert status == 200
        deleted = await admin(url, "DELETE", f"/admin/keys/{revoked['id']}")
        assert deleted["revoked"]["revoked"] is True
        await wait_until(
            lambda: time.time() > expiring["expires"], timeout=3, what="the key expired"
        )

        for key in (UNKNOWN_KEY, "sk-not-ours", revoked["key"], expiring["key"], good + "x"):
            error = await refused(nexus, key)
            assert isinstance(error, openai.AuthenticationError), key
            body = error.response.json()["error"]
            assert body["type"] == "authentication_error" and body["code"] == "invalid_api_key"
            assert key not in error.response.text
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await claude_ask(nexus, key)
            shape = caught.value.response.json()
            assert shape["type"] == "error" and shape["error"]["type"] == "authentication_error"
            assert key not in caught.value.response.text

        # Missing: no header, an empty one, another scheme.
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Basic {good}"}):
            status, body, _ = await http(
                url,
                "POST",
                "/v1/chat/completions",
                {"model": "llama3:8b", "messages": MSG},
                headers,
            )
            assert status == 401 and body["error"]["code"] == "invalid_api_key", headers
            assert "missing API key" in body["error"]["message"]
            status, body, _ = await http(url, "POST", "/v1/messages", {}, headers)
            assert status == 401 and body["type"] == "error"
            assert body["error"]["type"] == "authentication_error"

        # The listings and the Ollama API want a key too; /health and /metrics do not.
        status, _, _ = await http(url, "GET", "/v1/models")
        assert status == 401
        with pytest.raises(ollama.ResponseError) as no_key:
            await ollama_client(nexus, None).chat(model="llama3:8b", messages=MSG)
        assert no_key.value.status_code == 401
        reply = await ollama_client(nexus, good).chat(model="llama3:8b", messages=MSG)
        assert reply.message.content
        for path in ("/health", "/metrics"):
            status, _, _ = await http(url, "GET", path)
            assert status == 200, path


# -- hostile keys --------------------------------------------------------------------------


async def raw_request(url: str, head: bytes, *, slices: int = 0) -> tuple[int, bytes]:
    """One request written byte for byte (what no HTTP client would send), at once or in
    ``slices`` bytes at a time; its status and body."""
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"model": "llama3:8b", "messages": MSG}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        + head
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            step = slices or len(request)
            try:
                for start in range(0, len(request), step):
                    sock.sendall(request[start : start + step])
                    if slices:
                        time.sleep(0.005)  # each slice its own read on the server
            except OSError:  # answered and closed before the rest: read the answer
                pass
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    answer = await asyncio.to_thread(exchange)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


MARK = "HOSTILEMARK"


async def test_hostile_keys_get_401_never_500_and_no_key_is_ever_shown(tmp_path: Path) -> None:
    async with FakeVLLM(list(MODELS)) as fake:
        path = write_config(
            tmp_path,
            [backend_entry(fake, "box", "vllm")],
            **auth_sections(tmp_path),
            logging={"level": "debug", "format": "json"},
        )
        async with spawn_nexus(path) as proc:
            await proc.wait_healthy(1)
            good = await tenant_with_key(proc.url, "team")
            hostile: list[bytes] = [
                b"Authorization: Bearer \r\n",
                b"x-api-key: \r\n",
                b"Authorization: \r\n",
                f"Authorization: Bearer nx-{MARK}-{'A' * 60_000}\r\n".encode(),  # < 64 KiB head
                f"x-api-key: nx-{MARK}-\u00e9\u2603\U0001f600\r\n".encode(),  # UTF-8
                b"x-api-key: nx-" + MARK.encode() + b"-\xff\xfe\x80latin1\r\n",
                b"Authorization: Bearer nx-" + MARK.encode() + b"\x00nul\r\n",
                b"Authorization: Bearer nx-" + MARK.encode() + b"-a\rX-Injected: 1\r\n",
                b"Authorization: Bearer nx-" + MARK.encode() + b"-fold\r\n X-Injected: 1\r\n",
                # A bad Bearer first and the right x-api-key after: the Bearer is what counts.
                b"Authorization: Bearer nx-"
                + MARK.encode()
                + b"\r\nx-api-key: "
                + good.encode()
                + b"\r\n",
                b"Authorization: Bearer " + good.encode() + b"\n",  # a bare LF ends the line
            ]
            statuses = []
            for head in hostile:
                status, body = await raw_request(proc.url, head)
                statuses.append(status)
                assert status in (400, 401), (head[:80], status, body[:200])
                assert MARK.encode() not in body and good.encode() not in body
            assert statuses.count(401) >= 6  # most reach the key check and are refused there
            # 100 KB: more than the server takes of a head (64 KiB), refused before any key
            # check whether it arrives in slices or in one read.
            huge = f"Authorization: Bearer nx-{MARK}-{'B' * 100_000}\r\n".encode()
            status, body = await raw_request(proc.url, huge, slices=8192)
            assert status == 431 and MARK.encode() not in body
            status, body = await raw_request(proc.url, huge)
            assert status == 431 and MARK.encode() not in body
            # aiohttp as a real client: a huge x-api-key and a unicode one (sent as UTF-8).
            for key in (f"nx-{MARK}-" + "C" * 20_000, f"nx-{MARK}-ключ"):
                status, body, _ = await http(
                    proc.url,
                    "POST",
                    "/v1/chat/completions",
                    {"model": "llama3:8b", "messages": MSG},
                    {"x-api-key": key},
                )
                assert status == 401 and MARK not in json.dumps(body)
            # The good key works; it shows up nowhere either.
            status, _, _ = await http(
                proc.url,
                "POST",
                "/v1/chat/completions",
                {"model": "llama3:8b", "messages": MSG},
                {"Authorization": f"Bearer {good}"},
            )
            assert status == 200
            _, metrics, _ = await http(proc.url, "GET", "/metrics")
            _, stats, _ = await http(proc.url, "GET", "/v1/stats")
            assert 'tenant="team"' in metrics
            for shown in (metrics, json.dumps(stats)):
                assert MARK not in shown and good not in shown
                assert good.split("-", 2)[2] not in shown  # not even the secret half
        log = "\n".join(proc.lines)
        requests = [json.loads(line) for line in proc.lines if '"message":"request"' in line]
        assert requests and all(r["status"] in (200, 400, 401) for r in requests)
        assert any(r.get("tenant") == "team" and r["status"] == 200 for r in requests)
        assert MARK not in log and good not in log and good.split("-", 2)[2] not in log
        assert "Traceback" not in log


# -- brute force ---------------------------------------------------------------------------


async def test_repeated_wrong_keys_from_one_address_get_429(tmp_path: Path) -> None:
    async with lab(tmp_path, failed_attempts_per_minute=3) as (nexus, _):
        good = await tenant_with_key(nexus.url, "team")
        for _ in range(3):
            assert (await refused(nexus, UNKNOWN_KEY)).status_code == 401
        error = await refused(nexus, UNKNOWN_KEY)
        assert isinstance(error, openai.RateLimitError)
        assert error.response.json()["error"]["code"] == "rate_limited"
        # 3 a minute: the next attempt in about 20 s.
        assert 15 <= int(error.response.headers["retry-after"]) <= 20
        # Not even the right key is looked at from that address for now, on any API path.
        assert (await refused(nexus, good)).status_code == 429
        status, _, headers = await http(
            nexus.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {good}"}
        )
        assert status == 429 and "retry-after" in headers
        status, _, _ = await http(nexus.url, "GET", "/health")
        assert status == 200


# -- models --------------------------------------------------------------------------------


async def test_a_tenant_uses_and_sees_only_its_models(tmp_path: Path) -> None:
    async with lab(tmp_path, tenants=[]) as (nexus, fake):
        key = await tenant_with_key(nexus.url, "team", models=["llama3*"])
        other = await tenant_with_key(nexus.url, "all")
        assert (await ask(nexus, key)).status_code == 200
        sent = len(fake.chat_requests)
        error = await refused(nexus, key, "qwen2:7b")
        assert isinstance(error, openai.PermissionDeniedError)
        body = error.response.json()["error"]
        assert body["code"] == "model_not_allowed" and body["param"] == "model"
        assert len(fake.chat_requests) == sent  # the backend never saw it
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            await claude_ask(nexus, key, "qwen2:7b")
        assert caught.value.response.json()["error"]["type"] == "permission_error"
        with pytest.raises(ollama.ResponseError) as denied:
            await ollama_client(nexus, key).chat(model="qwen2:7b", messages=MSG)
        assert denied.value.status_code == 403

        async with client(nexus, key) as c:
            assert [m.id async for m in c.models.list()] == ["llama3:8b"]
            with pytest.raises(openai.NotFoundError):
                await c.models.retrieve("qwen2:7b")
        async with client(nexus, other) as c:
            assert {m.id async for m in c.models.list()} == {"llama3:8b", "qwen2:7b"}
        tags = await ollama_client(nexus, key).list()
        assert [m.model for m in tags.models] == ["llama3:8b"]
        tags = await ollama_client(nexus, other).list()
        assert {m.model for m in tags.models} == {"llama3:8b", "qwen2:7b"}
        # Usage is what was served: refusals and unknown models (any name a client makes up)
        # leave no row.
        assert isinstance(await refused(nexus, key, "llama3-made-up"), openai.NotFoundError)
        _, data, _ = await http(nexus.url, "GET", "/admin/usage/team")
        assert [(r["model"], r["requests"]) for r in data["usage"]] == [("llama3:8b", 1)]


# -- quotas --------------------------------------------------------------------------------


async def test_monthly_tokens_quota_refuses_until_the_cycle_resets(tmp_path: Path) -> None:
    async with lab(tmp_path) as (nexus, _):
        tenants = nexus.state.tenants
        assert tenants is not None
        key = await tenant_with_key(nexus.url, "team", monthly_tokens=TOKENS_PER_ANSWER + 4)
        other = await tenant_with_key(nexus.url, "other", monthly_tokens=1000)
        end = cycle_bounds(utc_now(), nexus.state.config.budget.billing_cycle_day)[1]
        tenants.clock = lambda: end - timedelta(hours=1)  # an hour before the reset
        reply = await ask(nexus, key)
        assert reply.parse().usage.total_tokens == TOKENS_PER_ANSWER
        assert (await ask(nexus, key)).status_code == 200  # 16 of 20: still under
        error = await refused(nexus, key)  # 32 of 20
        assert isinstance(error, openai.RateLimitError)
        body = error.response.json()["error"]
        assert body["code"] == "quota_exceeded" and "20 tokens" in body["message"]
        assert error.response.headers["retry-after"] == "3600"
        assert (await ask(nexus, other)).status_code == 200  # one tenant's quota only
        await tenants.flush()  # written and read back from the store: still over
        assert (await refused(nexus, key)).status_code == 429
        tenants.clock = lambda: end + timedelta(seconds=1)  # the next cycle
        assert (await ask(nexus, key)).status_code == 200
        _, stats, _ = await http(nexus.url, "GET", "/v1/stats")
        assert stats["tenants"]["team"]["monthly_tokens"] == 20


async def test_monthly_cost_quota_is_429_until_the_cycle_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CLOUD_KEY", "sk-cloud-0123456789")
    cent = {"input": 10000.0, "output": 10000.0}  # USD per million tokens: a cent a token
    async with FakeOpenAI([FakeModel("gpt-x")]) as cloud:
        backends = [
            {
                "name": "cloud",
                "url": cloud.url,
                "type": "openai",
                "api_key_env": "TEST_CLOUD_KEY",
                "prices": {"gpt-x": cent},
            }
        ]
        async with running_nexus(tmp_path, backends, **auth_sections(tmp_path)) as nexus:
            key = await tenant_with_key(nexus.url, "team", monthly_cost=0.2)
            reply = await ask(nexus, key, "gpt-x")
            assert reply.parse().usage.total_tokens == TOKENS_PER_ANSWER  # $0.16
            assert (await ask(nexus, key, "gpt-x")).status_code == 200  # $0.32: now over
            error = await refused(nexus, key, "gpt-x")
            body = error.response.json()["error"]
            assert error.status_code == 429 and body["code"] == "quota_exceeded"
            assert "$0.20" in body["message"]
            end = cycle_bounds(utc_now(), nexus.state.config.budget.billing_cycle_day)[1]
            to_end = (end - utc_now()).total_seconds()
            assert abs(int(error.response.headers["retry-after"]) - to_end) <= 5
            _, stats, _ = await http(nexus.url, "GET", "/v1/stats")
            assert stats["tenants"]["team"]["cost_usd"] == pytest.approx(0.32)


# -- rate limits ---------------------------------------------------------------------------


async def test_requests_per_minute_with_burst_and_the_openai_headers(tmp_path: Path) -> None:
    async with lab(tmp_path) as (nexus, _):
        key = await tenant_with_key(nexus.url, "team", rpm=6, burst=2)
        other = await tenant_with_key(nexus.url, "other")
        first = await ask(nexus, key)
        second = await ask(nexus, key)
        for reply, remaining in ((first, "1"), (second, "0")):
            assert reply.headers["x-ratelimit-limit-requests"] == "6"
            assert reply.headers["x-ratelimit-remaining-requests"] == remaining
            assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
            assert "x-ratelimit-limit-tokens" not in reply.headers  # no token limit set
        error = await refused(nexus, key)
        assert isinstance(error, openai.RateLimitError)
        assert error.response.json()["error"]["code"] == "rate_limited"
        headers = error.response.headers
        assert 9 <= int(headers["retry-after"]) <= 10  # 6 a minute: one every 10 s
        assert headers["x-ratelimit-limit-requests"] == "6"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        # The others are not limited by it, and carry no headers of a limit they do not have.
        reply = await ask(nexus, other)
        assert reply.status_code == 200 and "x-ratelimit-limit-requests" not in reply.headers
        # An admin lifting the limit takes effect at once.
        await admin(nexus.url, "PATCH", "/admin/tenants/team", {"rpm": 0})
        assert (await ask(nexus, key)).status_code == 200


async def test_tokens_per_minute_once_usage_is_known(tmp_path: Path) -> None:
    async with lab(tmp_path) as (nexus, _):
        key = await tenant_with_key(nexus.url, "team", tpm=20)
        first = await ask(nexus, key)
        assert first.headers["x-ratelimit-limit-tokens"] == "20"
        assert first.headers["x-ratelimit-remaining-tokens"] == "20"  # nothing known yet
        second = await ask(nexus, key)  # 4 left: enough to start one more
        assert int(second.headers["x-ratelimit-remaining-tokens"]) == 4
        error = await refused(nexus, key)  # 20 - 32: in debt
        assert isinstance(error, openai.RateLimitError)
        assert "tokens per minute" in error.response.json()["error"]["message"]
        headers = error.response.headers
        assert headers["x-ratelimit-limit-tokens"] == "20"
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        # 13 tokens short (of 1) at 20 a minute: about 39 s.
        assert 37 <= int(headers["retry-after"]) <= 39


# -- usage ---------------------------------------------------------------------------------


async def test_usage_per_tenant_model_and_day_everywhere(tmp_path: Path) -> None:
    async with FakeVLLM(list(MODELS)) as fake:
        path = write_config(
            tmp_path,
            [backend_entry(fake, "box", "vllm")],
            **auth_sections(tmp_path),
            logging={"format": "json"},
        )
        async with spawn_nexus(path) as proc:
            await proc.wait_healthy(1)
            url = proc.url
            code, out, err = await nexus_cli("tenants", "create", "alpha", "--url", url)
            assert code == 0, err
            code, out, err = await nexus_cli("tenants", "create", "beta", "--url", url)
            assert code == 0, err
            keys = {}
            for name in ("alpha", "beta"):
                code, out, err = await nexus_cli("keys", "create", "--tenant", name, "--url", url)
                assert code == 0, err
                keys[name] = out.strip()
            plan = [("alpha", "llama3:8b"), ("alpha", "llama3:8b"), ("alpha", "qwen2:7b")]
            plan += [("beta", "qwen2:7b")]
            for name, model in plan:
                async with AsyncOpenAI(
                    base_url=url + "/v1", api_key=keys[name], max_retries=0, timeout=15
                ) as c:
                    await c.chat.completions.create(model=model, messages=MSG)
            today = datetime.now(UTC).date().isoformat()
            code, out, err = await nexus_cli("tenants", "usage", "--json", "--url", url)
            assert code == 0, err
            rows = {(r["tenant"], r["model"]): r for r in json.loads(out)["usage"]}
            assert set(rows) == {
                ("alpha", "llama3:8b"),
                ("alpha", "qwen2:7b"),
                ("beta", "qwen2:7b"),
            }
            assert rows["alpha", "llama3:8b"]["requests"] == 2
            assert rows["alpha", "llama3:8b"]["prompt_tokens"] == 2 * PROMPT
            assert rows["alpha", "llama3:8b"]["completion_tokens"] == 2 * COMPLETION
            assert all(r["day"] == today for r in rows.values())
            code, out, err = await nexus_cli("tenants", "usage", "beta", "--url", url)
            assert code == 0 and "beta" in out and "alpha" not in out and "qwen2:7b" in out
            _, data, _ = await http(url, "GET", "/admin/usage/alpha")
            assert {r["tenant"] for r in data["usage"]} == {"alpha"}
            assert sum(r["requests"] for r in data["usage"]) == 3
            since = (date.today() + timedelta(days=1)).isoformat()
            _, data, _ = await http(url, "GET", f"/admin/usage?since={since}")
            assert data["usage"] == []
            status, data, _ = await http(url, "GET", "/admin/usage?since=yesterday")
            assert status == 400 and data["error"]["param"] == "since"
            status, data, _ = await http(url, "GET", "/admin/usage/nobody")
            assert status == 404
            _, stats, _ = await http(url, "GET", "/v1/stats")
            assert stats["tenants"]["alpha"]["tokens"] == 3 * TOKENS_PER_ANSWER
            assert stats["tenants"]["beta"]["tokens"] == TOKENS_PER_ANSWER
            _, metrics, _ = await http(url, "GET", "/metrics")
            requests = sample(metrics, "nexus_tenant_requests_total", tenant="alpha", status="200")
            assert requests == 3
            assert sample(
                metrics, "nexus_tenant_tokens_total", tenant="beta", type="completion"
            ) == (COMPLETION)
            assert sample(metrics, "nexus_tenant_tokens_total", tenant="alpha", type="prompt") == (
                3 * PROMPT
            )
        lines = [json.loads(line) for line in proc.lines if '"message":"request"' in line]
        assert sorted(r["tenant"] for r in lines) == ["alpha", "alpha", "alpha", "beta"]
        log = "\n".join(proc.lines)
        for key in keys.values():
            assert key not in log and key.split("-", 2)[2] not in log


# -- the CLI -------------------------------------------------------------------------------


async def test_cli_manages_tenants_and_keys(tmp_path: Path) -> None:
    async with lab(tmp_path) as (nexus, _):
        url = ("--url", nexus.url)

        async def cli(*args: str) -> tuple[int, str, str]:
            return await nexus_cli(*args, *url)

        code, out, err = await cli(
            "tenants", "create", "team", "--models", "llama3*", "--models", "phi*",
            "--rpm", "60", "--burst", "5", "--tpm", "1000", "--monthly-tokens", "5000",
            "--monthly-cost", "2.5",
        )  # fmt: skip
        assert code == 0 and "created tenant team" in out, err
        code, out, err = await cli("tenants", "show", "team", "--json")
        shown = json.loads(out)
        assert shown["models"] == ["llama3*", "phi*"] and shown["rpm"] == 60
        assert shown["burst"] == 5 and shown["tpm"] == 1000
        assert shown["monthly_tokens"] == 5000 and shown["monthly_cost"] == 2.5
        code, out, err = await cli("tenants", "update", "team", "--rpm", "30")
        assert code == 0 and "updated" in out
        code, out, err = await cli("tenants", "show", "team")
        assert "30 requests/min" in out and "llama3*, phi*" in out and "$2.50" in out

        code, out, err = await cli("keys", "create", "--tenant", "team", "--expires", "30d")
        assert code == 0, err
        key = out.strip()
        assert key.startswith("nx-") and len(out.strip().splitlines()) == 1  # only the key
        assert "not shown again" in err
        key_id = key.split("-")[1]
        assert (await ask(nexus, key)).status_code == 200
        for args in (("keys", "list"), ("keys", "list", "--json"), ("tenants", "show", "team")):
            code, out, _ = await cli(*args)
            assert (
                code == 0 and key_id in out and key not in out and key.split("-", 2)[2] not in out
            )
        code, out, _ = await cli("keys", "list", "--json")
        (listed,) = json.loads(out)
        assert "hash" not in listed and "key" not in listed
        assert listed["expires"] == pytest.approx(time.time() + 30 * 86400, abs=60)
        code, out, _ = await cli("keys", "list")
        assert "expires" in out
        code, out, _ = await cli("tenants", "list")
        assert "team" in out and "5000 tok" in out
        code, out, _ = await cli("tenants", "list", "--json")
        assert json.loads(out)[0]["keys"] == 1

        code, out, _ = await cli("keys", "revoke", key_id)
        assert code == 0 and f"revoked key {key_id}" in out
        assert (await refused(nexus, key)).status_code == 401
        code, out, _ = await cli("keys", "list")
        assert "revoked" in out

        # Errors say what is wrong, without a traceback.
        for args, expected in [
            (("keys", "create", "--tenant", "nobody"), "no tenant 'nobody'"),
            (("tenants", "show", "nobody"), "no tenant 'nobody'"),
            (("tenants", "update", "nobody", "--rpm", "1"), "no tenant 'nobody'"),
            (("tenants", "delete", "nobody"), "no tenant 'nobody'"),
            (("tenants", "create", "team"), "exists already"),
            (("tenants", "create", "bad name!"), "'name' must be"),
            (("tenants", "create", "x", "--rpm", "-1"), "-1"),
            (("tenants", "create", "x", "--rpm", "many"), "'many' is not a valid integer"),
            (("tenants", "create", "x", "--monthly-cost", "lots"), "'lots' is not a valid float"),
            (("keys", "create", "--tenant", "team", "--expires", "soon"), "expected 30d"),
            (("keys", "create", "--tenant", "team", "--expires", "2001-01-01"), "in the past"),
            (("keys", "revoke", "nosuchid"), "no key 'nosuchid'"),
        ]:
            code, out, err = await cli(*args)
            assert code != 0, args
            assert expected in err, (args, err)
            assert "Traceback" not in err

        code, out, _ = await cli("tenants", "delete", "team")
        assert code == 0 and "deleted tenant team" in out
        code, out, _ = await cli("tenants", "list", "--json")
        assert json.loads(out) == []
        code, out, _ = await cli("keys", "list", "--json")
        assert json.loads(out) == []  # its keys went with it


async def test_admin_api_validates_fields(tmp_path: Path) -> None:
    async with lab(tmp_path) as (nexus, _):
        await admin(nexus.url, "POST", "/admin/tenants", {"name": "team"})
        for path, method, body, param in [
            ("/admin/tenants", "POST", {"name": "t2", "rpm": -1}, "rpm"),
            ("/admin/tenants", "POST", {"name": "t2", "rpm": 1.5}, "rpm"),
            ("/admin/tenants", "POST", {"name": "t2", "rpm": True}, "rpm"),
            ("/admin/tenants", "POST", {"name": "t2", "monthly_cost": "1"}, "monthly_cost"),
            ("/admin/tenants", "POST", {"name": "t2", "models": "llama3"}, "models"),
            ("/admin/tenants", "POST", {"name": "t2", "colour": "red"}, "colour"),
            ("/admin/tenants", "POST", {"name": ""}, "name"),
            ("/admin/tenants", "POST", {"name": "a/b"}, "name"),
            ("/admin/tenants/team", "PATCH", {"tpm": -5}, "tpm"),
            ("/admin/keys", "POST", {"tenant": 3}, "tenant"),
            ("/admin/keys", "POST", {"tenant": "team", "expires": "tomorrow"}, "expires"),
            ("/admin/keys", "POST", {"tenant": "team", "expires": 1.0}, "expires"),
        ]:
            status, error, _ = await http(nexus.url, method, path, body)
            assert status == 400 and error["error"]["param"] == param, (body, error)
        status, _, _ = await http(nexus.url, "POST", "/admin/tenants", ["team"])
        assert status == 400
        _, listed, _ = await http(nexus.url, "GET", "/admin/tenants")
        assert [t["name"] for t in listed["tenants"]] == ["team"]  # none of those was created


# -- static tenants ------------------------------------------------------------------------


async def test_tenants_declared_in_the_config_with_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ops_key = "ops-key-from-env-0123456789"
    monkeypatch.setenv("TEST_OPS_KEY", ops_key)
    monkeypatch.delenv("TEST_UNSET_KEY", raising=False)
    declared = [
        {"name": "ops", "key_env": "TEST_OPS_KEY", "models": ["llama3*"], "rpm": 100},
        {"name": "ghost", "key_env": "TEST_UNSET_KEY"},
    ]
    async with lab(tmp_path, tenants=declared) as (nexus, _):
        assert (await ask(nexus, ops_key)).status_code == 200
        assert (await refused(nexus, ops_key, "qwen2:7b")).status_code == 403
        assert "TEST_UNSET_KEY is unset" in caplog.text and ops_key not in caplog.text
        _, listed, _ = await http(nexus.url, "GET", "/admin/tenants")
        by_name = {t["name"]: t for t in listed["tenants"]}
        assert by_name["ops"]["static"] is True and by_name["ops"]["rpm"] == 100
        assert ops_key not in json.dumps(listed)
        for method, body in (("PATCH", {"rpm": 1}), ("DELETE", None)):
            status, error, _ = await http(nexus.url, method, "/admin/tenants/ops", body)
            assert status == 400 and error["error"]["code"] == "static_tenant", method
        code, _, err = await nexus_cli("tenants", "update", "ops", "--rpm", "1", "--url", nexus.url)
        assert code != 0 and "config file" in err
        # Its key is not in the store, not even as a hash.
        await nexus.state.tenants.flush()  # type: ignore[union-attr]
        assert ops_key.encode() not in (tmp_path / "nexus.db").read_bytes()

    # Taken out of the config file, it is gone at the next start (with any key it had).
    async with lab(tmp_path, tenants=[]) as (nexus, _):
        _, listed, _ = await http(nexus.url, "GET", "/admin/tenants")
        assert [t["name"] for t in listed["tenants"]] == []
        assert (await refused(nexus, ops_key)).status_code == 401


# -- the dashboard, its feed and /v1/stats ---------------------------------------------------


async def test_views_answer_loopback_and_the_token_sets_a_strict_cookie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", ADMIN_TOKEN)
    async with lab(tmp_path) as (nexus, _):
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/dashboard.json", "/v1/stats"):
                async with session.get(nexus.url + path) as resp:
                    assert resp.status == 200, path  # loopback, no key
            async with session.ws_connect(nexus.url + "/ws") as ws:
                first = await ws.receive(timeout=5)
                assert first.type == aiohttp.WSMsgType.TEXT
            async with session.get(
                nexus.url + "/?token=" + ADMIN_TOKEN, allow_redirects=False
            ) as resp:
                assert resp.status == 303 and resp.headers["location"] == "/"
                cookie = resp.headers["set-cookie"]
            parts = [p.strip() for p in cookie.split(";")]
            assert parts[0] == f"nexus_admin={ADMIN_TOKEN}"
            assert "HttpOnly" in parts and "SameSite=Strict" in parts and "Path=/" in parts
            async with session.get(nexus.url + "/?token=wrong", allow_redirects=False) as resp:
                assert resp.status == 200 and "set-cookie" not in resp.headers
            # The admin API keeps its own rule: the token, from loopback too.
            async with session.get(nexus.url + "/admin/tenants") as resp:
                assert resp.status == 403
            # An API key is no admin token, nor the reverse.
            status, _, _ = await http(
                nexus.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert status == 401


# -- several processes -----------------------------------------------------------------------


async def test_a_revoked_key_is_refused_by_another_process_within_seconds(tmp_path: Path) -> None:
    async with FakeVLLM(list(MODELS)) as fake:
        path = write_config(
            tmp_path, [backend_entry(fake, "box", "vllm")], **auth_sections(tmp_path)
        )
        async with spawn_nexus(path) as one, spawn_nexus(path) as two:
            assert one.url != two.url
            await one.wait_healthy(1)
            await two.wait_healthy(1)
            key = await tenant_with_key(one.url, "team")

            async def status_at(url: str) -> int:
                status, _, _ = await http(
                    url,
                    "POST",
                    "/v1/chat/completions",
                    {"model": "llama3:8b", "messages": MSG},
                    {"Authorization": f"Bearer {key}"},
                )
                return status

            await wait_until(
                lambda: _is(status_at(two.url), 200), timeout=3, what="the key known to two"
            )
            key_id = key.split("-")[1]
            code, _, err = await nexus_cli("keys", "revoke", key_id, "--url", one.url)
            assert code == 0, err
            assert await status_at(one.url) == 401  # at once where it was revoked
            await wait_until(
                lambda: _is(status_at(two.url), 401), timeout=3, what="two refusing the key"
            )
            # Usage of both processes adds up in the one file.
            _, data, _ = await http(two.url, "GET", "/admin/usage/team")
            assert sum(r["requests"] for r in data["usage"]) >= 1


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)


async def test_a_tenants_key_never_reaches_a_backend(tmp_path: Path) -> None:
    """Without auth, a local backend sees the client's Authorization (it may check its own
    keys); with auth on, that header carries a Nexus key, which stays with Nexus."""
    async with lab(tmp_path) as (nexus, fake):
        key = await tenant_with_key(nexus.url, "team")
        await ask(nexus, key)
        async with claude(nexus, key) as c:
            await c.messages.create(model="llama3:8b", max_tokens=16, messages=MSG)
        assert len(fake.chat_requests) == 2
        for request in fake.chat_requests:
            assert "Authorization" not in request.headers
            assert key not in json.dumps(dict(request.headers))
