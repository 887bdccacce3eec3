"""What conversation affinity wins on real llama.cpp servers:
``python -m benchmarks.affinity [--quick] [--json PATH]``. See docs/benchmarks.md.

A llama.cpp server keeps the KV cache of its last prompt (llama-cpp-python reuses the longest
common token prefix with the previous request). When turn 2 of a conversation goes to the
server that answered turn 1, only the new tokens (the assistant's answer and the new
question) are processed; on the other server the whole prompt, long system prompt included,
is processed again. Conversation affinity (``[routing] affinity``) sends every continued turn
back to the previous turn's backend.

Two llama.cpp servers (started as the interop tests start them: llama-cpp-python and
SmolLM2-135M-Instruct from ``scripts/setup-interop``'s cache, one thread each) sit behind two
in-process Nexus instances built as ``nexus serve`` builds them, identical but for
``affinity = true`` / ``false``. Both backends are in the ``open`` zone (a restricted
conversation always sticks, which would make "off" meaningless). Conversations have a long
system prompt (~1,200 tokens, a different one per conversation so no cache helps across
conversations), then three streamed turns; each later turn appends the assistant's actual
answer and a short new question. Per turn the client (the ``openai`` SDK) measures the time
to the first content chunk and reads ``X-Nexus-Backend``. Conversations run one at a time,
alternating "on" and "off" (the order flipping every pair) so a noisy machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson
from openai import AsyncOpenAI, AsyncStream
from tests.helpers import Nexus, running_nexus, wait_until
from tests.interop.conftest import (
    MODEL_ALIAS,
    N_CTX,
    LlamaServer,
    Runtime,
    _ready,
    backend_entries,
    cache_dir,
    free_port,
)

from benchmarks.procs import ROOT

RESULTS_DIR = ROOT / "benchmarks" / "results"
MODES = ("on", "off")
MAX_TOKENS = 12
TURN_TIMEOUT = 120.0  # one turn, prompt processing of ~1,300 tokens on one shared core included
SETTLE_TIMEOUT = 30.0
QUESTIONS = (
    "In one sentence: what is this handbook mostly about?",
    "Name one rule from it.",
    "Which city is mentioned first?",
)
# Generous for a real model on a shared core; see tests/interop/test_llamacpp.py.
SECTIONS: dict[str, Any] = {
    "server": {"request_timeout_seconds": TURN_TIMEOUT, "stream_idle_timeout_seconds": 60},
    "health_check": {"interval_seconds": 30, "timeout_seconds": 10},
}

WORDS: dict[str, tuple[str, ...]] = {
    "team": ("archivists", "couriers", "gardeners", "pilots", "bakers", "surveyors"),
    "verb": ("inspect", "catalogue", "repair", "deliver", "label", "measure", "weigh"),
    "thing": ("lanterns", "maps", "parcels", "bicycles", "ledgers", "telescopes", "kites"),
    "adj": ("fragile", "heavy", "urgent", "ancient", "damp", "bright", "narrow", "spare"),
    "city": ("Lisbon", "Oslo", "Quito", "Nairobi", "Hanoi", "Tbilisi", "Perth", "Cusco"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "rule": ("must", "should never", "may only", "are asked to", "are free to"),
}
SENTENCES_PER_SECTION = 9
SECTIONS_PER_PROMPT = 8


@dataclass
class Turn:
    ttft_s: float
    total_s: float
    backend: str
    reason: str
    content: str
    saw_content: bool  # False: no content chunk at all, ttft_s is the end of the stream


@dataclass
class Conversation:
    mode: str
    variant: int
    turns: list[Turn] = field(default_factory=list)


# -- prompts ----------------------------------------------------------------------------------


def sentence(rng: random.Random) -> str:
    w = {k: rng.choice(v) for k, v in WORDS.items()}
    count = rng.randint(2, 97)
    return rng.choice(
        (
            f"The {w['team']} in {w['city']} {w['verb']} {count} {w['adj']} {w['thing']} "
            f"every {w['day']}.",
            f"Before noon on {w['day']}, nobody may {w['verb']} the {w['adj']} {w['thing']} "
            f"kept by the {w['team']}.",
            f"Staff {w['rule']} {w['verb']} {w['thing']} twice when they look {w['adj']}.",
            f"Shipment {count}-{w['city'][:3].upper()} holds {w['adj']} {w['thing']} for the "
            f"{w['team']} of {w['city']}.",
        )
    )


def system_prompt(variant: int) -> str:
    """A ~1,200-token handbook, different from the first words on for every ``variant``."""
    rng = random.Random(variant)
    city, team = rng.choice(WORDS["city"]), rng.choice(WORDS["team"])
    parts = [f"Handbook {variant} of the {team} guild of {city}. Answer briefly."]
    for number in range(1, SECTIONS_PER_PROMPT + 1):
        body = " ".join(sentence(rng) for _ in range(SENTENCES_PER_SECTION))
        parts.append(f"Section {number}. {body}")
    return "\n\n".join(parts)


# -- one conversation -------------------------------------------------------------------------


async def turn(client: AsyncOpenAI, messages: list[dict[str, str]]) -> Turn:
    """One streamed turn; time to the first non-empty content chunk, from the client."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    async with asyncio.timeout(TURN_TIMEOUT):
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL_ALIAS,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            max_tokens=MAX_TOKENS,
            temperature=0,
        ) as response:
            headers = response.headers
            stream = await response.parse()
            assert isinstance(stream, AsyncStream)
            async for chunk in stream:
                text = chunk.choices[0].delta.content if chunk.choices else None
                if text:
                    first = first if first is not None else time.perf_counter()
                    parts.append(text)
    end = time.perf_counter()
    return Turn(
        ttft_s=(first if first is not None else end) - start,
        total_s=end - start,
        backend=headers.get("X-Nexus-Backend", "?"),
        reason=headers.get("X-Nexus-Route-Reason", "?"),
        content="".join(parts),
        saw_content=first is not None,
    )


