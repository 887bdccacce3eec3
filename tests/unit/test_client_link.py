"""ClientLink.answer writes what uvicorn's send writes for the same answer, in one write."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from nexus.asgi import Headers, link
from nexus.asgi.link import ClientLink

pytestmark = pytest.mark.timeout(10)

HEADERS: Headers = [
    (b"server", b"nexus"),
    (b"content-type", b"application/json"),
    (b"content-length", b"11"),
    (b"x-nexus-backend", b"gpu box\tone"),  # a tab is a value's own
]


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def make_cycle(
    *, keep_alive: bool = True, method: str = "POST"
) -> tuple[Any, Transport, list[int]]:
    transport = Transport()
    completed: list[int] = []
    cycle: Any = RequestResponseCycle(
        scope={"method": method},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=None,  # type: ignore[arg-type]
        access_logger=None,  # type: ignore[arg-type]
        access_log=False,
        default_headers=[(b"date", b"Sun, 06 Dec 2026 12:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(1),
    )
    return cycle, transport, completed


async def through_asgi(cycle: Any, status: int, headers: Headers, body: bytes) -> None:
    await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
    await cycle.send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_the_same_bytes_as_uvicorns_send_in_one_write(keep_alive: bool) -> None:
    ours, ours_out, ours_done = make_cycle(keep_alive=keep_alive)
    theirs, theirs_out, theirs_done = make_cycle(keep_alive=keep_alive)
    client = ClientLink()
    client.attach(ours)
    assert client.answer(201, list(HEADERS), b'{"ok":true}')
    await through_asgi(theirs, 201, list(HEADERS), b'{"ok":true}')
    assert len(ours_out.writes) == 1 and len(theirs_out.writes) == 2
    assert ours_out.writes[0] == b"".join(theirs_out.writes)
    assert (ours_out.closed, ours_done) == (theirs_out.closed, theirs_done) == (not keep_alive, [1])
    assert ours.response_complete and ours.message_event.is_set()


@pytest.mark.parametrize(
    "header",
    [(b"x-bad\r\nset-cookie", b"1"), (b"x-ok", b"a\r\nset-cookie: 1"), (b"x-ok", b"nul\0")],
    ids=["name", "value-crlf", "value-nul"],
)
def test_a_header_uvicorn_refuses_is_refused_before_anything_is_written(
    header: tuple[bytes, bytes],
) -> None:
    cycle, transport, _ = make_cycle()
    client = ClientLink()
    client.attach(cycle)
    with pytest.raises(RuntimeError, match="Invalid HTTP header"):
        client.answer(200, [*HEADERS, header], b"{}")
    assert transport.writes == [] and not cycle.response_started


def test_what_answer_cannot_do_goes_through_send() -> None:
    client = ClientLink()
    assert not client.answer(200, list(HEADERS), b"{}")  # no cycle (not under NexusProtocol)
    head, transport, _ = make_cycle(method="HEAD")
    client.attach(head)
    assert not client.answer(200, list(HEADERS), b"{}")
    paused, transport, _ = make_cycle()
    paused.flow.pause_writing()  # the client reads slowly: only send() waits that out
    client.attach(paused)
    assert not client.answer(200, list(HEADERS), b"{}") and transport.writes == []
    gone, transport, done = make_cycle()
    gone.disconnected = True
    client.attach(gone)
    assert client.answer(200, list(HEADERS), b"{}") and transport.writes == [] and not done


def test_the_installed_uvicorn_has_what_answer_uses() -> None:
    assert link.check() == []


async def test_a_whole_body_is_what_receive_would_give_and_a_partial_one_is_left_to_it() -> None:
    ours, _, _ = make_cycle()
    theirs, _, _ = make_cycle()
    for cycle in (ours, theirs):
        cycle.body += b'{"model": "m"}'
        cycle.more_body = False  # on_message_complete: all of it is here
        cycle.message_event.set()
    client = ClientLink()
    client.attach(ours)
    message = await theirs.receive()
    assert client.body() == message["body"] == b'{"model": "m"}'
    assert not ours.message_event.is_set() and ours.body == theirs.body == bytearray()
    partial, _, _ = make_cycle()
    partial.body += b'{"model": '  # more to come: only receive() waits for it
    client.attach(partial)
    assert client.body() is None and partial.body == bytearray(b'{"model": ')


def test_a_request_makes_no_reference_cycle() -> None:
    """The scope holds the link and the cycle holds the scope: the link's own reference
    to the cycle is weak, so a finished request is freed at once, not by the collector."""
    cycle, _, _ = make_cycle()
    client = ClientLink()
    cycle.scope["extensions"] = {"nexus.client": client}
    client.attach(cycle)
    assert client._cycle() is cycle
    gone = weakref.ref(cycle)
    gc.disable()
    try:
        del cycle, client
        assert gone() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_every_byte_in_a_value_is_refused_exactly_when_uvicorns_send_refuses_it(
    keep_alive: bool,
) -> None:
    for byte in range(256):
        headers = [*HEADERS, (b"x-probe", b"a" + bytes([byte]) + b"b")]
        theirs, _, _ = make_cycle(keep_alive=keep_alive)
        try:
            await through_asgi(theirs, 200, headers, b'{"ok":true}')
            refused = False
        except RuntimeError:
            refused = True
        ours, out, _ = make_cycle(keep_alive=keep_alive)
        client = ClientLink()
        client.attach(ours)
        if refused:
            with pytest.raises(RuntimeError):
                client.answer(200, headers, b'{"ok":true}')
            assert out.writes == []
        else:
            assert client.answer(200, headers, b'{"ok":true}') and len(out.writes) == 1
