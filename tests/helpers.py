"""Run Nexus exactly as ``nexus serve`` does (TOML file -> config.load -> Server), in-process.

``running_nexus`` writes a real config file, loads it through the same loader the CLI uses,
starts the same ``Server`` on 127.0.0.1 (port 0) and waits until every backend has been
probed once, so tests start from a settled registry.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from openai import AsyncOpenAI

from nexus import config as config_mod
from nexus.registry import BackendStatus
from nexus.server import Server
from nexus.state import AppState
from tests.fakes import FakeBackend


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync, or returning an awaitable) until it returns a truthy value,
    and return that value. After ``timeout`` seconds: AssertionError naming ``what`` and the
    last value seen. Use it instead of a fixed sleep before an assert: wait for the asserted
    condition itself, however long the machine takes, up to the bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            remaining = max(deadline - loop.time(), interval)
            try:
                async with asyncio.timeout(remaining):
                    value = await value
            except TimeoutError:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what} (one check hung)"
                ) from None
        last = value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for test configs (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        qkey = json.dumps(key) if not key.replace("_", "").isalnum() else key
        full = f"{prefix}.{qkey}" if prefix else qkey
        if isinstance(value, Mapping):
            tables.append(f"\n[{full}]\n" + to_toml(value, full))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for item in value:
                tables.append(f"\n[[{full}]]\n" + to_toml(item, full))
        else:
            lines.append(f"{qkey} = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + "".join(tables)


def backend_entry(fake: FakeBackend, name: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": fake.url, "type": kind, **extra}


@dataclass
class Nexus:
    url: str
    server: Server
    client: AsyncOpenAI

    @property
    def state(self) -> AppState:
        return self.server.state

    async def get(self, path: str) -> tuple[int, Any, Mapping[str, str]]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url + path, json=body if data is None else None, data=data, headers=headers
            ) as resp,
        ):
            raw = await resp.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw
            return resp.status, parsed, resp.headers

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until no backend is in the Unknown state any more."""
        await wait_until(
            lambda: all(b.status is not BackendStatus.UNKNOWN for b in self.state.registry),
            timeout=timeout,
            interval=0.01,
            what="every backend probed once",
        )

    def pending(self) -> dict[str, int]:
        return {b.name: b.pending_requests for b in self.state.registry}


def default_sections(backends: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "request_timeout_seconds": 5,
            "stream_idle_timeout_seconds": 2,
            "connect_timeout_seconds": 2,
        },
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 30, "timeout_seconds": 2},
        "backends": backends,
    }


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@asynccontextmanager
async def running_nexus(
    tmp_path: Path, backends: list[dict[str, Any]], **sections: Any
) -> AsyncIterator[Nexus]:
    cfg = config_mod.load(write_config(tmp_path, backends, **sections), env={})
    server = Server(cfg)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=15)
    nexus = Nexus(url=url, server=server, client=client)
    try:
        await nexus.settle()
        yield nexus
    finally:
        await client.close()
        await server.stop()


@dataclass
class NexusProcess:
    """``python -m nexus serve`` as a child process, exactly as a user runs it."""

    proc: asyncio.subprocess.Process
    url: str
    lines: list[str]
    _reader: asyncio.Task[None]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            async with asyncio.timeout(15):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        # Its last lines may still be in the pipe: read them to the end before returning.
        try:
            async with asyncio.timeout(5):
                await asyncio.shield(self._reader)
        except TimeoutError:
            self._reader.cancel()
        return code

    async def health(self) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/health") as r:
            return await r.json()

    async def wait_healthy(self, backends: int | None = None, timeout: float = 10.0) -> Any:
        """Until /health says every backend (``backends`` of them, if given) is healthy: the
        first probes are in."""

        async def healthy() -> Any:
            summary = await self.health()
            done = summary["status"] == "healthy" and (
                backends is None or summary["backends"]["total"] == backends
            )
            return summary if done else None

        return await wait_until(healthy, timeout=timeout, interval=0.05, what="/health healthy")


async def nexus_cli(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m nexus ARGS``; returns (exit code, stdout, stderr)."""
    import os
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


def spawn_nexus(
    config_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> AbstractAsyncContextManager[NexusProcess]:
    """``nexus serve -c CONFIG ARGS`` in a child process."""
    return _spawn(["-c", str(config_path), *args], env=env, cwd=None)


def spawn_nexus_without_config(
    cwd: Path, env: Mapping[str, str]
) -> AbstractAsyncContextManager[NexusProcess]:
    """``nexus serve`` with no flags, in ``cwd`` (which holds no nexus.toml)."""
    return _spawn([], env=env, cwd=cwd)


@asynccontextmanager
async def _spawn(
    args: list[str], *, env: Mapping[str, str] | None, cwd: Path | None
) -> AsyncIterator[NexusProcess]:
    import os
    import re
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus",
        "serve",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**environ, **(env or {})},
        cwd=cwd,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            match = re.search(r"listening on http://[^:]+:(\d+)", line)
            if match and not found.done():
                found.set_result(f"http://127.0.0.1:{match.group(1)}")
        if not found.done():
            found.set_exception(RuntimeError("nexus exited:\n" + "\n".join(lines)))

    reader = asyncio.create_task(read())
    async with asyncio.timeout(20):
        url = await found
    child = NexusProcess(proc=proc, url=url, lines=lines, _reader=reader)
    try:
        yield child
    finally:
        await child.stop()


def write_config(tmp_path: Path, backends: list[dict[str, Any]], **sections: Any) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(to_toml(merge(default_sections(backends), sections)))
    return path
