"""Optional throughput driver: ``wrk`` (Debian: ``apt-get install -y wrk``) with a Lua POST
script. Cheaper per request than the Python load generator, so on a small machine it
leaves more CPU to what is measured. Used when found on PATH (``--loadgen auto``)."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Target

LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
"""
UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _script(body: str, target: Target, directory: Path) -> Path:
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in target.headers.items()
    )
    path = directory / "post.lua"
    path.write_text(LUA.format(body=_lua_string(body), headers=headers))
    return path


def _latency(out: str, pct: str) -> float | None:
    match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    return float(match.group(1)) * UNITS[match.group(2)] if match else None


def parse(out: str, duration: float) -> dict[str, Any]:
    requests = re.search(r"(\d+) requests in", out)
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "rps": float(rps.group(1)) if rps else 0.0,
        "errors": {"count": errors, "samples": [] if not errors else [out[-500:]]},
        "p50_us": _latency(out, "50"),
        "p99_us": _latency(out, "99"),
    }


async def throughput(target: Target, body: str, conns: int, duration: float) -> dict[str, Any]:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    url = f"http://{target.host}:{target.port}{target.prefix}/v1/chat/completions"
    with tempfile.TemporaryDirectory(prefix="nexus-wrk-") as tmp:
        script = _script(body, target, Path(tmp))
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("wrk did not finish") from None
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.decode()[-1000:]}")
    return parse(out.decode(), seconds)
