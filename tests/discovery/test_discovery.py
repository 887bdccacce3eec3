"""F05 end to end: real mDNS adverts on 127.0.0.1, Nexus started as ``nexus serve`` does."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import ifaddr
import pytest
from aiohttp import web

from nexus.registry import BackendStatus, DiscoverySource
from tests.fakes import FakeModel, FakeOllama, FakeVLLM
from tests.helpers import nexus_cli, running_nexus, wait_until

from .conftest import Advertiser, by_service, discovery_section, wait_healthy, wait_log

LLM = "_llm._tcp.local."
OLLAMA = "_ollama._tcp.local."


def full(adv: Advertiser, label: str, service_type: str = OLLAMA) -> str:
    return f"{adv.name(label)}.{service_type}"


async def chat(nexus: Any, model: str) -> str:
    resp = await nexus.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return str(resp.choices[0].message.content)


async def test_ollama_advert_is_discovered_probed_and_routed_to(
    tmp_path: Path, advertiser: Advertiser
) -> None:
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(tmp_path, [], discovery=discovery_section()) as nexus,
    ):
        await advertiser.register("ollama", fake.port, OLLAMA, {"version": "0.3.12"})
        backend = await wait_healthy(nexus, full(advertiser, "ollama"))

        assert backend.discovery_source is DiscoverySource.MDNS
        assert backend.type == "ollama"  # _ollama._tcp defaults to ollama
        assert backend.url == f"http://127.0.0.1:{fake.port}"
        assert backend.name == advertiser.name("ollama")
        assert backend.metadata["version"] == "0.3.12"
        assert "llama3:8b" in backend.models
        assert any(r.path == "/api/tags" for r in fake.requests)  # probed at once

        assert f":{fake.port}" in await chat(nexus, "llama3:8b")
        assert backend.total_requests == 1
        status, body, _ = await nexus.get("/v1/models")
        assert status == 200
        entry = next(m for m in body["data"] if m["id"] == "llama3:8b")
        assert [(e["name"], e["discovered"]) for e in entry["backends"]] == [(backend.name, True)]


async def test_llm_advert_with_vllm_txt_has_no_doubled_path(
    tmp_path: Path, advertiser: Advertiser
) -> None:
    txt = {"type": "vLLM", "api_path": "/v1", "version": "0.6.3", "models": "mistral:7b, qwen"}
    async with (
        FakeVLLM([FakeModel("mistral:7b")]) as fake,
        running_nexus(tmp_path, [], discovery=discovery_section()) as nexus,
    ):
        await advertiser.register("vllm", fake.port, LLM, txt)
        backend = await wait_healthy(nexus, full(advertiser, "vllm", LLM))

        assert backend.type == "vllm"
        assert backend.url == f"http://127.0.0.1:{fake.port}"  # api_path /v1 stripped
        assert backend.metadata["models"] == "mistral:7b,qwen"
        assert backend.metadata["api_path"] == "/v1"
        assert f":{fake.port}" in await chat(nexus, "mistral:7b")
        stream = await nexus.client.chat.completions.create(
            model="mistral:7b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            pass

        paths = [r.path for r in fake.requests]
        assert "/v1/models" in paths
        assert paths.count("/v1/chat/completions") == 2
        assert not [p for p in paths if "/v1/v1" in p]


async def test_grace_period_then_removal(tmp_path: Path, advertiser: Advertiser) -> None:
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(tmp_path, [], discovery=discovery_section(grace=1.0)) as nexus,
    ):
        info = await advertiser.register("grace", fake.port)
        name = full(advertiser, "grace")
        backend = await wait_healthy(nexus, name)

        lost_at = time.monotonic()
        await advertiser.unregister(info)
        await wait_until(lambda: backend.status is BackendStatus.UNKNOWN, timeout=5, what="unknown")
        assert nexus.state.registry.get_backend(backend.id) is backend  # kept during grace
        assert not nexus.state.registry.get_healthy_backends()  # and not routed to

        await wait_until(lambda: by_service(nexus, name) is None, timeout=5, what="removed")
        assert time.monotonic() - lost_at >= 0.9
        assert nexus.state.registry.get_backend(backend.id) is None


async def test_reappearance_keeps_the_same_backend(tmp_path: Path, advertiser: Advertiser) -> None:
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(tmp_path, [], discovery=discovery_section(grace=1.5)) as nexus,
    ):
        info = await advertiser.register("back", fake.port, txt={"version": "1"})
        name = full(advertiser, "back")
        backend = await wait_healthy(nexus, name)
        await chat(nexus, "llama3:8b")
        first_id, probes = backend.id, len(fake.requests)

        await advertiser.unregister(info)
        await wait_until(lambda: backend.status is BackendStatus.UNKNOWN, timeout=5, what="unknown")
        await advertiser.register("back", fake.port, txt={"version": "2"})
        again = await wait_healthy(nexus, name)

        assert again is backend and again.id == first_id
        assert again.total_requests == 1
        assert again.metadata["version"] == "2"
        assert len(fake.requests) > probes  # came back -> probed at once
        assert [b for b in nexus.state.registry if b.id == first_id] == [backend]
        await asyncio.sleep(2.0)  # past the old grace period: the timer was cancelled
        assert nexus.state.registry.get_backend(first_id) is backend
        assert backend.status is BackendStatus.HEALTHY


async def test_static_backend_wins_at_the_same_address(
    tmp_path: Path, advertiser: Advertiser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    lan = [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]
    async with FakeOllama([FakeModel("a")]) as a, FakeVLLM([FakeModel("b")]) as b:
        static = [
            {"name": "static-a", "url": f"http://localhost:{a.port}", "type": "ollama"},
            {"name": "static-b", "url": f"http://127.0.0.1:{b.port}/", "type": "vllm"},
        ]
        async with running_nexus(tmp_path, static, discovery=discovery_section()) as nexus:
            # Same address by other names: 127.0.0.1 for localhost, ::1, and (if this host
            # has one) its own LAN address -- only advertised as data, sent on loopback.
            await advertiser.register("dup-a", a.port, addresses=("127.0.0.1", "::1"))
            await advertiser.register("dup-b", b.port, LLM, {"type": "vllm", "api_path": "/v1"})
            if lan:
                await advertiser.register("dup-lan", a.port, addresses=(lan[0],))
            for label, kind in [("dup-a", OLLAMA), ("dup-b", LLM)] + (
                [("dup-lan", OLLAMA)] if lan else []
            ):
                await wait_log(caplog, full(advertiser, label, kind), "not added", "static")

            names = sorted(be.name for be in nexus.state.registry)
            assert "static-a" in names and "static-b" in names
            assert by_service(nexus, full(advertiser, "dup-a")) is None
            assert by_service(nexus, full(advertiser, "dup-b", LLM)) is None
            assert by_service(nexus, full(advertiser, "dup-lan")) is None
            assert len([be for be in nexus.state.registry if be.url.endswith(f":{a.port}")]) == 1


@pytest.mark.parametrize(
    "same_url",
    [False, True],
    ids=["localhost-alias-retired-by-reconcile", "exact-url-replaced-at-once"],
)
async def test_manual_backend_at_the_same_address_replaces_the_discovered_one(
    tmp_path: Path, advertiser: Advertiser, monkeypatch: pytest.MonkeyPatch, same_url: bool
) -> None:
    # The admin API is open to loopback callers only while no token is set.
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN", raising=False)
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(tmp_path, [], discovery=discovery_section()) as nexus,
    ):
        await advertiser.register("manual", fake.port)
        name = full(advertiser, "manual")
        discovered = await wait_healthy(nexus, name)
        assert discovered.url == fake.url  # advertised as 127.0.0.1

        # The exact URL is replaced by the admin API itself; the same server by another
        # name (localhost instead of 127.0.0.1) is retired by the next reconcile pass.
        url = fake.url if same_url else f"http://localhost:{fake.port}"
        status, body, _ = await nexus.post(
            "/admin/backends", {"url": url, "name": "by-hand", "type": "ollama"}
        )
        assert status == 201, body

        # Only this run's backends: a concurrent run's adverts share loopback multicast.
        def ours() -> list[tuple[str, DiscoverySource]]:
            return [
                (be.name, be.discovery_source)
                for be in nexus.state.registry
                if be.name == "by-hand" or advertiser.tag in be.name
            ]

        if not same_url:
            await wait_until(
                lambda: by_service(nexus, name) is None, timeout=5, what="discovered one retired"
            )
        assert by_service(nexus, name) is None
        assert nexus.state.registry.get_backend(discovered.id) is None
        assert ours() == [("by-hand", DiscoverySource.MANUAL)]
        by_hand = nexus.state.registry.find(url)
        assert by_hand is not None and by_hand.name == "by-hand"
        await asyncio.sleep(2.5)  # a reconcile pass later: the advert does not bring it back
        assert by_service(nexus, name) is None
        assert ours() == [("by-hand", DiscoverySource.MANUAL)]


async def test_two_ports_on_one_ip_are_two_backends(tmp_path: Path, advertiser: Advertiser) -> None:
    async with (
        FakeOllama([FakeModel("m-one")]) as one,
        FakeOllama([FakeModel("m-two")]) as two,
        running_nexus(tmp_path, [], discovery=discovery_section()) as nexus,
    ):
        host = f"box-{advertiser.tag}.local."
        await advertiser.register("one", one.port, server=host)
        await advertiser.register("two", two.port, server=host)
        b1 = await wait_healthy(nexus, full(advertiser, "one"))
        b2 = await wait_healthy(nexus, full(advertiser, "two"))

        assert b1 is not b2 and b1.id != b2.id and b1.name != b2.name
        assert {b1.url, b2.url} == {one.url, two.url}
        assert f":{one.port}" in await chat(nexus, "m-one")
        assert f":{two.port}" in await chat(nexus, "m-two")


async def test_same_instance_name_under_two_types_gets_two_names(
    tmp_path: Path, advertiser: Advertiser
) -> None:
    async with FakeOllama([FakeModel("x")]) as one, FakeVLLM([FakeModel("y")]) as two:
        async with running_nexus(tmp_path, [], discovery=discovery_section()) as nexus:
            await advertiser.register("gpu", one.port, OLLAMA)
            await advertiser.register("gpu", two.port, LLM, {"type": "vllm"})
            b1 = await wait_healthy(nexus, full(advertiser, "gpu", OLLAMA))
            b2 = await wait_healthy(nexus, full(advertiser, "gpu", LLM))
            assert {b1.name, b2.name} == {advertiser.name("gpu"), advertiser.name("gpu") + "-2"}


class IPv6Server:
    """A minimal OpenAI-compatible server on [::1] (the shared fakes listen on IPv4)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> IPv6Server:
        async def models(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            return web.json_response(
                {
                    "object": "list",
                    "data": [{"id": "six", "object": "model", "created": 0, "owned_by": "vllm"}],
                }
            )

        async def chat(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "six",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "over IPv6"},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                }
            )

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "::1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_only_advert(tmp_path: Path, advertiser: Advertiser) -> None:
    async with (
        IPv6Server() as server,
        running_nexus(tmp_path, [], discovery=discovery_section()) as nexus,
    ):
        await advertiser.register(
            "six", server.port, LLM, {"type": "vllm", "api_path": "/v1/"}, addresses=("::1",)
        )
        backend = await wait_healthy(nexus, full(advertiser, "six", LLM))
        assert backend.url == f"http://[::1]:{server.port}"
        assert await chat(nexus, "six") == "over IPv6"
        assert server.paths[-1] == "/v1/chat/completions"
        assert not [p for p in server.paths if "/v1/v1" in p]


