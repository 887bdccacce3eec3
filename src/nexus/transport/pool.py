"""Keep-alive connections to backends, and the one call everything makes: ``request``.

Idle connections are kept per origin (scheme, host, port, TLS settings), most recently
used first, and dropped when the backend closes them or after ``IDLE_SECONDS`` unused. A
request written to a reused connection that the backend closed before answering a single
byte (it timed the connection out just as we sent) is sent once more on a fresh
connection: that race is the pool's business, and must not count as the backend failing.

Connecting tries a host's addresses the way RFC 8305 ("happy eyeballs") does: the next
address starts 250 ms after the previous one unless that one already failed, so an
unreachable IPv6 address does not eat the whole connect timeout. uvloop's own
``create_connection`` has no such option, hence ``_race``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from nexus import __version__
from nexus.transport.errors import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    InvalidHeader,
    connect_error,
)
from nexus.transport.http1 import Connection, Response, read_response

IDLE_SECONDS = 60.0
MAX_IDLE_PER_ORIGIN = 256
USER_AGENT = f"nexus/{__version__}"
DEFAULT_MAX_BODY = 128 * 1024 * 1024
STAGGER_SECONDS = 0.25

# (scheme, host, port), plus the TLS settings for https: connections made with one
# certificate policy are never lent to a backend configured with another.
OriginKey = tuple[object, ...]


class TLS(NamedTuple):
    """How a backend's certificate is checked: ``verify`` off for a self-signed home-lab
    box you trust, or ``ca_file`` naming the CA that signed it. (A named tuple: it is part
    of the key every request looks its origin up by, and a tuple hashes in C.)"""

    verify: bool = True
    ca_file: str = ""


@dataclass(frozen=True, slots=True)
class Origin:
    key: OriginKey
    host: str
    port: int
    tls: bool  # https
    settings: TLS  # how its certificate is checked (https only)
    prefix: str  # path of the backend's URL, prepended to every request path
    head: str  # the request-head lines every request to it has, after the path


def parse_origin(url: str, tls: TLS | None = None) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"invalid backend URL {url[:100]!r}")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise ConnectError(f"invalid port in backend URL {url[:100]!r}") from None
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    if parts.port:
        authority += f":{port}"
    head = (
        f" HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    )
    prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
    settings = tls or TLS()
    key: OriginKey = (parts.scheme, host, port, settings) if secure else (parts.scheme, host, port)
    return Origin(key, host, port, secure, settings, prefix, head)


class Pool:
    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        *,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_body = max_body  # most bytes a body read whole may have, decompressed
        self._origins: dict[tuple[str, TLS | None], Origin] = {}
        self._idle: dict[OriginKey, list[Connection]] = {}
        self._contexts: dict[TLS, ssl.SSLContext] = {}
        self._swept = time.monotonic()

    async def request(
        self,
        url: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        tls: TLS | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Response:
        """Send ``METHOD url+path`` and return the response once its head has arrived."""
        origin = self._origins.get((url, tls))
        if origin is None:
            origin = self._origins[(url, tls)] = parse_origin(url, tls)
        data = _request(origin, method, path, body, headers)
        seconds = self.read_timeout if read_timeout is None else read_timeout
        conn = self._take_idle(origin.key)
        if conn is not None:
            try:
                return await self._exchange(conn, data, seconds)
            except Disconnected as exc:
                if exc.answered:
                    raise
        conn = await self._connect(origin, connect_timeout or self.connect_timeout)
        return await self._exchange(conn, data, seconds)

    async def post(self, url: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        return await self.request(url, "POST", path, body, headers)

    def _exchange(
        self, conn: Connection, data: bytes, seconds: float
    ) -> Coroutine[Any, Any, Response]:
        """Sends ``data`` on ``conn``; the caller awaits the answer's head. Whatever fails
        closes ``conn``: half an exchange leaves it unusable (``read_response`` does so for
        the wait). Not a coroutine itself: one level less on every backend call."""
        try:
            conn.begin(data)
        except BaseException:
            conn.close()
            raise
        return read_response(conn, seconds, self._release, self.max_body)

    def _release(self, conn: Connection, reusable: bool) -> None:
        if reusable:
            self.put(conn)
        else:
            conn.close()

    def put(self, conn: Connection) -> None:
        now = time.monotonic()
        if now - self._swept > IDLE_SECONDS / 2:
            self._sweep(now)
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    def _sweep(self, now: float) -> None:
        """Close what sat idle too long: the extra connections of a past burst (reuse is
        last-in first-out, so they are never picked) and those of removed backends."""
        self._swept = now
        oldest = now - IDLE_SECONDS
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if _usable(conn, oldest):
                    keep.append(conn)
                else:
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def _take_idle(self, key: OriginKey) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = time.monotonic() - IDLE_SECONDS
        while idle:
            conn = idle.pop()
            if _usable(conn, oldest):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, seconds: float) -> Connection:
        loop = asyncio.get_running_loop()
        host, port = origin.host, origin.port
        context = self._context(origin.settings) if origin.tls else None
        try:
            async with asyncio.timeout(seconds):
                sock = await _race(loop, host, port)
                _, conn = await loop.create_connection(
                    lambda: Connection(origin.key),
                    sock=sock,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within {seconds:g}s") from None
        except OSError as exc:  # ssl errors are OSErrors too
            raise connect_error(exc, host, port) from None
        return conn

    def _context(self, tls: TLS) -> ssl.SSLContext:
        context = self._contexts.get(tls)
        if context is None:
            try:
                context = ssl.create_default_context(cafile=tls.ca_file or None)
            except OSError as exc:
                raise ConnectError(f"TLS error: cannot read CA file {tls.ca_file}") from exc
            if not tls.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[tls] = context
        return context

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


async def _race(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected socket to the first of the host's addresses that answers, trying the
    next one every ``STAGGER_SECONDS`` (or at once when one fails)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[OSError] = []
    try:
        for family, kind, proto, _, address in infos:
            pending.add(asyncio.create_task(_open(loop, family, kind, proto, address)))
            done, pending = await asyncio.wait(
                pending, timeout=STAGGER_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if winner := _winner(done, errors):
                return winner
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if winner := _winner(done, errors):
                return winner
    finally:
        for task in pending:
            task.cancel()
    raise errors[0] if errors else OSError(f"no address for {host}")


def _winner(done: set[asyncio.Task[socket.socket]], errors: list[OSError]) -> socket.socket | None:
    winner = None
    for task in done:
        exc = task.exception()
        if exc is None and winner is None:
            winner = task.result()
        elif exc is None:
            task.result().close()  # a second success in the same instant
        elif isinstance(exc, OSError):
            errors.append(exc)
        else:
            raise exc
    return winner


async def _open(
    loop: asyncio.AbstractEventLoop, family: int, kind: int, proto: int, address: Any
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, address)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    return sock


def _usable(conn: Connection, oldest: float) -> bool:
    """Still open, nothing unread, and idle since after ``oldest``."""
    return conn.reusable and conn.idle_since > oldest


def _request(
    origin: Origin, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> bytes:
    if " " in path or "\r" in path or "\n" in path:
        raise InvalidHeader("request path has a space or a line break")
    length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
    lines = [f"{method} {origin.prefix}{path}{origin.head}{length}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value:
            raise InvalidHeader(f"header {name} has a control character")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode()
    return head + body if body else head
