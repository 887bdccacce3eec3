"""How much of everything a run does: the full run and the ``--quick`` (smoke) run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]


def _body(**extra: Any) -> str:
    return orjson.dumps({"model": "bench-model", "messages": MESSAGES, **extra}).decode()


@dataclass(frozen=True, slots=True)
class Settings:
    latency_n: int  # sequential requests per target (after warm-up)
    latency_warmup: int
    throughput_conns: tuple[int, ...]
    throughput_seconds: float
    throughput_warmup: float  # first repetition only: connections and pools warm up
    throughput_reps: int  # interleaved repetitions; the median is reported
    stream_n: int  # paced streams per target (1 ms between chunks): time to first chunk
    burst_n: int  # burst streams per target (all chunks at once): relay cost per event
    stream_warmup: int
    stream_chunks: int
    paced_delay_ms: float  # upstream gap between two chunks of a paced stream
    hold_conns: int
    hold_chunks: int
    slow_delay: float  # upstream gap between two chunks of a slow stream
    hold_floor: bool  # also hold the streams through the floor (for comparison)
    startup_samples: int
    idle_settle: float  # seconds after start-up before the idle RSS is read
    chat_body: str = _body(max_tokens=32)

    def stream_body(self, model: str) -> str:
        return _body(model=model, max_tokens=self.stream_chunks, stream=True)

    @property
    def slow_body(self) -> str:
        return _body(model="bench-slow", max_tokens=self.hold_chunks, stream=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def full(cls) -> Settings:
        return cls(
            latency_n=3000,
            latency_warmup=300,
            throughput_conns=(32, 100),
            throughput_seconds=3.0,
            throughput_warmup=1.0,
            throughput_reps=3,
            stream_n=100,
            burst_n=300,
            stream_warmup=10,
            stream_chunks=100,
            paced_delay_ms=1.0,
            hold_conns=1000,
            hold_chunks=10,
            slow_delay=1.0,
            hold_floor=True,
            startup_samples=3,
            idle_settle=2.0,
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            latency_n=200,
            latency_warmup=30,
            throughput_conns=(32, 100),
            throughput_seconds=1.0,
            throughput_warmup=0.3,
            throughput_reps=1,
            stream_n=10,
            burst_n=20,
            stream_warmup=3,
            stream_chunks=100,
            paced_delay_ms=1.0,
            hold_conns=200,
            hold_chunks=3,
            slow_delay=0.5,
            hold_floor=False,
            startup_samples=1,
            idle_settle=0.5,
        )
