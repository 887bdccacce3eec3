"""Keep-alive connections to backends, and the one call the forwarder makes: ``post``.

Idle connections are kept per origin (scheme, host, port), most recently used first, and
dropped when the backend closes them or after ``IDLE_SECONDS`` unused. A request written
to a reused connection that the backend closed before answering a single byte (it timed
the connection out just as we sent) is sent once more on a fresh connection: that race is
the pool's business, and must not count as the backend failing.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from nexus import __version__
from nexus.proxy.http1 import (
    ConnectError,
    Connection,
    ConnectTimeout,
    Disconnected,
    InvalidHeader,
    Response,
    describe,
    read_response,
)

IDLE_SECONDS = 60.0
MAX_IDLE_PER_ORIGIN = 256
USER_AGENT = f"nexus/{__version__}"


@dataclass(frozen=True, slots=True)
class Origin:
    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    prefix: str  # path of the backend's URL, prepended to every request path
    head: str  # the request-head lines every request to it starts with, after the path


def parse_origin(url: str) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"invalid backend URL {url[:100]!r}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
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
    return Origin((parts.scheme, host, port), host, port, tls, prefix, head)


class Pool:
    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._origins: dict[str, Origin] = {}
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._swept = time.monotonic()

    async def post(self, url: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send ``POST url+path`` and return the response once its head has arrived."""
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = parse_origin(url)
        data = _request(origin, path, body, headers)
        conn = self._take_idle(origin.key)
        if conn is not None:
            try:
                return await self._exchange(conn, data)
            except Disconnected as exc:
                if exc.answered:
                    raise
        return await self._exchange(await self._connect(origin), data)

    async def _exchange(self, conn: Connection, data: bytes) -> Response:
        try:
            conn.send(data)
            return await read_response(conn, self.read_timeout)
        except BaseException:
            conn.close()  # half an exchange (or a cancelled one) leaves it unusable
            raise

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

    def _take_idle(self, key: tuple[str, str, int]) -> Connection | None:
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

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.tls else None
        host, port = origin.host, origin.port
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, origin.key),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {host}:{port} within {self.connect_timeout:g}s"
            ) from None
        except socket.gaierror:
            raise ConnectError(f"DNS resolution failed for {host}") from None
        except ssl.SSLCertVerificationError as exc:
            reason = f"certificate verify failed: {exc.verify_message}"
            raise ConnectError(f"TLS error: {reason}") from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectError(f"TLS error: {describe(exc)}") from None
        except ConnectionRefusedError:
            raise ConnectError(f"connection refused by {host}:{port}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {describe(exc)}") from None
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _usable(conn: Connection, oldest: float) -> bool:
    """Still open, nothing unread, and idle since after ``oldest``."""
    return conn.reusable and conn.idle_since > oldest


def _request(origin: Origin, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {origin.prefix}{path}{origin.head}Content-Length: {len(body)}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value:
            raise InvalidHeader(f"header {name} has a control character")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode() + body