async def conversation(client: AsyncOpenAI, mode: str, variant: int) -> Conversation:
    messages = [{"role": "system", "content": system_prompt(variant)}]
    conv = Conversation(mode, variant)
    for index, question in enumerate(QUESTIONS):
        if index:
            messages.append({"role": "assistant", "content": conv.turns[-1].content})
        messages.append({"role": "user", "content": question})
        conv.turns.append(await turn(client, messages))
    return conv


# -- servers ----------------------------------------------------------------------------------


def runtime_or_exit() -> Runtime:
    runtime = _ready(cache_dir())
    if runtime is None:
        print(
            f"benchmarks.affinity: no llama.cpp environment under {cache_dir()}.\n"
            "Run scripts/setup-interop first (builds llama-cpp-python and fetches the model, "
            "several minutes once per machine).",
            file=sys.stderr,
        )
        sys.exit(2)
    return runtime


@contextlib.contextmanager
def llama_servers(runtime: Runtime, logs: Path) -> Iterator[list[LlamaServer]]:
    """Two servers as tests/interop/conftest.py starts them; stopped whatever happens."""
    servers = [
        LlamaServer(name, runtime, free_port(), logs / f"{name}.log")
        for name in ("llama-a", "llama-b")
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def raise_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C does: through every ``finally`` (servers stopped)."""

    def handler(signum: int, frame: Any) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.asynccontextmanager
async def nexus_pair(
    servers: list[LlamaServer], tmp: Path
) -> AsyncIterator[dict[str, AsyncOpenAI]]:
    """One Nexus per mode, both in front of the same two servers; an SDK client for each."""
    backends = backend_entries(servers, zone="open")
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, AsyncOpenAI] = {}
        for mode in MODES:
            (tmp / mode).mkdir()
            routing = {"affinity": mode == "on"}
            nexus = await stack.enter_async_context(
                running_nexus(tmp / mode, backends, routing=routing, **SECTIONS)
            )
            await all_routable(nexus)
            clients[mode] = await stack.enter_async_context(
                AsyncOpenAI(base_url=nexus.url + "/v1", api_key="bench", max_retries=0)
            )
        yield clients


async def all_routable(nexus: Nexus) -> None:
    await wait_until(
        lambda: all(b.routable for b in nexus.state.registry),
        timeout=SETTLE_TIMEOUT,
        interval=0.05,
        what="both llama.cpp backends routable",
    )


# -- the run ----------------------------------------------------------------------------------


def schedule(pairs: int) -> list[str]:
    """on, off, off, on, on, off, ...: each mode goes first in half of the pairs."""
    order: list[str] = []
    for index in range(pairs):
        order.extend(MODES if index % 2 == 0 else reversed(MODES))
    return order


async def warm_up(clients: dict[str, AsyncOpenAI]) -> int:
    """One short request per server through each Nexus (first-use costs, connections), and
    one with a full handbook whose prompt size is returned (tokens, from the usage)."""
    for client in clients.values():
        for _ in range(2):
            await turn(client, [{"role": "user", "content": "Say hi."}])
    async with asyncio.timeout(TURN_TIMEOUT):
        answer = await clients["on"].chat.completions.create(
            model=MODEL_ALIAS,
            messages=[
                {"role": "system", "content": system_prompt(10_000)},
                {"role": "user", "content": QUESTIONS[0]},
            ],
            max_tokens=1,
            temperature=0,
        )
    return answer.usage.prompt_tokens if answer.usage else 0


async def measure(
    servers: list[LlamaServer], pairs: int, tmp: Path
) -> tuple[list[Conversation], int]:
    conversations: list[Conversation] = []
    async with nexus_pair(servers, tmp) as clients:
        prompt_tokens = await warm_up(clients)
        print(f"warm-up done; a turn-1 prompt is {prompt_tokens} tokens", file=sys.stderr)
        for variant, mode in enumerate(schedule(pairs)):
            conv = await conversation(clients[mode], mode, variant)
            conversations.append(conv)
            print(progress_line(conv), file=sys.stderr)
    return conversations, prompt_tokens


def progress_line(conv: Conversation) -> str:
    turns = "  ".join(f"{t.ttft_s * 1000:6.0f} ms {t.backend} ({t.reason})" for t in conv.turns)
    return f"{conv.mode:>3} #{conv.variant:<2} {turns}"


# -- statistics and report --------------------------------------------------------------------


def median_ms(values: Sequence[float]) -> float | None:
    return statistics.median(values) * 1000 if values else None


def mean_ms(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) * 1000 if values else None


def stayed(conv: Conversation, index: int) -> bool:
    return conv.turns[index].backend == conv.turns[0].backend


def mode_summary(convs: Sequence[Conversation]) -> dict[str, Any]:
    later = [(c, i) for c in convs for i in (1, 2)]
    kept = [c.turns[i].ttft_s for c, i in later if stayed(c, i)]
    moved = [c.turns[i].ttft_s for c, i in later if not stayed(c, i)]
    return {
        "conversations": len(convs),
        "ttft_median_ms": {
            f"turn{i + 1}": median_ms([c.turns[i].ttft_s for c in convs]) for i in range(3)
        },
        # Without affinity turns 2 and 3 differ in kind (moved / came back): a median of both
        # would fall between the two groups. The mean is the wait a user sees per later turn.
        "ttft_mean_ms_turns_2_3": mean_ms([c.turns[i].ttft_s for c, i in later]),
        "stayed_fraction_turns_2_3": len(kept) / len(later) if later else None,
        "ttft_median_ms_turns_2_3_stayed": median_ms(kept),
        "ttft_median_ms_turns_2_3_moved": median_ms(moved),
        "route_reasons": sorted({c.turns[i].reason for c, i in later}),
        "turns_without_content": sum(not t.saw_content for c in convs for t in c.turns),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def summarize(conversations: Sequence[Conversation]) -> dict[str, Any]:
    modes = {m: mode_summary([c for c in conversations if c.mode == m]) for m in MODES}
    on, off = modes["on"]["ttft_median_ms"], modes["off"]["ttft_median_ms"]
    return {
        "modes": modes,
        "ratio_off_on": {
            "turn2": ratio(off["turn2"], on["turn2"]),
            "turn3": ratio(off["turn3"], on["turn3"]),
            "turns_2_3_mean": ratio(
                modes["off"]["ttft_mean_ms_turns_2_3"], modes["on"]["ttft_mean_ms_turns_2_3"]
            ),
        },
    }


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: dict[str, Any], prompt_tokens: int) -> None:
    modes, ratios = summary["modes"], summary["ratio_off_on"]
    print(f"\ntime to first token (ms), turn-1 prompt {prompt_tokens} tokens")
    head = ("median t1", "median t2", "median t3", "mean t2-3", "stayed t2-3")
    print(f"{'affinity':<10}" + "".join(f"{h:>13}" for h in head))
    for mode in MODES:
        m = modes[mode]
        t = m["ttft_median_ms"]
        stay = m["stayed_fraction_turns_2_3"]
        cells = (t["turn1"], t["turn2"], t["turn3"], m["ttft_mean_ms_turns_2_3"])
        row = "".join(f"{fmt(v):>13}" for v in cells)
        print(f"{mode:<10}{row}{fmt(None if stay is None else stay * 100):>11} %")
    print(
        f"off/on: turn 2 {fmt(ratios['turn2'], '.2f')}x, turn 3 {fmt(ratios['turn3'], '.2f')}x, "
        f"turns 2-3 (mean) {fmt(ratios['turns_2_3_mean'], '.2f')}x"
    )
    off = modes["off"]
    print(
        f"off, median of turns 2-3 by backend: stayed "
        f"{fmt(off['ttft_median_ms_turns_2_3_stayed'])} ms, "
        f"moved {fmt(off['ttft_median_ms_turns_2_3_moved'])} ms"
    )


def meta(runtime: Runtime, quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "model": runtime.model.name,
        "model_alias": MODEL_ALIAS,
        "n_ctx": N_CTX,
        "max_tokens": MAX_TOKENS,
        "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    print(f"results: {path}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.affinity", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 conversations per mode, not 8")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the results here (default: benchmarks/results/affinity-DATE.json)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime = runtime_or_exit()
    raise_on_sigterm()
    pairs = 3 if args.quick else 8
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else RESULTS_DIR / f"affinity-{stamp}.json"
    try:
        with (
            tempfile.TemporaryDirectory(prefix="nexus-affinity-") as tmp,
            llama_servers(runtime, Path(tmp)) as servers,
        ):
            conversations, tokens = asyncio.run(measure(servers, pairs, Path(tmp)))
    except KeyboardInterrupt:
        print("benchmarks.affinity: interrupted; servers stopped", file=sys.stderr)
        return 130
    summary = summarize(conversations)
    print_table(summary, tokens)
    results = {
        "meta": {**meta(runtime, args.quick), "prompt_tokens_turn1": tokens},
        "summary": summary,
        "conversations": [asdict(c) for c in conversations],
    }
    write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
