"""Every client as it is, against two real llama.cpp servers (llama-cpp-python): the
anthropic SDK, the ollama client and the openai SDK's legacy completions, all translated by
Nexus to the OpenAI API the servers speak."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import pytest

from tests.helpers import Nexus, running_nexus, wait_until
from tests.interop.conftest import MODEL_ALIAS, LlamaServer, backend_entries

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180, func_only=True)]

SECTIONS: dict[str, Any] = {
    "server": {"request_timeout_seconds": 60, "stream_idle_timeout_seconds": 30},
    "health_check": {"timeout_seconds": 10},
}
PROMPT = "Say hello in one short sentence."
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
async def nexus(tmp_path: Path, llama_servers: list[LlamaServer]) -> AsyncIterator[Nexus]:
    async with running_nexus(tmp_path, backend_entries(llama_servers), **SECTIONS) as nexus:
        await wait_until(
            lambda: all(b.routable for b in nexus.state.registry), timeout=30, what="routable"
        )
        yield nexus


def claude(nexus: Nexus) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=nexus.url, api_key="k", max_retries=0, timeout=60)


async def test_anthropic_sdk_messages_and_stream(nexus: Nexus) -> None:
    client = claude(nexus)
    message = await client.messages.create(
        model=MODEL_ALIAS, max_tokens=24, messages=[{"role": "user", "content": PROMPT}]
    )
    assert message.content and message.content[0].type == "text"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.stop_reason in ("end_turn", "max_tokens")
    async with client.messages.stream(
        model=MODEL_ALIAS, max_tokens=24, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]


async def test_anthropic_sdk_tool_use_round_trip(nexus: Nexus) -> None:
    # A 135M model rarely calls tools on its own: the round trip is driven from the
    # client's side, as a conversation where the model did call one.
    client = claude(nexus)
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}
            ],
        },
    ]
    reply = await client.messages.create(
        model=MODEL_ALIAS,
        max_tokens=24,
        tools=[WEATHER],
        messages=messages,  # type: ignore[list-item]
    )
    assert reply.content and reply.stop_reason in ("end_turn", "max_tokens", "tool_use")


async def test_anthropic_sdk_count_tokens_and_an_error(nexus: Nexus) -> None:
    client = claude(nexus)
    count = await client.messages.count_tokens(
        model=MODEL_ALIAS, messages=[{"role": "user", "content": PROMPT}]
    )
    assert count.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(
            model="claude-none", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_ollama_client(nexus: Nexus) -> None:
    client = ollama.AsyncClient(host=nexus.url, timeout=60)
    options = {"num_predict": 16, "temperature": 0}
    reply = await client.chat(
        model=MODEL_ALIAS, messages=[{"role": "user", "content": PROMPT}], options=options
    )
    assert reply.message.content and reply.done and reply.eval_count
    parts = [
        part
        async for part in await client.chat(
            model=MODEL_ALIAS,
            messages=[{"role": "user", "content": PROMPT}],
            options=options,
            stream=True,
        )
    ]
    assert parts[-1].done and "".join(p.message.content or "" for p in parts)
    generated = await client.generate(model=MODEL_ALIAS, prompt=PROMPT, options=options)
    assert generated.response and generated.done
    assert MODEL_ALIAS in {m.model for m in (await client.list()).models}
    shown = await client.show(MODEL_ALIAS)
    assert shown.modelinfo is not None
    assert (await client.ps()).models == []  # no Ollama backend to ask
    # llama-cpp-python serves embeddings only when started for them: the server refuses, and
    # Nexus says so (the request's fault, not the servers').
    with pytest.raises(ollama.ResponseError) as refused:
        await client.embed(model=MODEL_ALIAS, input="hello")
    assert refused.value.status_code == 400


async def test_openai_sdk_legacy_completions(nexus: Nexus) -> None:
    completion = await nexus.client.completions.create(
        model=MODEL_ALIAS, prompt="Once upon a time", max_tokens=12, temperature=0
    )
    assert completion.choices[0].text
    stream = await nexus.client.completions.create(
        model=MODEL_ALIAS, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
    )
    text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert text
