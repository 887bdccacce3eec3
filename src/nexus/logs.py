"""Logging set-up: pretty or JSON lines, per-component levels, one record per request.

Nothing here ever formats message content: the request record carries none, and
``logging.log_content`` (off by default) is the only way to see any, at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import sys
import time
from typing import Any

import orjson

from nexus.config import LoggingConfig
from nexus.records import REQUEST_LOGGER, RequestRecord, millis

TRACE = 5
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
request_log = logging.getLogger(REQUEST_LOGGER)
_nexus_log = logging.getLogger("nexus")
_direct: LineHandler | None = None  # the handler setup() installed
content_log = logging.getLogger("nexus.content")
CONTENT_LIMIT = 500


_stamp_second = -1
_stamp_prefix = ""
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a lookup is cheaper than formatting


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the strftime part is cached per second."""
    global _stamp_second, _stamp_prefix
    second = int(created)
    if second != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    return _stamp_prefix + _MILLIS[int((created - second) * 1000)]


class LineHandler(logging.Handler):
    """Writes one line per record. Request lines are not flushed one by one: at thousands
    of requests a second, a write() per line would be the log's main cost. They reach the
    stream when the buffer fills, on ``flush()`` (every FLUSH_SECONDS while the server runs,
    and at exit); every other line is flushed at once."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.text = stream
        binary = getattr(stream, "buffer", None)
        if isinstance(binary, io.RawIOBase):
            # sys.stderr writes through to an unbuffered FileIO: give it a buffer of its own.
            binary = io.BufferedWriter(binary, buffer_size=64 * 1024)
        self.binary = binary

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode()
            self.write_line(line, flush=record.name != REQUEST_LOGGER)
        except Exception:
            self.handleError(record)

    def write_line(self, line: bytes, *, flush: bool) -> None:
        """Writes one UTF-8 line, its newline included."""
        binary = self.binary
        if binary is not None:
            # No lock of ours: a line is one write() call, which a buffered binary stream
            # makes atomic itself (io.BufferedWriter locks; BytesIO writes in one C call).
            binary.write(line)
            if flush:
                binary.flush()
            return
        with self.lock or contextlib.nullcontext():
            self.text.write(line.decode())
            if flush:
                self.text.flush()

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            (self.binary or self.text).flush()


FLUSH_SECONDS = 0.25


async def flush_periodically() -> None:
    """Runs while the server runs: buffered request lines reach the log within 0.25 s."""
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        flush()


def flush() -> None:
    for handler in logging.getLogger("nexus").handlers:
        handler.flush()


class LineFormatter(logging.Formatter):
    """A formatter that can also format a request record without a LogRecord."""

    def request_line(self, record: RequestRecord) -> bytes:
        """The request's line as the handler writes it: UTF-8, newline included."""
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        request = getattr(record, "request", None)
        if isinstance(request, RequestRecord):
            return self.request_line(request)[:-1].decode()
        return self.message_line(record)

    def message_line(self, record: logging.LogRecord) -> str:
        raise NotImplementedError


