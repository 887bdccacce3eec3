"""The fleet's errors: two answers of the admin API, and why an operation failed.

``Conflict`` (409) and ``NotSupported`` (501) join ``nexus.errors``'s tree as admin API
answers, in OpenAI's shape like every other error. ``OperationFailed`` never reaches a
client as an exception: its text becomes the failed operation's ``reason``.
"""

from __future__ import annotations

from nexus.errors import NexusError


class Conflict(NexusError):
    """The model is busy: serving requests, or another operation already works on it."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class NotSupported(NexusError):
    """The backend's type (or this server of that type) offers no way to do it."""

    status = 501
    type = "invalid_request_error"
    code = "not_supported"


class OperationFailed(Exception):
    """A step of an operation failed; ``str(exc)`` is the reason a person reads."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status  # the backend's HTTP status, when it answered with an error
