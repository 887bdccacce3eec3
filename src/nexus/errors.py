"""Errors Nexus answers with, always in OpenAI's shape.

Every error a client can see is a :class:`NexusError`; the HTTP layer turns it into
``{"error": {"message", "type", "param", "code"}}`` with the matching status, so no
framework default page ever reaches a client.

Exception tree::

    NexusError                      base: status, type, code, param, headers
    ├── InvalidRequest              400  malformed JSON, missing or ill-typed field
    │   └── RequestRefused          400  two backends refused the request with a 500
    ├── NotFound                    404  unknown route
    ├── MethodNotAllowed            405  known route, other method (with Allow)
    ├── RequestTimeout              408  the client sent its body too slowly
    ├── ModelNotFound               404  no backend has ever listed the model
    ├── PayloadTooLarge             413  body over server.max_request_bytes
    ├── UnsupportedMediaType        415  body is not JSON
    ├── Unauthorized                401  auth on: no API key, or not one of ours
    ├── ModelNotAllowed             403  the tenant's key may not use that model
    ├── RateLimited                 429  every capable backend is out of its rate limit
    │   │                                (queue off), or the tenant's own limit; Retry-After
    │   ├── BudgetExceeded          429  the monthly budget is spent and only a cloud backend
    │   │                                could serve (hard_limit_action "reject")
    │   └── QuotaExceeded           429  the tenant's monthly tokens or cost are used up
    ├── ServiceUnavailable          503  with Retry-After
    │   ├── NoHealthyBackend        503  model known, but no healthy backend can serve it
    │   ├── Overloaded              503  server.max_concurrent_requests reached
    │   ├── QueueRejected           503  the queue is full, or evicted it for a more urgent one
    │   ├── QueueTimeout            503  waited its whole timeout (with eta_seconds)
    │   └── ShuttingDown            503  draining after SIGTERM (queued requests too)
    ├── BackendError                     a backend failed the request (retried elsewhere)
    │   ├── BackendUnreachable      502  connect error, reset, DNS or TLS failure
    │   ├── BackendBadResponse      502  5xx, 3xx, or a 200 whose body is not valid JSON
    │   │   └── BackendRefused      502  500/501 (the request's fault if the next backend agrees)
    │   └── BackendTimeout          504  no first byte in time, or a stream went idle
    ├── Forbidden                   403  admin API from a non-loopback client without token,
    │                                    or a request from another site (Origin, Host)
    └── ClientGone                  499  the client left before its answer (never sent;
                                         the status the request log records)

Upstream 4xx answers are not errors of ours: they are relayed as they came.

Apart from the tree, :class:`StartupError` says why Nexus cannot start (a corrupt or locked
state store...), in one line for the console.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson


class NexusError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        context: Mapping[str, object] | None = None,
        logged: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # What the request log and the dashboard keep: the message without any text quoted
        # from a backend (a backend's validation error may echo the prompt it was sent).
        self.logged = message if logged is None else logged
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        # Structured facts for the client to act on (the backends that could serve, an
        # ETA...): built from data, never parsed back out of the message.
        self.context: dict[str, object] = dict(context or {})

    def body(self, request_id: str | None = None) -> bytes:
        error: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.context:
            error["context"] = self.context
        if request_id:
            error["request_id"] = request_id
        return orjson.dumps({"error": error})


class InvalidRequest(NexusError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestRefused(InvalidRequest):
    """Two backends answered this request with the same server error (a validation they
    do as a 500): the request's fault, not theirs (``context.upstream_status``)."""


class NotFound(NexusError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(NexusError):
    status = 405
    type = "invalid_request_error"
    code = "http_405"


class ModelNotFound(NexusError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTimeout(NexusError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(NexusError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(NexusError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Forbidden(NexusError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ClientGone(NexusError):
    status = 499
    type = "client_error"
    code = "client_disconnected"


class RateLimited(NexusError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"


class Unauthorized(NexusError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotAllowed(NexusError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ServiceUnavailable(NexusError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    retry_after = 1

    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("Retry-After", str(self.retry_after))


class NoHealthyBackend(ServiceUnavailable):
    code = "no_healthy_backend"
    retry_after = 5


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class QueueRejected(ServiceUnavailable):
    code = "queue_full"


class QueueTimeout(ServiceUnavailable):
    code = "queue_timeout"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class BackendError(NexusError):
    """A backend failed this request; the proxy may retry on another backend."""

    status = 502
    type = "upstream_error"


class BackendUnreachable(BackendError):
    code = "backend_unreachable"


class BackendBadResponse(BackendError):
    code = "backend_error"


class BackendRefused(BackendBadResponse):
    """A backend answered 500/501: maybe its fault, maybe the request's (decided when the
    next backend answers the same request)."""

    def __init__(
        self, message: str, *, upstream_status: int, upstream_text: str, logged: str
    ) -> None:
        super().__init__(message, logged=logged)
        self.upstream_status = upstream_status
        self.upstream_text = upstream_text


class BackendTimeout(BackendError):
    status = 504
    type = "timeout_error"
    code = "backend_timeout"


def describe(exc: BaseException) -> str:
    """A short reason for a failure, in the exception's own words (never request data): what
    follows "unreachable:", "unavailable (...)" and the like."""
    text = str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
    return (text or type(exc).__name__)[:200]


class StartupError(Exception):
    """Nexus cannot start; the message is the one line the console shows."""


def printable(text: str, limit: int = 200) -> str:
    """A backend's own text as it may appear in an error or a log line: at most ``limit``
    characters, control characters blanked (no line break of theirs starts a forged line)."""
    return "".join(c if c.isprintable() else " " for c in text[:limit]).strip()
