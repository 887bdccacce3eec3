"""When a cloud provider's answer means our key was refused (not the client's request)."""

from __future__ import annotations

import pytest

from nexus.backends.auth import key_rejected
from nexus.registry import Backend

GOOGLE_BAD_KEY = (
    b'{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", '
    b'"status": "INVALID_ARGUMENT", "details": [{"@type": '
    b'"type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}'
)


@pytest.mark.parametrize(
    ("kind", "status", "body", "rejected"),
    [
        ("anthropic", 401, b"{}", True),
        ("openai", 403, b"{}", True),
        ("google", 400, GOOGLE_BAD_KEY, True),
        (
            "google",
            400,
            b'{"error": {"status": "INVALID_ARGUMENT", "message": "bad field"}}',
            False,
        ),
        ("openai", 400, GOOGLE_BAD_KEY, False),  # only Google answers a bad key with a 400
        ("vllm", 401, b"{}", False),  # a local backend's 401 is about the client's own key
    ],
)
def test_key_rejected(kind: str, status: int, body: bytes, rejected: bool) -> None:
    backend = Backend(name="b", url="https://example.invalid", type=kind)
    assert key_rejected(backend, status, body) is rejected
