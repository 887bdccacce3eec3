"""The ``nexus`` command as a user runs it: serve in a child process, admin commands over HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import Behavior, FakeLlamaCpp, FakeModel, FakeOllama, FakeVLLM
from tests.helpers import (
    backend_entry,
    nexus_cli,
    spawn_nexus,
    spawn_nexus_without_config,
    wait_until,
    write_config,
)


async def test_version_and_help() -> None:
    code, out, _ = await nexus_cli("--version")
    assert code == 0 and "0.1.0" in out
    code, out, _ = await nexus_cli("--help")
    assert code == 0 and all(c in out for c in ("serve", "backends", "models", "health", "config"))


async def test_bad_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 1\n")
    code, _, err = await nexus_cli("serve", "-c", str(bad))
    assert code != 0
    assert "bad.toml: server.prot: unknown key" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = await nexus_cli("serve", "-c", str(tmp_path / "missing.toml"))
    assert code != 0 and "missing.toml: config file not found" in err


async def test_config_init_then_serve_accepts_it(tmp_path: Path) -> None:
    out = tmp_path / "gen.toml"
    code, _, _ = await nexus_cli("config", "init", "-o", str(out))
    assert code == 0 and out.exists()
    code, _, err = await nexus_cli("config", "init", "-o", str(out))
    assert code != 0 and "exists" in err
    # Loopback only, port 0, no mDNS: each of these must really be in the generated file, or
    # the server below would listen on 0.0.0.0:8000 and multicast on the LAN.
    text = out.read_text()
    for default, local in (
        ("port = 8000", "port = 0"),
        ('host = "0.0.0.0"', 'host = "127.0.0.1"'),
        (
            "[discovery]\n# Find backends on the LAN with mDNS.\nenabled = true",
            "[discovery]\nenabled = false",
        ),
    ):
        assert text.count(default) == 1, default
        text = text.replace(default, local)
    out.write_text(text)
    async with spawn_nexus(out) as nexus:
        async with aiohttp.ClientSession() as s, s.get(nexus.url + "/health") as r:
            assert r.status == 200


async def test_admin_commands_show_the_running_server(tmp_path: Path) -> None:
    async with (
        FakeOllama([FakeModel("llama3:8b"), FakeModel("llava", vision=True)]) as ollama,
        FakeVLLM([FakeModel("qwen", context_length=32768)]) as vllm,
        FakeLlamaCpp([FakeModel("smol")]) as extra,
    ):
        config = write_config(
            tmp_path,
            [
                backend_entry(ollama, "local-ollama", "ollama", priority=1),
                backend_entry(vllm, "gpu-server", "vllm"),
            ],
        )
        async with spawn_nexus(config) as nexus:
            env = {"NEXUS_URL": nexus.url}
            await nexus.wait_healthy(backends=2)  # first probes
            code, out, _ = await nexus_cli("backends", env=env)
            assert code == 0
            assert (
                "local-ollama" in out and "gpu-server" in out and "vLLM" in out and "Healthy" in out
            )
            code, out, _ = await nexus_cli("backends", "--json", env=env)
            assert code == 0, out
            data = json.loads(out)
            assert {b["name"] for b in data} == {"local-ollama", "gpu-server"}
            code, out, _ = await nexus_cli("backends", "--json", "--status", "unhealthy", env=env)
            assert code == 0, out
            assert json.loads(out) == []

            code, out, err = await nexus_cli(
                "backends", "add", extra.url, "--name", "laptop", env=env
            )
            assert code == 0, err
            assert "llama.cpp" in out and "healthy" in out  # type detected by probing
            code, out, _ = await nexus_cli("models", "--json", env=env)
            assert code == 0, out
            assert {m["id"] for m in json.loads(out)} == {"llama3:8b", "llava", "qwen", "smol"}
            code, out, _ = await nexus_cli("models", "--backend", "gpu-server", env=env)
            assert code == 0, out
            assert "qwen" in out and "32768" in out and "llama3:8b" not in out
            code, out, _ = await nexus_cli("health", env=env)
            assert code == 0, out
            assert (
                "Status: Healthy" in out
                and "Backends: 3/3 healthy" in out
                and "Models: 4 available" in out
            )
            code, out, _ = await nexus_cli("health", "--json", env=env)
            assert code == 0, out
            assert json.loads(out)["backends"]["total"] == 3

            code, out, _ = await nexus_cli("backends", "remove", extra.url, env=env)
            assert code == 0 and "laptop" in out
            code, _, err = await nexus_cli("backends", "remove", "laptop", env=env)
            assert code != 0 and "no backend" in err
            code, _, err = await nexus_cli("backends", "add", "ftp://x", env=env)
            assert code != 0 and "http" in err


async def test_admin_commands_when_server_is_down() -> None:
    code, _, err = await nexus_cli("backends", "--url", "http://127.0.0.1:1")
    assert code != 0
    assert "cannot reach Nexus at http://127.0.0.1:1" in err and "Traceback" not in err


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("qwen")]) as fake:
        fake.chat_behavior = Behavior.HANG
        config = write_config(
            tmp_path,
            [backend_entry(fake, "v", "vllm")],
            server={"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 60},
        )
        async with spawn_nexus(config) as nexus:
            await nexus.wait_healthy(backends=1)
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(
                    s.post(
                        nexus.url + "/v1/chat/completions",
                        json={"model": "qwen", "messages": [{"role": "user", "content": "x"}]},
                    )
                )
                await wait_until(lambda: fake.chat_requests, what="the request at the backend")
                nexus.proc.send_signal(signal.SIGTERM)
                await wait_until(
                    lambda: any("shutting down" in line for line in nexus.lines),
                    what="the first signal handled",
                )
                await asyncio.sleep(0.3)  # a while later: still
                assert nexus.proc.returncode is None  # draining, waiting on the hung request
                # A request refused while draining: its log line is buffered (request lines
                # are written every 0.25 s) when the second signal comes right after it.
                async with s.post(
                    nexus.url + "/v1/chat/completions",
                    json={"model": "qwen", "messages": [{"role": "user", "content": "y"}]},
                ) as refused:
                    assert refused.status == 503
                    request_id = refused.headers["X-Request-Id"]
                nexus.proc.send_signal(signal.SIGINT)
                async with asyncio.timeout(5):
                    code = await nexus.proc.wait()
                assert code != 0
                task.cancel()
        # Flushed before the exit: the refused request's line is in the log, whole.
        (line,) = [line for line in nexus.lines if request_id in line]
        assert "status=503" in line
        assert "second signal: exiting now" in nexus.lines[-1]


async def test_zero_config_first_run_finds_local_ollama(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No config file at all: defaults, plus Ollama's default address as a static backend.
    # Discovery is off here only because a test must never multicast beyond loopback.
    ollama = FakeOllama([FakeModel("llama3:8b")])
    try:
        await ollama.start(port=11434)
    except OSError:
        pytest.skip("port 11434 is in use on this machine")
    try:
        monkeypatch.chdir(tmp_path)
        env = {"NEXUS_HOST": "127.0.0.1", "NEXUS_PORT": "0", "NEXUS_DISCOVERY": "false"}
        async with spawn_nexus_without_config(tmp_path, env) as nexus:
            await nexus.wait_healthy(backends=1)
            code, out, _ = await nexus_cli("backends", "--json", env={"NEXUS_URL": nexus.url})
            assert code == 0
            (backend,) = json.loads(out)
            assert (backend["name"], backend["url"], backend["status"]) == (
                "local-ollama",
                "http://localhost:11434",
                "healthy",
            )
            log = "\n".join(nexus.lines)
            assert "no config file" in log and "dashboard: http://127.0.0.1:" in log
    finally:
        await ollama.stop()


@pytest.mark.parametrize(
    ("token", "wrong"),
    [
        ("tök-✓-管理", "tök-✓-wrong"),
        # Bytes that are not UTF-8 in the environment (Python holds them as lone surrogates).
        ("tök-\udce9-管理", "tök-\udce9-wrong"),
    ],
)
async def test_an_admin_token_beyond_latin1_reaches_the_server_from_the_cli(
    tmp_path: Path, token: str, wrong: str
) -> None:
    """The server reads the token as its bytes (UTF-8); the CLI must send it so (http.client
    would encode a header as latin-1 and fail on the first character beyond it)."""
    async with FakeVLLM([FakeModel("m")]) as vllm:
        config = write_config(tmp_path, [backend_entry(vllm, "box", "vllm")])
        async with spawn_nexus(config, env={"NEXUS_ADMIN_TOKEN": token}) as nexus:
            await nexus.wait_healthy(backends=1)
            env = {"NEXUS_URL": nexus.url, "NEXUS_ADMIN_TOKEN": token}
            code, out, err = await nexus_cli("backends", "--json", env=env)
            assert code == 0 and "Traceback" not in err, err
            assert [b["name"] for b in json.loads(out)] == ["box"]
            refused = {**env, "NEXUS_ADMIN_TOKEN": wrong}
            code, _, err = await nexus_cli(
                "backends", "add", vllm.url, "--name", "again", env=refused
            )
            assert code != 0 and "Traceback" not in err and "tök" not in err