async def test_discovery_failure_is_one_warning_and_static_backends_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nexus")
    # 203.0.113.1 (TEST-NET-3) is not on this host: binding fails, nothing is sent.
    section = discovery_section(interfaces=["203.0.113.1"])
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(
            tmp_path, [{"name": "static", "url": fake.url, "type": "ollama"}], discovery=section
        ) as nexus,
    ):
        await wait_log(caplog, "mDNS discovery unavailable", level=logging.WARNING)
        assert f":{fake.port}" in await chat(nexus, "llama3:8b")
        await asyncio.sleep(0.3)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert warnings[0].name == "nexus.discovery"
        assert "203.0.113.1" in warnings[0].getMessage()
        assert warnings[0].exc_info is None
        assert [b.name for b in nexus.state.registry] == ["static"]


async def test_bad_interface_name_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    section = discovery_section(interfaces=["no-such-if0"])
    async with running_nexus(tmp_path, [], discovery=section):
        record = await wait_log(caplog, "mDNS discovery unavailable", level=logging.WARNING)
        assert "no-such-if0" in record.getMessage()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1


async def test_start_returns_at_once_and_stop_is_clean(tmp_path: Path) -> None:
    from nexus.backends import ProbeClient
    from nexus.config import DiscoveryConfig, HealthCheckConfig
    from nexus.discovery import Discovery
    from nexus.health import HealthChecker
    from nexus.registry import Registry
    from nexus.transport import Pool

    registry = Registry()
    health = HealthChecker(registry, HealthCheckConfig(), {}, ProbeClient(Pool(1.0, 1.0), 1.0))
    discovery = Discovery(registry, DiscoveryConfig(interfaces=["127.0.0.1"]), health)
    started = time.perf_counter()
    await discovery.start()
    assert time.perf_counter() - started < 0.05
    await wait_until(lambda: discovery.available, timeout=5, what="browsing")
    await discovery.stop()
    assert not discovery.available


