"""Reading a request and writing an answer over ASGI, with the bounds every input needs."""

from __future__ import annotations

import asyncio

import orjson

from nexus.asgi import Headers, Receive, Scope, Send
from nexus.asgi.link import ClientLink
from nexus.errors import ClientGone, NexusError, PayloadTooLarge, RequestTimeout

SERVER = b"nexus"  # instead of uvicorn's name: what runs here is nobody else's business
JSON = b"application/json"
# Every answer: never sniffed as HTML by a browser, whatever a backend put in it.
BASE_HEADERS: Headers = [(b"server", SERVER), (b"x-content-type-options", b"nosniff")]


def headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name, the first of each name. Made once per
    request and kept in the scope: a proxied request looks up half a dozen, and a client
    such as OpenAI's SDK sends fifteen (a scan of the list for each was 3 % of its CPU)."""
    found: dict[bytes, bytes] | None = scope.get("nexus.headers")
    if found is None:
        found = scope["nexus.headers"] = dict(reversed(scope["headers"]))
    return found


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` in lower case), as text; None when absent."""
    table = scope.get("nexus.headers") or headers(scope)  # (a call less, once it is made)
    value = table.get(name)
    return None if value is None else value.decode("latin-1")


def content_length(scope: Scope) -> int | None:
    text = header(scope, b"content-length")
    return int(text) if text is not None and text.isdigit() else None


def body_now(scope: Scope, limit: int, link: ClientLink | None) -> bytes | None:
    """The whole request body when it has all arrived (the usual case: with its head);
    else None, and ``read_body`` waits for it. 413 past ``limit``, as ``read_body``."""
    length = content_length(scope)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    whole = link.body() if link is not None else None
    if whole is not None and len(whole) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return whole


async def read_body(
    scope: Scope, receive: Receive, limit: int, seconds: float, link: ClientLink | None = None
) -> bytes:
    """The whole request body: 413 past ``limit`` (before reading it, when the client said
    its length: no ``100 Continue`` is sent for a body refused anyway), 408 when the client
    takes longer than ``seconds`` to send it."""
    whole = body_now(scope, limit, link)
    if whole is not None:
        return whole
    message = await receive()  # usually holds the whole body already: no timer for it
    body = message.get("body", b"")
    if message["type"] == "http.disconnect":
        raise ClientGone("client disconnected while sending its request")
    size = len(body)
    if size > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not message.get("more_body"):
        return body  # type: ignore[no-any-return]
    parts = [body]
    try:
        async with asyncio.timeout(seconds):
            while message.get("more_body"):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone("client disconnected while sending its request")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {seconds:g}s") from None
    return b"".join(parts)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: Headers | None = None,
    ctype: bytes = JSON,
    link: ClientLink | None = None,
) -> None:
    """A whole answer (head and body): in one write through ``link`` when it can."""
    head = whole_head(body, headers, ctype)
    if link is None or not link.answer(status, head, body):
        await send_whole(send, status, head, body)


def whole_head(body: bytes, headers: Headers | None = None, ctype: bytes = JSON) -> Headers:
    """The head of a whole answer: our base headers, its type and length, then ``headers``."""
    head = [*BASE_HEADERS, (b"content-type", ctype), (b"content-length", b"%d" % len(body))]
    if headers:
        head += headers
    return head


async def send_whole(send: Send, status: int, head: Headers, body: bytes) -> None:
    """A whole answer through ASGI: two messages."""
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, data: object, status: int = 200) -> None:
    await respond(send, status, orjson.dumps(data))


def error_headers(error: NexusError, request_id: str | None) -> Headers:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    return headers


async def respond_error(
    send: Send, error: NexusError, request_id: str | None = None, link: ClientLink | None = None
) -> None:
    body = error.body(request_id)
    await respond(send, error.status, body, error_headers(error, request_id), link=link)
