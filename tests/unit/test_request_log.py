"""The request log line (F11) byte for byte, whichever way it is written."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus import logs
from nexus.config import LoggingConfig
from nexus.records import RequestRecord, millis

JSON_LINES = [
    '{"timestamp":"2025-10-09T08:53:20.062Z","level":"info","logger":"nexus.request",'
    '"message":"request","request_id":"req-1","endpoint":"chat","model":"fast",'
    '"routed_model":"qwen","backend":"gpu","backend_type":"ollama","status":200,'
    '"latency_ms":250.0,"ttft_ms":12.346,"tokens_prompt":12,"tokens_completion":34,'
    '"stream":true,"route_reason":"alias","retry_count":0,"fallback_chain":[],'
    '"attempts":["gpu"],"error_type":"","error":""}',
    '{"timestamp":"2025-10-09T08:53:21.999Z","level":"info","logger":"nexus.request",'
    '"message":"request","request_id":"req-2","endpoint":"embeddings","model":"m",'
    '"routed_model":"","backend":"","backend_type":"","status":502,"latency_ms":1500.0,'
    '"ttft_ms":null,"tokens_prompt":null,"tokens_completion":null,"stream":false,'
    '"route_reason":"","retry_count":1,"fallback_chain":["m","n"],"attempts":["a","b"],'
    '"error_type":"backend_error","error":"bad \\"gateway\\" ü"}',
]
PRETTY_LINES = [
    "2025-10-09T08:53:20.062Z INFO    nexus.request: request request_id=req-1 endpoint=chat"
    " model=fast routed_model=qwen backend=gpu backend_type=ollama status=200"
    " latency_ms=250.0 ttft_ms=12.346 tokens_prompt=12 tokens_completion=34 stream=True"
    ' route_reason=alias retry_count=0 attempts=["gpu"]',
    "2025-10-09T08:53:21.999Z INFO    nexus.request: request request_id=req-2"
    " endpoint=embeddings model=m status=502 latency_ms=1500.0 stream=False retry_count=1"
    ' fallback_chain=["m","n"] attempts=["a","b"] error_type=backend_error'
    ' error="bad \\"gateway\\" ü"',
]


def records() -> list[RequestRecord]:
    # The second has no ttft or tokens: nothing of the first may show in its line.
    return [
        RequestRecord(
            request_id="req-1",
            endpoint="chat",
            model="fast",
            routed_model="qwen",
            backend="gpu",
            backend_type="ollama",
            status=200,
            stream=True,
            route_reason="alias",
            attempts=["gpu"],
            tokens_prompt=12,
            tokens_completion=34,
            timestamp=1760000000.0625,
            ttft_seconds=0.0123456,
            duration_seconds=0.25000049,
        ),
        RequestRecord(
            request_id="req-2",
            endpoint="embeddings",
            model="m",
            status=502,
            retry_count=1,
            fallback_chain=["m", "n"],
            attempts=["a", "b"],
            error_type="backend_error",
            error='bad "gateway" ü',
            timestamp=1760000001.9999,
            duration_seconds=1.5,
        ),
    ]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # Propagation too: pytest attaches its capture handlers to every logger that does not
    # propagate when a test phase begins, and a test that left "nexus" so had them snapshot
    # here and restored for good (every later record then reached caplog twice).
    root = logging.getLogger("nexus")
    handlers, level, direct = list(root.handlers), root.level, logs._direct
    propagate = root.propagate
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = propagate
    logs._direct = direct


@pytest.mark.parametrize("fmt", ["json", "pretty"])
@pytest.mark.parametrize("path", ["direct", "text stream", "log record"])
def test_request_lines(fmt: str, path: str) -> None:
    binary = io.BytesIO()
    stream = io.StringIO() if path == "text stream" else io.TextIOWrapper(binary, "utf-8")
    logs.setup(LoggingConfig(format=fmt, level="info"), stream=stream)
    # With propagation on, the line goes through a LogRecord and the handler chain.
    logging.getLogger("nexus").propagate = path == "log record"
    for record in records():
        logs.log_request(record)
    logs.flush()
    text = stream.getvalue() if isinstance(stream, io.StringIO) else binary.getvalue().decode()
    expected = JSON_LINES if fmt == "json" else PRETTY_LINES
    assert text == "".join(line + "\n" for line in expected)


def test_names_cannot_forge_fields_or_lines() -> None:
    """A model or backend name from the network (spaces, key=value, line breaks) stays one
    quoted field of one line, and a message that quotes one stays on its line."""
    stream = io.StringIO()
    logs.setup(LoggingConfig(format="pretty", level="info"), stream=stream)
    logging.getLogger("nexus").propagate = False
    hostile = "m status=200 backend=trusted\r\n2025-01-01T00:00:00.000Z INFO    nexus: forged"
    logs.log_request(RequestRecord(request_id="r", endpoint="chat", model=hostile, status=404))
    logging.getLogger("nexus.discovery").info("discovered backend %s", hostile)
    logs.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    request, message = lines
    fields = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', request.split(": request ", 1)[1])
    parsed = {key: json.loads(value) if value.startswith('"') else value for key, value in fields}
    assert parsed["model"] == hostile and parsed["status"] == "404"
    assert [key for key, _ in fields].count("status") == 1
    assert message.endswith(
        "discovered backend m status=200 backend=trusted\\r\\n2025-01-01"
        "T00:00:00.000Z INFO    nexus: forged"
    )


@given(st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_millis_is_round_to_the_microsecond(seconds: float) -> None:
    # Exactly round()'s number, except where the two round a tie in the last binary digit
    # differently (half a microsecond): at most 1 µs apart, never more.
    ms = round(seconds * 1000, 3)
    assert abs(millis(seconds) - ms) <= 0.001 + 1e-12 * ms  # (and a float's own error)
    assert millis(seconds) == round(millis(seconds), 3)  # three decimals, as logged