async def test_served_app_sends_and_listens_on_loopback_only(tmp_path: Path) -> None:
    # The discovery the app builds from `[discovery] interfaces = ["127.0.0.1"]`: every
    # socket zeroconf sends from is bound to 127.0.0.1 and sends its multicast through
    # 127.0.0.1 (lo); the wildcard listen socket joined the group on lo.
    async with running_nexus(tmp_path, [], discovery=discovery_section()) as nexus:
        discovery = nexus.state.discovery
        assert discovery is not None
        await wait_until(lambda: discovery.available, timeout=5, what="browsing")
        assert discovery._aiozc is not None
        engine = discovery._aiozc.zeroconf.engine
        assert engine.senders
        for wrapped in engine.senders:
            sock = wrapped.transport.get_extra_info("socket")
            assert sock.getsockname() == ("127.0.0.1", 5353)
            multicast_if = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
            assert socket.inet_ntoa(multicast_if) == "127.0.0.1"
        bound = {w.transport.get_extra_info("socket").getsockname() for w in engine.readers}
        assert bound <= {("127.0.0.1", 5353), ("0.0.0.0", 5353)}
    assert not discovery.available  # the app's shutdown stopped it


async def test_discovered_backend_ranks_below_configured_and_never_gets_client_credentials(
    tmp_path: Path, advertiser: Advertiser
) -> None:
    # A LAN device announcing a popular model must not take traffic (and keys) from the
    # backend the admin configured; it serves only when no configured backend can.
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as configured,
        FakeOllama([FakeModel("llama3:8b")]) as stranger,
        running_nexus(
            tmp_path,
            [{"name": "mine", "url": configured.url, "type": "ollama", "priority": 90}],
            discovery=discovery_section(),
        ) as nexus,
    ):
        await advertiser.register("stranger", stranger.port, OLLAMA)
        await wait_healthy(nexus, full(advertiser, "stranger"))
        for _ in range(6):  # priority 90 vs 50 would favour the stranger under smart routing
            assert f":{configured.port}" in await chat(nexus, "llama3:8b")
        assert stranger.chat_requests == []
        await configured.stop()
        reply = await nexus.client.with_options(max_retries=1).chat.completions.create(
            model="llama3:8b", messages=[{"role": "user", "content": "hi"}]
        )
        assert f":{stranger.port}" in str(reply.choices[0].message.content)
        assert "Authorization" not in stranger.chat_requests[-1].headers


