"""The SSE parser is linear in what it is fed, even for one giant event (issue 13: the old
parser rescanned its whole buffer on every read, 10 MB in 3 s and 50 MB in 33 s)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nexus.config import load
from nexus.transport.sse import EventTooLarge, SSEParser

PIECE = 64 * 1024
MB = 1024 * 1024


def feed_one_line(parser: SSEParser, size: int) -> float:
    """Feed a ``size``-byte single-line event in 64 KiB reads, then its blank line; return
    the CPU seconds it took (CPU time: other processes on the machine do not count)."""
    data = b"data: " + b"x" * (size - 6)
    view = memoryview(data)
    started = time.process_time()
    for at in range(0, size, PIECE):
        assert parser.feed(bytes(view[at : at + PIECE])) == []
    events = parser.feed(b"\n\n")
    elapsed = time.process_time() - started
    assert len(events) == 1 and len(events[0]) == size  # the whole event, once
    return elapsed


def test_a_giant_single_line_event_costs_time_linear_in_its_size(tmp_path: Path) -> None:
    # The limit is configurable: raised far enough, a 40 MB event goes through.
    path = tmp_path / "nexus.toml"
    path.write_text(f"[server]\nmax_stream_event_bytes = {64 * MB}\n")
    limit = load(path, env={}).server.max_stream_event_bytes
    small, large = 10 * MB, 40 * MB

    def best(size: int) -> float:  # the least disturbed of a few runs
        return min(feed_one_line(SSEParser(limit), size) for _ in range(3))

    ratio = best(large) / max(best(small), 1e-4)
    # Linear: about 4 for four times the bytes; the quadratic parser made it about 16. The
    # bound is their geometric middle: with both cores busy a linear run measured 6.3.
    assert ratio < 8, f"40 MB took {ratio:.1f} times as long as 10 MB"


def test_the_default_limit_ends_a_giant_event() -> None:
    parser = SSEParser()
    with pytest.raises(EventTooLarge):
        for _ in range(10 * MB // PIECE):
            parser.feed(b"x" * PIECE)
    assert parser.feed(b"data: ok\n\n") == [b"data: ok"]  # nothing of it kept
