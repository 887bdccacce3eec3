"""Logging set-up: pretty or JSON lines, per-component levels, one record per request.

Nothing here ever formats message content: the request record carries none, and
``logging.log_content`` (off by default) is the only way to see any, at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import time
from typing import Any

import orjson

from nexus.config import LoggingConfig
from nexus.records import RequestRecord

TRACE = 5
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
REQUEST_LOGGER = "nexus.request"
request_log = logging.getLogger(REQUEST_LOGGER)
content_log = logging.getLogger("nexus.content")
CONTENT_LIMIT = 500


_stamp_second = -1
_stamp_prefix = ""


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the strftime part is cached per second."""
    global _stamp_second, _stamp_prefix
    second = int(created)
    if second != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    return f"{_stamp_prefix}.{int(created % 1 * 1000):03d}Z"


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
            line = self.format(record) + "\n"
            if self.binary is not None:
                self.binary.write(line.encode())
                if record.name != REQUEST_LOGGER:
                    self.binary.flush()
            else:
                self.text.write(line)
                if record.name != REQUEST_LOGGER:
                    self.text.flush()
        except Exception:
            self.handleError(record)

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


class JSONFormatter(logging.Formatter):
    """One JSON object per line, stable field names (Loki / ELK friendly)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
            line["timestamp"] = _timestamp(fields["timestamp"])
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class PrettyFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = _timestamp(record.created)
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            shown = (f"{k}={v}" for k, v in fields.items() if v not in (None, "", []))
            text += " " + " ".join(s for s in shown if not s.startswith("timestamp="))
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
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if config.format == "json" else PrettyFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[config.level])
    root.propagate = False
    for component, level in config.components.items():
        logging.getLogger(f"nexus.{component}").setLevel(LEVELS[level])
    # aiohttp's own access log duplicates our request record; its errors still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_request(record: RequestRecord) -> None:
    """The one structured line per request (F11).

    Built directly rather than through ``Logger.info``: that would look up the caller's
    frame for every request, information this line never shows."""
    if request_log.isEnabledFor(logging.INFO):
        line = logging.LogRecord(REQUEST_LOGGER, logging.INFO, "", 0, "request", None, None)
        line.fields = record.to_dict()
        request_log.handle(line)


def log_content(request_id: str, body: dict[str, Any]) -> None:
    """Opt-in only (``logging.log_content``): message content, truncated, at DEBUG."""
    if content_log.isEnabledFor(logging.DEBUG):
        text = orjson.dumps(body.get("messages", body.get("input"))).decode()
        if len(text) > CONTENT_LIMIT:
            text = text[:CONTENT_LIMIT] + f"... ({len(text)} chars)"
        content_log.debug("content request_id=%s %s", request_id, text)