async def test_discovery_allow_list_keeps_other_devices_out(
    tmp_path: Path, advertiser: Advertiser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(
            tmp_path, [], discovery=discovery_section(allow=["10.9.8.0/24", "gpu-box"])
        ) as nexus,
    ):
        await advertiser.register("intruder", fake.port, OLLAMA)
        await wait_log(caplog, "not added", "not in discovery.allow")
        assert by_service(nexus, full(advertiser, "intruder")) is None
        await advertiser.register("allowed", fake.port + 0, OLLAMA, server="gpu-box.local.")
        backend = await wait_healthy(nexus, full(advertiser, "allowed"))
        assert backend.metadata["mdns_host"] == "gpu-box.local"


async def test_hostile_instance_names_are_made_safe(tmp_path: Path, advertiser: Advertiser) -> None:
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as fake,
        running_nexus(tmp_path, [], discovery=discovery_section()) as nexus,
    ):
        # zeroconf will not announce control characters (tests/discovery/test_parsing.py
        # covers those); quotes, "=", non-ASCII and spaces it will.
        await advertiser.register('evil name="x" backend=ünï', fake.port, OLLAMA)
        backend = await wait_until(
            lambda: next((b for b in nexus.state.registry if b.name.startswith("evil")), None),
            timeout=8,
            what="the advertised backend",
        )
        assert len(backend.name) <= 64 and all(c.isprintable() for c in backend.name)
        assert all(c.isascii() and c not in '"=' for c in backend.name), backend.name
        await wait_healthy(nexus, backend.metadata["mdns_service"])
        await chat(nexus, "llama3:8b")
        text = nexus.state.metrics.exposition().decode()
        assert f'backend="{backend.name}"' in text


