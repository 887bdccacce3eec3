"""A backend behind TLS (a cloud API, or vLLM behind a reverse proxy), end to end.

Nexus runs as ``nexus serve`` with ``SSL_CERT_FILE`` naming a test CA, so both the probe
(aiohttp) and the proxied traffic (our pool) verify the backend's certificate for real.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from openai import AsyncOpenAI

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import backend_entry, spawn_nexus, wait_until, write_config


def tls_fake(tmp_path: Path) -> tuple[FakeVLLM, Path]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeVLLM([FakeModel("qwen")])
    fake.ssl_context = context
    return fake, ca_file


async def chat_status(url: str) -> tuple[int, str]:
    body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            return resp.status, (await resp.json())["error"]["message"]


async def wait_for_model(url: str, model: str) -> None:
    async def listed() -> bool:
        async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as resp:
            return model in {m["id"] for m in (await resp.json())["data"]}

    await wait_until(listed, timeout=10, interval=0.1, what=f"{model} in /v1/models")


async def test_https_backend_answers_chat_and_streams(tmp_path: Path) -> None:
    fake, ca_file = tls_fake(tmp_path)
    async with fake:
        assert fake.url.startswith("https://127.0.0.1:")
        config = write_config(tmp_path, [backend_entry(fake, "secure", "vllm")])
        async with spawn_nexus(config, env={"SSL_CERT_FILE": str(ca_file)}) as nexus:
            await wait_for_model(nexus.url, "qwen")
            client = AsyncOpenAI(base_url=nexus.url + "/v1", api_key="k", max_retries=0, timeout=10)
            messages = [{"role": "user", "content": "hello"}]
            for _ in range(3):
                reply = await client.chat.completions.create(model="qwen", messages=messages)  # type: ignore[arg-type]
                assert reply.choices[0].message.content
            stream = await client.chat.completions.create(
                model="qwen", messages=messages, stream=True
            )  # type: ignore[arg-type]
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text
    chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 4


async def test_untrusted_certificate_is_a_named_tls_error(tmp_path: Path) -> None:
    fake, _ = tls_fake(tmp_path)  # its CA is not given to Nexus
    async with fake:
        config = write_config(tmp_path, [backend_entry(fake, "secure", "vllm")])
        async with spawn_nexus(config) as nexus, aiohttp.ClientSession() as session:

            async def failed() -> dict[str, Any] | None:
                async with session.get(nexus.url + "/admin/backends") as resp:
                    backend: dict[str, Any] = (await resp.json())["backends"][0]
                return backend if backend.get("last_error") else None

            backend = await wait_until(failed, timeout=10, interval=0.1, what="a probe error")
    assert "TLS error" in backend["last_error"] and "certificate" in backend["last_error"]
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]


async def test_certificate_that_stops_verifying_fails_traffic_with_a_tls_error(
    tmp_path: Path,
) -> None:
    fake, ca_file = tls_fake(tmp_path)
    async with fake:
        config = write_config(tmp_path, [backend_entry(fake, "secure", "vllm")])
        async with spawn_nexus(config, env={"SSL_CERT_FILE": str(ca_file)}) as nexus:
            await wait_for_model(nexus.url, "qwen")  # probed healthy over verified TLS
            # From now on the backend presents a certificate from a CA Nexus does not
            # trust (a renewed certificate from the wrong issuer): new connections fail.
            assert fake.ssl_context is not None
            trustme.CA().issue_cert("127.0.0.1").configure_cert(fake.ssl_context)
            status, message = await chat_status(nexus.url)
    assert status == 502
    assert message == (
        "backend 'secure' unreachable: TLS error: certificate verify failed: "
        "unable to get local issuer certificate"
    )
