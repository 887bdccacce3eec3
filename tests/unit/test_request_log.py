"""The request log line (F11) byte for byte, whichever way it is written."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import orjson
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


def whole_line(record: RequestRecord) -> bytes:
    """The JSON line as log_line gives it, serialized whole (what a frame must reproduce)."""
    line = record.log_line(logs._timestamp(record.timestamp))
    return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)


names = st.text(max_size=12)  # quotes, backslashes, controls, any script
maybe_int = st.none() | st.integers(min_value=0, max_value=10**12)
maybe_seconds = st.none() | st.floats(min_value=0, max_value=1e5, allow_nan=False)
# Each changes one thing of a line of the example's kind: to what it is keyed on (first
# row), or to what is never framed (second row).
EXTRAS = ["", "endpoint", "model", "routed", "backend", "type", "status", "stream", "reason"]
EXTRAS += ["tenant", "client_error", "retry", "fallback", "error", "cost", "queue", "strip"]


@given(
    kind=st.tuples(names, names, names, names, st.integers(100, 599), st.booleans(), names),
    ids=st.lists(st.from_regex(r"[A-Za-z0-9._:,\-]{1,20}", fullmatch=True), min_size=2),
    seconds=st.floats(min_value=0, max_value=1e5, allow_nan=False),
    ttft=maybe_seconds,
    tokens=st.tuples(maybe_int, maybe_int),
    extras=st.permutations(EXTRAS),
)
def test_a_line_made_from_its_kinds_frame_is_the_line_serialized_whole(
    kind: tuple[str, str, str, str, int, bool, str],
    ids: list[str],
    seconds: float,
    ttft: float | None,
    tokens: tuple[int | None, int | None],
    extras: list[str],
) -> None:
    """Lines of one kind share their frame (made from the first); every line must be the
    bytes log_line serializes, whatever its names, ids (a comma: not framed) and values.
    One formatter sees the example's kind changed in each way, in any order: a kind told
    apart too coarsely would meet the frame of another."""
    formatter = logs.JSONFormatter()
    model, routed, backend, reason, status, stream, tenant = kind
    for extra in extras:
        for i, request_id in enumerate(ids):
            record = RequestRecord(request_id, "chat", model, routed, backend, "vllm", status)
            record.stream, record.route_reason = stream, reason
            record.timestamp = 1760000000.0625 + i * 3.3
            record.duration_seconds = seconds + i
            record.ttft_seconds = ttft
            record.tokens_prompt, record.tokens_completion = tokens
            change(record, extra, tenant)
            record.attempts = [record.backend] if record.backend else []
            if extra == "retry":
                record.retry_count, record.attempts = 1, ["a", record.backend]
            assert formatter.request_line(record) == whole_line(record)


def change(record: RequestRecord, extra: str, text: str) -> None:
    if extra in ("model", "routed", "backend", "reason"):
        name = {"routed": "routed_model", "reason": "route_reason"}.get(extra, extra)
        setattr(record, name, getattr(record, name) + "+")
    elif extra == "endpoint":
        record.endpoint = "embeddings"
    elif extra == "type":
        record.backend_type = "ollama"
    elif extra == "status":
        record.status = 201 if record.status == 200 else 200
    elif extra == "stream":
        record.stream = not record.stream
    elif extra == "tenant":
        record.tenant = text or "t"
    elif extra == "client_error":
        record.error_type = "backend_client_error"  # a relayed 4xx: no error text
    elif extra == "fallback":
        record.fallback_chain = [record.model, record.routed_model]
    elif extra == "error":
        record.error_type, record.error = "backend_error", text or "x"
    elif extra == "cost":
        record.cost_usd, record.cost_flag = record.duration_seconds / 1e3, "estimated"
    elif extra == "queue":
        record.queue_wait_seconds = record.duration_seconds
    elif extra == "strip":
        record.privacy_action = "stripped"


def test_frames_are_kept_for_a_bounded_number_of_kinds() -> None:
    formatter = logs.JSONFormatter()
    for i in range(logs.MAX_FRAMES + 200):  # a client making up model names
        record = RequestRecord(f"r{i}", "chat", f"made-up-{i}", status=404)
        record.error_type = "model_not_found"
        assert formatter.request_line(record) == whole_line(record)
    assert len(formatter._frames) == logs.MAX_FRAMES


def test_a_name_equal_to_a_frame_mark_is_still_logged_right() -> None:
    formatter = logs.JSONFormatter()
    record = RequestRecord("r1", "chat", f"{logs.FRAME_MARK}1", backend=f"{logs.FRAME_MARK}0")
    for _ in range(2):
        assert formatter.request_line(record) == whole_line(record)
    assert not formatter._frames
