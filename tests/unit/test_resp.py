"""The small Redis client's wire format (RESP2): commands out, replies in, split anywhere."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus.store.resp import Client, ReplyError, _Connection, _Incomplete, encode, parse


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode("HINCRBYFLOAT", b"k", 3, 0.25) == (
        b"*4\r\n$12\r\nHINCRBYFLOAT\r\n$1\r\nk\r\n$1\r\n3\r\n$4\r\n0.25\r\n"
    )
    assert (
        encode("SET", "k", "ключ")
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8\r\n" + "ключ".encode() + b"\r\n"
    )


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"+OK\r\n", b"OK"),
        (b":-42\r\n", -42),
        (b"$5\r\nhe\r\no\r\n", b"he\r\no"),  # a bulk string holds any bytes, CRLF too
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*3\r\n:1\r\n$1\r\n5\r\n*1\r\n$0\r\n\r\n", [1, b"5", [b""]]),
    ],
)
def test_replies(wire: bytes, reply: object) -> None:
    assert parse(wire) == (reply, len(wire))


def test_an_error_reply_is_a_value_not_a_raise() -> None:
    value, end = parse(b"-NOSCRIPT No matching script\r\n:1\r\n")
    assert isinstance(value, ReplyError) and str(value).startswith("NOSCRIPT")
    assert parse(b"-NOSCRIPT No matching script\r\n:1\r\n", end) == (1, end + 4)


@given(st.data())
def test_a_reply_cut_anywhere_is_incomplete_until_whole(data: st.DataObject) -> None:
    wire = b"*3\r\n:1\r\n$12\r\nhello\r\nworld\r\n*2\r\n+a\r\n$-1\r\n"
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(_Incomplete):
        parse(wire[:cut])
    assert parse(wire) == ([1, b"hello\r\nworld", [b"a", None]], len(wire))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1", ("127.0.0.1", 6379, False, None, None, 0)),
        ("redis://:p%40ss@host:7000/3", ("host", 7000, False, None, "p@ss", 3)),
        ("rediss://nexus:secret@redis.lan/0", ("redis.lan", 6379, True, "nexus", "secret", 0)),
    ],
)
def test_urls(url: str, expected: tuple[object, ...]) -> None:
    client = Client(url, 0.5)
    got = (client.host, client.port, client.tls, client.username, client.password, client.db)
    assert got == expected


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        Client("http://127.0.0.1:6379", 0.5)


class Sink:
    """A transport that takes what is written and never closes."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool:
        return False


def connected() -> _Connection:
    """A connection over :class:`Sink`, fed replies with ``data_received`` as the loop does."""
    connection = _Connection()
    connection.transport = Sink()  # type: ignore[assignment]
    return connection


async def test_a_reply_in_many_reads_and_two_in_one_are_each_delivered() -> None:
    connection = connected()
    first, second, third = connection.send(b"", 3)
    big = b"v" * 100_000
    wire = b"$%d\r\n%s\r\n" % (len(big), big) + b":7\r\n+OK\r\n"
    for start in range(0, len(wire) - 10, 4096):  # many reads, most ending mid-reply
        connection.data_received(wire[start : min(start + 4096, len(wire) - 10)])
    assert not first.done()  # no read so far ended with a CRLF that completes it
    connection.data_received(wire[len(wire) - 10 :])  # the end of it, and two more replies
    assert (first.result(), second.result(), third.result()) == (big, 7, b"OK")
    assert not connection.buffer
    await asyncio.sleep(0)


async def test_a_reply_whose_crlf_is_cut_between_two_reads_is_delivered() -> None:
    connection = connected()
    (reply,) = connection.send(b"", 1)
    connection.data_received(b"$3\r\nabc\r")
    assert not reply.done()
    connection.data_received(b"\n")  # the last read: no CRLF of its own
    assert reply.result() == b"abc" and not connection.buffer
