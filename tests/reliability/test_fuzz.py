"""Hypothesis fuzzing of the request path: thousands of generated bodies, never a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
content = st.one_of(
    json_values,
    st.text(max_size=50),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "x"])},
            optional={"text": json_values, "image_url": json_values},
        ),
        max_size=3,
    ),
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), json_values),
        "content": content,
        "tool_calls": json_values,
        "tool_call_id": json_values,
        "name": json_values,
    },
)
chat_body = (
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.one_of(st.sampled_from(["m", "missing"]), json_values),
            "messages": st.one_of(st.lists(message, max_size=4), json_values),
            "stream": st.one_of(st.booleans(), json_values),
            "max_tokens": json_values,
            "n": json_values,
            "temperature": json_values,
            "top_p": json_values,
            "tools": json_values,
            "response_format": json_values,
            "stream_options": json_values,
            "logprobs": json_values,
            "seed": json_values,
        },
    )
    | json_values
)


class ThreadedNexus:
    """Nexus and a fake backend on their own event loop, so a sync fuzzer can drive them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # On uvloop, as `nexus serve` runs (and as the other tests' servers do).
        self.thread = threading.Thread(target=lambda: uvloop.run(self.main()), daemon=True)

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        async with FakeVLLM([FakeModel("m")]) as fake:
            async with running_nexus(self.tmp, [backend_entry(fake, "v", "vllm")]) as nexus:
                self.port = int(nexus.url.rsplit(":", 1)[1])
                self.nexus = nexus
                self.ready.set()
                await self.stop_event.wait()

    def __enter__(self) -> ThreadedNexus:
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(20)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedNexus]:
    with ThreadedNexus(tmp_path) as s:
        yield s


def post(conn: http.client.HTTPConnection, path: str, payload: bytes) -> tuple[int, bytes, str]:
    conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp.getheader("Content-Type") or ""


def check(status: int, raw: bytes, ctype: str) -> None:
    assert status < 500, (status, raw[:300])
    if status >= 400:
        error = json.loads(raw)["error"]
        assert {"message", "type", "param", "code"} <= set(error)
    elif ctype.startswith("text/event-stream"):
        assert raw.endswith(b"\n\n")
    else:
        assert "choices" in json.loads(raw) or "data" in json.loads(raw)


@pytest.mark.timeout(300)
def test_fuzz_chat_and_embeddings(server: ThreadedNexus) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    seen: dict[int, int] = {}

    @settings(
        max_examples=2500,
        deadline=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(
        chat_body,
        st.sampled_from(["/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings"]),
    )
    # Well-formed requests too, explicitly: the run must reach the backend, not only the 400s,
    # whatever the generator's luck on a given machine.
    @example(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "/v1/chat/completions"
    )
    @example(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/chat/completions",
    )
    @example({"model": "m", "messages": ["hi", "there"]}, "/v1/embeddings")
    def fuzz(body: Any, path: str) -> None:
        if isinstance(body, dict) and path.endswith("embeddings") and "messages" in body:
            body["input"] = body.pop("messages")
        status, raw, ctype = post(conn, path, orjson.dumps(body))
        seen[status] = seen.get(status, 0) + 1
        check(status, raw, ctype)

    fuzz()
    conn.close()
    assert 400 in seen and 200 in seen, seen  # the generator reaches both sides
    assert server.nexus.state.in_flight == 0
    assert all(v == 0 for v in server.nexus.pending().values())
