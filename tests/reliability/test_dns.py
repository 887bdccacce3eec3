"""A backend whose DNS name does not resolve, in a private network namespace so that the
lookup cannot leave the machine (only loopback exists there, with no route anywhere)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip to make a private network namespace",
)
async def test_unresolvable_backend_is_named_and_routed_around() -> None:
    script = f"ip link set lo up && exec {sys.executable} -m tests.reliability.dns_scenario"
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "--net",
        "sh",
        "-c",
        script,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    found = json.loads(out.decode().strip().splitlines()[-1])
    assert found["ghost_status"] == "unhealthy"
    assert found["ghost_error"] == "DNS resolution failed for llm-box.invalid"
    assert found["with_alternative"] == [200, "good"]
    status, message = found["without_alternative"]
    assert status == 503 and "ghost: DNS resolution failed for llm-box.invalid" in message
