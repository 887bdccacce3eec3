"""Child processes of a benchmark run: spawning, readiness, RSS, and clean shutdown.

Everything binds to 127.0.0.1. Children get the parent's environment minus ``NEXUS_*``
variables (so a developer's own settings cannot change what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import aiohttp
import orjson

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"

# Nexus as the benchmarks run it (``nexus_serve``): one backend, the fake upstream.
NEXUS_TOML = """\
[server]
host = "127.0.0.1"
port = {port}
# 1000 slow streams are measured; the default limit (1000) leaves no room for a probe.
max_concurrent_requests = 1100

[discovery]
enabled = false

[health_check]
interval_seconds = 5

[logging]
level = "info"
format = "json"

[[backends]]
name = "upstream"
url = "{upstream}"
type = "vllm"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MB (VmRSS from /proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used so far (from /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(pythonpath: Sequence[str] = ()) -> dict[str, str]:
    """``pythonpath`` goes first: it wins over the editable install's ``src`` (a ``.pth``
    entry, searched after PYTHONPATH), which is how a baseline checkout's code is run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    paths = [*pythonpath, str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _open_log(path: Path) -> IO[bytes]:
    return open(path, "wb")  # handed to the child; closed in Proc.stop


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def rss(self) -> float | None:
        return rss_mb(self.pid)

    async def stop(self, timeout: float = 5.0) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                # (A child stuck in the kernel does not die even so: not waited on for ever.)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


async def spawn(
    name: str,
    args: Sequence[str],
    log: Path,
    pythonpath: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> Proc:
    """``python ARGS`` in a child (``wrapper`` before it, e.g. valgrind and its options)."""
    handle = _open_log(log)
    proc = await asyncio.create_subprocess_exec(
        *wrapper,
        sys.executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=handle,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env(pythonpath),
        cwd=str(ROOT),
    )
    return Proc(name, proc, log, handle)


async def run_json(args: Sequence[str], timeout: float, pythonpath: Sequence[str] = ()) -> Any:
    """Run a child that prints one JSON document on stdout; return it parsed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(pythonpath),
        cwd=str(ROOT),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{args[:2]} did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return orjson.loads(out)


async def wait_until(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    ok: Any = None,
    timeout: float = 15.0,
    interval: float = 0.002,
    proc: Proc | None = None,
) -> float:
    """Poll ``url`` until it answers 200 (and ``ok(json)`` holds); seconds waited."""
    started = time.perf_counter()
    deadline = started + timeout
    last = ""
    while time.perf_counter() < deadline:
        if proc is not None and proc.proc.returncode is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}): {proc.tail()}")
        try:
            async with session.request(
                method, url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                data = await resp.read()
                if resp.status == 200 and (ok is None or ok(data)):
                    return time.perf_counter() - started
                last = f"HTTP {resp.status}: {data[:200]!r}"
        except (aiohttp.ClientError, OSError) as exc:
            last = repr(exc)
        await asyncio.sleep(interval)
    raise RuntimeError(f"{url} not ready after {timeout:g}s: {last}")


async def wait_chat(
    session: aiohttp.ClientSession,
    base: str,
    body: str,
    *,
    proc: Proc | None = None,
    timeout: float = 15.0,
    interval: float = 0.002,
) -> float:
    """``wait_until`` a chat request (``body``) to ``base`` is answered; seconds waited."""
    return await wait_until(
        session,
        "POST",
        base + CHAT_PATH,
        body=body.encode(),
        proc=proc,
        timeout=timeout,
        interval=interval,
    )


def nexus_serve(toml: Path, port: int, upstream: str) -> list[str]:
    """Write Nexus's config (``NEXUS_TOML``: ``port``, the backend ``upstream``) to ``toml``;
    the arguments of ``python`` that serve it."""
    toml.write_text(NEXUS_TOML.format(port=port, upstream=upstream))
    return ["-m", "nexus", "serve", "-c", str(toml)]


# -- --baseline SRC: another checkout's Nexus, measured as "before" -------------------------


def baseline_src(parser: argparse.ArgumentParser, src: Path | None) -> Path | None:
    """``--baseline SRC`` resolved; the parser exits unless SRC holds nexus/__init__.py."""
    if src is None:
        return None
    src = src.resolve()
    if not (src / "nexus" / "__init__.py").is_file():
        parser.error(f"--baseline {src}: no nexus/__init__.py there (give its src/)")
    return src


async def baseline_origin(src: Path) -> dict[str, Any]:
    """Where "before" imports ``nexus`` from, asked of a child with the environment its
    server gets: a path mistake must fail the run, not measure the current code twice."""
    code = (
        "import json, os, nexus; "
        "print(json.dumps([os.path.realpath(nexus.__file__), nexus.__version__]))"
    )
    path, version = await run_json(["-c", code], timeout=60, pythonpath=[str(src)])
    if not Path(path).is_relative_to(src):
        raise SystemExit(f"--baseline {src}: the child imported nexus from {path}")
    print(f"before: nexus {version} imported from {path}", file=sys.stderr, flush=True)
    return {"nexus_file": path, "nexus_version": version}


def baseline_meta(src: Path | None) -> dict[str, Any]:
    if src is None:
        return {}
    return {"baseline": {"src": str(src), "commit": git_commit(src)}}


def git_commit(src: Path) -> str | None:
    """The commit checked out where ``src`` lives (None outside a git work tree)."""
    done = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or None


RESULTS_DIR = ROOT / "benchmarks" / "results"


class Bench(Protocol):
    async def run(self) -> dict[str, Any]: ...
    async def stop(self) -> None: ...
    def cleanup(self) -> None: ...


async def drive(bench: Bench) -> dict[str, Any]:
    """Run a benchmark; its children are stopped and its files removed however it ends (a
    SIGTERM cancels it, as Ctrl-C does)."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await bench.run()
    finally:
        await bench.stop()
        bench.cleanup()


def save(results: dict[str, Any], path: str | None, prefix: str) -> Path:
    """Write the results as JSON to ``path``, by default benchmarks/results/PREFIX-DATE.json."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(path) if path else RESULTS_DIR / f"{prefix}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results: {out}")
    return out
