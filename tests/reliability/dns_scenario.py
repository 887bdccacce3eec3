"""Run inside a private network namespace (only loopback, no route anywhere): a backend
whose name does not resolve. Started by test_dns.py; prints one JSON line of findings."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus

MSG = [{"role": "user", "content": "hi"}]
GHOST = {"name": "ghost", "url": "http://llm-box.invalid:8000", "type": "vllm"}


async def main() -> dict[str, object]:
    found: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("a", "b"):
            (Path(tmp) / sub).mkdir()
        async with FakeVLLM([FakeModel("m")]) as good:
            backends = [GHOST, backend_entry(good, "good", "vllm")]
            async with running_nexus(Path(tmp) / "a", backends) as nexus:
                ghost = nexus.state.registry.find("ghost")
                assert ghost is not None
                found["ghost_status"] = ghost.status.value
                found["ghost_error"] = ghost.last_error
                status, body, headers = await nexus.post(
                    "/v1/chat/completions", {"model": "m", "messages": MSG}
                )
                found["with_alternative"] = [status, headers.get("X-Nexus-Backend")]
        async with running_nexus(Path(tmp) / "b", [GHOST]) as nexus:
            status, body, _ = await nexus.post(
                "/v1/chat/completions", {"model": "m", "messages": MSG}
            )
            found["without_alternative"] = [status, body["error"]["message"]]
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
    sys.exit(0)
