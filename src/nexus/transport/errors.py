"""What can go wrong talking HTTP to a backend, and the one place it is put into words.

Exception tree, each with a short reason as ``str(exc)`` that never contains request data::

    UpstreamError           base
    ├── ConnectError        DNS, refused, TLS or other failure before the request was sent
    ├── InvalidHeader       a header value to send holds a line break (never sent)
    ├── Disconnected        the backend closed the connection before the answer was whole
    └── MalformedResponse   not HTTP/1.x, bad framing, oversized head, unknown encoding
        └── TooLarge        the answer (after decompression) is over the size limit
    ConnectTimeout          (a TimeoutError) no connection within the connect timeout

A wait for bytes that exceeds its timeout raises the builtin ``TimeoutError``.
"""

from __future__ import annotations

import socket
import ssl

from nexus import errors


class UpstreamError(Exception):
    """The exchange with a backend failed."""


class ConnectError(UpstreamError):
    pass


class InvalidHeader(UpstreamError):
    pass


class Disconnected(UpstreamError):
    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered  # some of the answer had arrived (so never resend)


class MalformedResponse(UpstreamError):
    pass


class TooLarge(MalformedResponse):
    def __init__(self, limit: int) -> None:
        super().__init__(f"backend answer is larger than {limit} bytes (after decompression)")
        self.limit = limit


class ConnectTimeout(TimeoutError):
    pass


def describe(exc: BaseException) -> str:
    """A short reason for a failed exchange with a backend (never request data)."""
    if type(exc) is TimeoutError:
        return "timed out"  # a bare one says nothing by itself
    return errors.describe(exc)


def connect_error(exc: OSError, host: str, port: int) -> ConnectError:
    """Name why a connection could not be made, as a person can act on it."""
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"DNS resolution failed for {host}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(f"TLS error: certificate verify failed: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return ConnectError(f"TLS error: {describe(exc)}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection refused by {host}:{port}")
    return ConnectError(f"cannot connect to {host}:{port}: {describe(exc)}")


def parser_error(reason: str) -> MalformedResponse:
    """llhttp's reason for refusing an answer, in our words (tests and logs match these)."""
    lowered = reason.lower()
    if "upgrade" in lowered:
        return MalformedResponse("backend switched protocols")
    if "content-length" in lowered:
        return MalformedResponse("backend sent an invalid Content-Length")
    if "chunk" in lowered:
        return MalformedResponse("backend sent a malformed chunked body")
    if "header" in lowered or "space after start line" in lowered:
        return MalformedResponse("backend sent a malformed header line")
    if "status" in lowered or "expected http/" in lowered or "version" in lowered:
        return MalformedResponse("backend did not answer in HTTP/1.x")
    return MalformedResponse(f"backend sent a malformed answer ({reason[:80]})")