async def test_nexus_backends_marks_discovered_backends(
    tmp_path: Path, advertiser: Advertiser
) -> None:
    footnote = "* discovered on the LAN: used for a model only when no configured backend"
    async with (
        FakeOllama([FakeModel("llama3:8b")]) as configured,
        FakeOllama([FakeModel("llama3:8b")]) as stranger,
    ):
        mine = {"name": "mine", "url": configured.url, "type": "ollama"}
        async with running_nexus(tmp_path, [mine]) as nexus:  # discovery off: no mark
            code, out, err = await nexus_cli("backends", "--url", nexus.url)
            assert code == 0, err
            assert "mDNS" not in out and footnote not in out
        async with running_nexus(tmp_path, [mine], discovery=discovery_section()) as nexus:
            await advertiser.register("stranger", stranger.port, OLLAMA)
            backend = await wait_healthy(nexus, full(advertiser, "stranger"))
            code, out, err = await nexus_cli("backends", "--url", nexus.url)
            assert code == 0, err
            rows = {line.split()[1]: line for line in out.splitlines() if "│ " in line}
            assert "mDNS*" in rows[backend.name] and "mDNS" not in rows["mine"]
            assert "static" in rows["mine"]
            assert footnote in out and "discovery.allow" in out
            code, out, err = await nexus_cli("backends", "--json", "--url", nexus.url)
            sources = {b["name"]: b["discovery_source"] for b in json.loads(out)}
            assert sources["mine"] == "static" and sources[backend.name] == "mdns"
