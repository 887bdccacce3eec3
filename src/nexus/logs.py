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
from nexus.records import REQUEST_LOGGER, RequestRecord

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
    """One JSON object per line, stable field names (Loki / ELK friendly)."""

    def request_line(self, record: RequestRecord) -> bytes:
        line = record.log_line(_timestamp(record.timestamp))
        return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)

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
