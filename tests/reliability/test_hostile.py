"""Hostile and malformed requests: every one a 4xx in OpenAI shape, never a 5xx, and the
server healthy afterwards. Raw sockets where a client library would refuse to send it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus

CHAT = "/v1/chat/completions"
OK_MSG = '[{"role": "user", "content": "hi"}]'


def body(text: str) -> bytes:
    return text.encode()


def deep(n: int) -> bytes:
    return b'{"model": "m", "messages": ' + b"[" * n + b"]" * n + b"}"


# (name, path, content-type, raw body)
CORPUS: list[tuple[str, str, str, bytes]] = [
    ("empty body", CHAT, "application/json", b""),
    ("whitespace body", CHAT, "application/json", b"   \n "),
    ("not json", CHAT, "application/json", b"hello"),
    ("truncated json", CHAT, "application/json", b'{"model": "m", "messages": ['),
    ("json array", CHAT, "application/json", b"[1, 2, 3]"),
    ("json string", CHAT, "application/json", b'"model"'),
    ("json null", CHAT, "application/json", b"null"),
    ("json number", CHAT, "application/json", b"42"),
    (
        "invalid utf-8",
        CHAT,
        "application/json",
        b'{"model": "m\xff\xfe", "messages": ' + OK_MSG.encode() + b"}",
    ),
    (
        "lone surrogate escape",
        CHAT,
        "application/json",
        body('{"model": "\\ud800", "messages": ' + OK_MSG + "}"),
    ),
    (
        "NaN",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "temperature": NaN}'),
    ),
    (
        "Infinity",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "top_p": Infinity}'),
    ),
    ("deep nesting", CHAT, "application/json", deep(100_000)),
    (
        "nested messages",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": [[[[{"role": "user"}]]]]}'),
    ),
    ("missing model", CHAT, "application/json", body('{"messages": ' + OK_MSG + "}")),
    ("model null", CHAT, "application/json", body('{"model": null, "messages": ' + OK_MSG + "}")),
    ("model number", CHAT, "application/json", body('{"model": 7, "messages": ' + OK_MSG + "}")),
    (
        "model object",
        CHAT,
        "application/json",
        body('{"model": {"a": 1}, "messages": ' + OK_MSG + "}"),
    ),
    ("model empty", CHAT, "application/json", body('{"model": "", "messages": ' + OK_MSG + "}")),
    (
        "model huge",
        CHAT,
        "application/json",
        body('{"model": "' + "x" * 100_000 + '", "messages": ' + OK_MSG + "}"),
    ),
    (
        "model control chars",
        CHAT,
        "application/json",
        body('{"model": "m\\u0000\\n", "messages": ' + OK_MSG + "}"),
    ),
    (
        "model path traversal",
        CHAT,
        "application/json",
        body('{"model": "../../etc/passwd", "messages": ' + OK_MSG + "}"),
    ),
    (
        "model unicode",
        CHAT,
        "application/json",
        body('{"model": "模型-🦙-ünïcödé", "messages": ' + OK_MSG + "}"),
    ),
    (
        "model url",
        CHAT,
        "application/json",
        body('{"model": "http://evil/x?y=1#z", "messages": ' + OK_MSG + "}"),
    ),
    ("messages missing", CHAT, "application/json", body('{"model": "m"}')),
    ("messages empty", CHAT, "application/json", body('{"model": "m", "messages": []}')),
    ("messages string", CHAT, "application/json", body('{"model": "m", "messages": "hi"}')),
    (
        "messages object",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": {"role": "user"}}'),
    ),
    ("message null", CHAT, "application/json", body('{"model": "m", "messages": [null]}')),
    (
        "role number",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": [{"role": 1, "content": "x"}]}'),
    ),
    (
        "content number",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": [{"role": "user", "content": 1}]}'),
    ),
    (
        "content part not object",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": [{"role": "user", "content": ["x"]}]}'),
    ),
    (
        "content part no type",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}'),
    ),
    (
        "text part not string",
        CHAT,
        "application/json",
        body(
            '{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}'
        ),
    ),
    (
        "stream string",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "stream": "true"}'),
    ),
    (
        "stream_options list",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "stream_options": []}'),
    ),
    (
        "n zero",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "n": 0}'),
    ),
    (
        "n huge",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "n": 100000}'),
    ),
    (
        "n float",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "n": 1.5}'),
    ),
    (
        "max_tokens negative",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "max_tokens": -1}'),
    ),
    (
        "max_tokens huge",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "max_tokens": 99999999999999999999}'),
    ),
    (
        "max_tokens bool",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "max_tokens": true}'),
    ),
    (
        "temperature string",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "temperature": "hot"}'),
    ),
    (
        "temperature out of range",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "temperature": 1e308}'),
    ),
    (
        "tools object",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "tools": {"a": 1}}'),
    ),
    (
        "response_format string",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "response_format": "json"}'),
    ),
    (
        "response_format no type",
        CHAT,
        "application/json",
        body('{"model": "m", "messages": ' + OK_MSG + ', "response_format": {}}'),
    ),
    ("wrong content-type form", CHAT, "application/x-www-form-urlencoded", b"model=m&messages=hi"),
    ("wrong content-type xml", CHAT, "application/xml", b"<model>m</model>"),
    ("multipart", CHAT, "multipart/form-data; boundary=x", b"--x\r\n\r\nhi\r\n--x--"),
    ("embeddings no input", "/v1/embeddings", "application/json", body('{"model": "m"}')),
    (
        "embeddings input object",
        "/v1/embeddings",
        "application/json",
        body('{"model": "m", "input": {"a": 1}}'),
    ),
    (
        "embeddings input empty list",
        "/v1/embeddings",
        "application/json",
        body('{"model": "m", "input": []}'),
    ),
    (
        "embeddings mixed list",
        "/v1/embeddings",
        "application/json",
        body('{"model": "m", "input": ["a", {"b": 1}]}'),
    ),
    ("unknown path traversal", "/v1/../../etc/passwd", "application/json", b"{}"),
    ("unknown endpoint", "/v1/completions/%2e%2e/x", "application/json", b"{}"),
    ("admin bad json", "/admin/backends", "application/json", b"{oops"),
    (
        "admin bad scheme",
        "/admin/backends",
        "application/json",
        body('{"url": "file:///etc/passwd"}'),
    ),
    (
        "admin javascript url",
        "/admin/backends",
        "application/json",
        body('{"url": "javascript:alert(1)"}'),
    ),
]


@pytest.fixture
async def nexus(tmp_path: Path) -> AsyncIterator[Nexus]:
    async with FakeVLLM([FakeModel("m")]) as fake:
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server={"max_request_bytes": 65536}
        ) as n:
            yield n


async def raw_request(nexus: Nexus, request: bytes, read_limit: int = 65536) -> tuple[int, bytes]:
    port = int(nexus.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read(read_limit)
            while b"\r\n\r\n" in data and not _complete(data):
                more = await reader.read(read_limit)
                if not more:
                    break
                data += more
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def _complete(data: bytes) -> bool:
    head, _, payload = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(payload) >= int(line.split(b":")[1])
    return True


def http(path: str, ctype: str, payload: bytes, extra: bytes = b"") -> bytes:
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + payload
    )


def assert_openai_4xx(status: int, payload: bytes, name: str) -> dict[str, Any]:
    assert 400 <= status < 500, (name, status, payload[:300])
    data = json.loads(payload)
    assert set(data) == {"error"}, name
    assert {"message", "type", "param", "code"} <= set(data["error"]), name
    return data["error"]  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
async def test_corpus_is_all_4xx_openai_shaped(nexus: Nexus) -> None:
    assert len(CORPUS) >= 40
    for name, path, ctype, payload in CORPUS:
        status, reply = await raw_request(nexus, http(path, ctype, payload))
        assert_openai_4xx(status, reply, name)
    await assert_healthy(nexus)


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 66_000 + b"\r\n",  # just over 64 KiB: one read holds it all
        b"X-Big: " + b"a" * 100_000 + b"\r\n",
        b"".join(b"X-%05d: %s\r\n" % (i, b"v" * 60) for i in range(1_100)),  # many small ones
    ],
    ids=["66k", "100k", "1100-headers"],
)
async def test_a_head_over_64_kib_is_431_however_it_arrives(nexus: Nexus, extra: bytes) -> None:
    """Whole in one read or not, a head over the limit never reaches the app."""
    status, reply = await raw_request(nexus, http(CHAT, "application/json", b"{}", extra))
    error = assert_openai_4xx(status, reply, "big head")
    assert status == 431 and error["code"] == "http_431"  # the app would have said 400
    await assert_healthy(nexus)


@pytest.mark.parametrize("pipelined", [False, True], ids=["after-answer", "pipelined"])
async def test_a_head_over_64_kib_on_a_kept_alive_connection_is_431(
    nexus: Nexus, pipelined: bool
) -> None:
    """The second request of a connection: its head's size is counted from where it began,
    whether it came alone or in the same read as the first request."""
    port = int(nexus.url.rsplit(":", 1)[1])
    first = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    big = http(CHAT, "application/json", b"{}", b"X-Big: " + b"a" * 66_000 + b"\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            if pipelined:
                writer.write(first + big)
            else:
                writer.write(first)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(big)
            data = await reader.read()  # until the close that follows the 431
    finally:
        writer.close()
    # (Pipelined, the 431 goes out as the head is parsed, before the first answer: the
    # connection's framing is lost and it closes.)
    assert data.startswith(b"HTTP/1.1 431 ") and data.count(b"HTTP/1.1 ") == 1
    await assert_healthy(nexus)


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        (
            "gigantic header",
            http(CHAT, "application/json", b"{}", b"X-Big: " + b"a" * 200_000 + b"\r\n"),
        ),
        (
            "many headers",
            http(CHAT, "application/json", b"{}", b"".join(b"X-%d: v\r\n" % i for i in range(500))),
        ),
        (
            "body over the limit",
            http(CHAT, "application/json", b'{"model": "' + b"a" * 70_000 + b'"}'),
        ),
        (
            "content-length lies (short)",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
        ),
        ("bad request line", b"GARBAGE\r\n\r\n"),
        ("bad method", b"BREW /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "bad chunking",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "header injection",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rb\r\n\r\n",
        ),
    ],
)
async def test_protocol_level_garbage_is_4xx_openai_shaped(
    nexus: Nexus, name: str, request_bytes: bytes
) -> None:
    status, reply = await raw_request(nexus, request_bytes)
    assert_openai_4xx(status, reply, name)
    await assert_healthy(nexus)


async def assert_healthy(nexus: Nexus) -> None:
    status, health, headers = await nexus.get("/health")
    assert status == 200 and health["status"] == "healthy"
    assert headers["Server"] == "nexus"
    reply = await nexus.client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    assert nexus.state.in_flight == 0 and nexus.pending() == {"v": 0}