class JSONFormatter(LineFormatter):
    """One JSON object per line, stable field names (Loki / ELK friendly).

    Request lines of one kind (same endpoint, models, backend, status, route...) differ only
    in six values: their time, request id, latency, time to first token and token counts.
    The rest of such a line is kept as bytes, made once from ``RequestRecord.log_line`` (so
    the two can never disagree), and the six values are serialized together: a line costs
    about half as much. A line of any other kind (a retry, a fallback, an error, a queue
    wait, a cost...) is serialized whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._frames: dict[tuple[object, ...], list[bytes]] = {}

    def request_line(self, record: RequestRecord) -> bytes:
        stamp = _timestamp(record.timestamp)
        if not (
            record.retry_count
            or record.error
            or record.fallback_chain
            or record.cost_usd is not None
            or record.queue_wait_seconds is not None
            or record.privacy_action == "stripped"
        ):
            # What else the line holds (attempts: [backend], or [] when never routed).
            kind = (
                record.endpoint,
                record.model,
                record.routed_model,
                record.backend,
                record.backend_type,
                record.status,
                record.stream,
                record.route_reason,
                record.error_type,
                record.tenant,
            )
            f = self._frames.get(kind) or self._frame(record, kind)
            ttft = record.ttft_seconds
            # (One call for the six; none of them holds a comma: a request id has none.)
            v = orjson.dumps(
                (
                    stamp,
                    record.request_id,
                    millis(record.duration_seconds),
                    None if ttft is None else millis(ttft),
                    record.tokens_prompt,
                    record.tokens_completion,
                )
            )[1:-1].split(b",")
            if f and len(v) == 6:
                return b"".join(
                    (f[0], v[0], f[1], v[1], f[2], v[2], f[3], v[3], f[4], v[4], f[5], v[5], f[6])
                )
        line = record.log_line(stamp)
        return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)

    def _frame(self, record: RequestRecord, kind: tuple[object, ...]) -> list[bytes]:
        """The bytes of ``record``'s line around its six values (FRAME_VALUES), seven
        pieces; [] when the line cannot be cut so (it is then serialized whole)."""
        line = record.log_line(None)
        marks = [f"{FRAME_MARK}{i}" for i in range(len(FRAME_VALUES))]
        for name, mark in zip(FRAME_VALUES, marks, strict=True):
            line[name] = mark
        rest = orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)
        quoted = [orjson.dumps(mark) for mark in marks]
        if any(rest.count(value) != 1 for value in quoted):
            return []  # (a name equal to a mark: never kept, always right)
        frame = []
        for value in quoted:
            before, _, rest = rest.partition(value)
            frame.append(before)
        frame.append(rest)
        if len(self._frames) < MAX_FRAMES:
            self._frames[kind] = frame
        return frame

    def message_line(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


# The values that differ between request lines of one kind, in the order the line has them.
FRAME_VALUES = (
    "timestamp",
    "request_id",
    "latency_ms",
    "ttft_ms",
    "tokens_prompt",
    "tokens_completion",
)
FRAME_MARK = "\x00nexus-frame-"  # stands for a value while a frame is made
MAX_FRAMES = 1024  # kinds of line kept: a client chooses model names, so not without bound

# A value that would blur ``key=value`` fields if written bare: it is written as a JSON string.
_NEEDS_QUOTES = re.compile(r'[\s="\\]|[\x00-\x1f\x7f]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return orjson.dumps(value).decode()  # no spaces: one field, parseable
    text = str(value)
    return orjson.dumps(text).decode() if _NEEDS_QUOTES.search(text) else text


def escape_controls(text: str) -> str:
    """Names from the network end up in messages: no line break of theirs may start a
    forged log line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class PrettyFormatter(LineFormatter):
    def request_line(self, record: RequestRecord) -> bytes:
        fields = record.to_dict()
        shown = " ".join(f"{k}={_shown(v)}" for k, v in fields.items() if v not in (None, "", []))
        stamp = _timestamp(record.timestamp)
        return f"{stamp} INFO    {REQUEST_LOGGER}: request {shown}\n".encode()

    def message_line(self, record: logging.LogRecord) -> str:
        stamp = _timestamp(record.created)
        message = escape_controls(record.getMessage())
        text = f"{stamp} {record.levelname:<7} {record.name}: {message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(config: LoggingConfig, stream: Any = None) -> None:
    logging.addLevelName(TRACE, "TRACE")
    # Never shown by our formatters; skipping them makes every log record cheaper.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("nexus")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    global _direct
    handler = _direct = LineHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if config.format == "json" else PrettyFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[config.level])
    root.propagate = False
    for component, level in config.components.items():
        logging.getLogger(f"nexus.{component}").setLevel(LEVELS[level])
    # uvicorn's own lines go through our handler too, minus what is normal for a gateway
    # facing the network (its access log would duplicate our request record).
    server_log = logging.getLogger("uvicorn")
    for old in list(server_log.handlers):
        server_log.removeHandler(old)
    server_log.addHandler(handler)
    server_log.setLevel(logging.WARNING)
    server_log.propagate = False
    server_log.addFilter(ExpectedServerNoise())
    logging.getLogger("uvicorn.error").addFilter(ExpectedServerNoise())


class ExpectedServerNoise(logging.Filter):
    """uvicorn warns of things a gateway meets every day and handles itself: garbage from
    clients (answered 400 in our shape), a client that stopped reading (its stream dropped
    by our idle timer), requests cut when the shutdown grace period ran out (logged by us)."""

    EXPECTED = (
        "Invalid HTTP request received",
        "returned without completing response",
        "timeout graceful shutdown exceeded",
        "Unsupported upgrade request",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(text in message for text in self.EXPECTED)


def log_request(record: RequestRecord) -> None:
    """The one structured line per request (F11).

    When our own handler is the only place it can go (the usual case), the line is written
    to it directly: a LogRecord and the handler chain would cost more than the line itself.
    Otherwise (extra handlers, propagation, as under pytest's caplog) it is a normal record,
    without ``Logger.info``'s caller-frame lookup."""
    if not request_log.isEnabledFor(logging.INFO):
        return
    direct = _direct
    if direct is not None and not _nexus_log.propagate and not request_log.handlers:
        assert isinstance(direct.formatter, LineFormatter)
        direct.write_line(direct.formatter.request_line(record), flush=False)
        return
    line = logging.LogRecord(REQUEST_LOGGER, logging.INFO, "", 0, "request", None, None)
    line.request = record
    request_log.handle(line)


def log_content(request_id: str, body: dict[str, Any]) -> None:
    """Opt-in only (``logging.log_content``): message content, truncated, at DEBUG."""
    if content_log.isEnabledFor(logging.DEBUG):
        text = orjson.dumps(body.get("messages", body.get("input"))).decode()
        if len(text) > CONTENT_LIMIT:
            text = text[:CONTENT_LIMIT] + f"... ({len(text)} chars)"
        content_log.debug("content request_id=%s %s", request_id, text)
