"""Record: the one place a request's outcome is decided and written.

Stages either return a result (:class:`Reply` for a whole answer, :class:`Streamed` for a
relayed stream) or raise a :class:`NexusError`. ``settle`` turns whichever came out into the
record's status and error fields; nothing else writes them. The record then goes to the
sinks (log line, metrics, quality, dashboard) once the answer is on its way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.asgi import Headers
from nexus.errors import NexusError
from nexus.records import RequestRecord

CLIENT_ERROR = "backend_client_error"  # a backend's 4xx, relayed as the answer


@dataclass(slots=True)
class Reply:
    """A whole answer, ready to send: a backend's 2xx, or its 4xx relayed as it came."""

    status: int
    body: bytes
    headers: Headers = field(default_factory=list)
    ctype: bytes = b"application/json"
    busy: bool = False  # a "too busy" answer (429...): kept while another backend may serve
    native: bool = False  # already in the client's own API (a native backend answered)


@dataclass(slots=True)
class Streamed:
    """A stream that was relayed; ``error`` is what ended it early (after the first byte,
    so the client got it as an in-band error event), None when it ended well."""

    error: NexusError | None = None


Outcome = Reply | Streamed | NexusError


def settle(record: RequestRecord, outcome: Outcome) -> None:
    if isinstance(outcome, Reply):
        record.status = outcome.status
        if outcome.status >= 400:
            record.error_type = CLIENT_ERROR
    elif isinstance(outcome, Streamed):
        record.status = 200
        if outcome.error is not None:
            # The client saw 200 and then the error event: the record says what went wrong.
            record.status = outcome.error.status
            _error(record, outcome.error)
    else:
        record.status = outcome.status
        _error(record, outcome)


def _error(record: RequestRecord, error: NexusError) -> None:
    record.error_type = error.code or error.type
    record.error = error.logged
