"""What a failed exchange with a backend means for the request: the one translation of
transport failures (timeouts, resets, bad framing) into the BackendError a client sees."""

from __future__ import annotations

from nexus.errors import BackendBadResponse, BackendError, BackendTimeout, BackendUnreachable
from nexus.transport import ConnectTimeout, MalformedResponse, UpstreamError, describe
from nexus.transport.sse import EventTooLarge

# phase -> how a timeout in it is worded
_TIMEOUTS = {
    "before answering": "did not answer within {s:g}s",
    "mid-answer": "stalled while sending its answer",
    "before the first event": "sent no stream event within {s:g}s",
    "mid-stream": "stalled for {s:g}s mid-stream",
}


def upstream_failure(
    backend: str, exc: BaseException, phase: str, seconds: float
) -> BackendError | None:
    """The BackendError for ``exc`` raised while talking to ``backend`` in ``phase``, or
    None when ``exc`` is not the backend's doing (a cancellation, a bug of ours)."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ConnectTimeout):
        return BackendTimeout(f"backend '{backend}' unreachable: {exc}")
    if isinstance(exc, TimeoutError):
        return BackendTimeout(f"backend '{backend}' " + _TIMEOUTS[phase].format(s=seconds))
    if isinstance(exc, MalformedResponse | EventTooLarge):
        return BackendBadResponse(f"backend '{backend}' {phase}: {describe(exc)}")
    if isinstance(exc, UpstreamError | OSError):
        if phase == "before answering":
            return BackendUnreachable(f"backend '{backend}' unreachable: {describe(exc)}")
        return BackendUnreachable(f"backend '{backend}' failed {phase}: {describe(exc)}")
    return None
