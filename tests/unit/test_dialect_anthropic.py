"""Anthropic dialect, both directions, checked against the official SDKs.

Every shape the dialect produces is validated by the SDK that consumes it: Anthropic shapes
as ``anthropic.types`` models and TypedDict params, OpenAI shapes as ``openai.types.chat``.
Whole streams go through the SDKs' own SSE decoders and accumulators: the ``anthropic`` and
``openai`` clients run on in-process mock transports, so no socket is ever opened.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pydantic
import pytest
from anthropic.types import Message, ModelInfo, RawMessageStreamEvent
from anthropic.types import message_create_params as anthropic_params
from anthropic.types.shared import ErrorResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as openai_params

from nexus.dialects import StreamFailed
from nexus.dialects.anthropic import (
    ANTHROPIC_VERSION,
    ChatToMessagesStream,
    MessagesToChatStream,
    error_body,
    error_message,
    from_messages_request,
    from_messages_response,
    parse_models,
    prompt_text,
    to_messages_request,
    to_messages_response,
)
from nexus.errors import InvalidRequest

LOOPBACK = "http://127.0.0.1:9"  # never dialed: the mock transports answer in-process
# The first bytes of real images: enough for anything that sniffs the type from the data.
PNG = "iVBORw0KGgoAAAANSUhEUg=="
GIF = "R0lGODlh"
WEBP = "UklGRiQAAABXRUJQVlA4IA=="
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# SDK helpers
# --------------------------------------------------------------------------------------------

_anthropic_request = {
    False: pydantic.TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming),
    True: pydantic.TypeAdapter(anthropic_params.MessageCreateParamsStreaming),
}
_openai_request = {
    False: pydantic.TypeAdapter(openai_params.CompletionCreateParamsNonStreaming),
    True: pydantic.TypeAdapter(openai_params.CompletionCreateParamsStreaming),
}
_stream_event = pydantic.TypeAdapter(RawMessageStreamEvent)


def _force(value: Any) -> Any:
    """Materialize pydantic's lazy validators of Iterable fields, so every item is checked."""
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, list | tuple | Iterator):
        return [_force(v) for v in value]
    return value


def assert_anthropic_request(req: dict[str, Any]) -> None:
    _force(_anthropic_request[bool(req.get("stream"))].validate_python(req))


def assert_openai_request(req: dict[str, Any]) -> None:
    _force(_openai_request[bool(req.get("stream"))].validate_python(req))


def anthropic_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="test",
        base_url=LOOPBACK,
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def openai_client(handler: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    transport = httpx.MockTransport(handler)
    return openai.OpenAI(
        api_key="test",
        base_url=LOOPBACK + "/v1",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


class SseReplay:
    """An Anthropic client whose every streamed request is answered with ``self.body``."""

    def __init__(self) -> None:
        self.body = b""
        self.client = anthropic_client(self._answer)

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, content=self.body, headers={"content-type": "text/event-stream"}
        )

    def final_message(self, body: bytes) -> Message:
        self.body = body
        with self.client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            return stream.get_final_message()


def sse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split SSE bytes into (event, data) pairs, checking the framing is exactly Anthropic's."""
    frames = data.split(b"\n\n")
    assert frames[-1] == b""
    events = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        name, payload = event_line[7:].decode(), json.loads(data_line[6:])
        assert payload["type"] == name
        assert data_line[6:] == orjson.dumps(payload)  # compact JSON
        if name not in ("ping", "error"):
            _stream_event.validate_python(payload)
        events.append((name, payload))
    return events


def accumulate(chunks: list[dict[str, Any]]) -> ChatCompletion:
    """The completion the openai SDK's stream accumulator builds from ``chunks``."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    # the snapshot, not get_final_completion(): that one raises on "length" and "content_filter"
    return ChatCompletion.model_validate(state.current_completion_snapshot.to_dict())


@contextlib.contextmanager
def raises_param(param: str | None) -> Iterator[None]:
    """Expect InvalidRequest naming ``param``."""
    with pytest.raises(InvalidRequest) as info:
        yield
    assert info.value.param == param, info.value.message


# --------------------------------------------------------------------------------------------
# Outbound: OpenAI request -> Anthropic request
# --------------------------------------------------------------------------------------------


def out_request(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    req = to_messages_request({"model": "alias", **body}, model="claude-test", **kwargs)
    assert_anthropic_request(req)
    return req


def test_anthropic_version_is_the_one_the_api_documents() -> None:
    assert ANTHROPIC_VERSION == "2023-06-01"


def test_system_and_developer_messages_become_system_blocks() -> None:
    req = out_request(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi"},
            ]
        }
    )
    assert req["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use French."},
    ]
    assert req["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert req["model"] == "claude-test"


def test_consecutive_same_role_turns_are_merged_and_empty_text_dropped() -> None:
    req = out_request(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "three"},
                {"role": "assistant", "content": "four"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "five"}]},
            ]
        }
    )
    assert req["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"},
                {"type": "text", "text": "three"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "four"}, {"type": "text", "text": "five"}],
        },
    ]


def test_image_parts_become_base64_or_url_sources() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
    ]
    req = out_request({"messages": [{"role": "user", "content": parts}]})
    assert req["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.webp"}},
    ]


def test_tools_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    base = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    req = out_request(base)
    assert req["tools"] == [
        {
            "name": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "description": "Weather for a city",
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in req  # Anthropic's default is auto
    named = {"type": "function", "function": {"name": "now"}}
    cases: list[tuple[Any, Any, dict[str, Any]]] = [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (named, None, {"type": "tool", "name": "now"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (named, False, {"type": "tool", "name": "now", "disable_parallel_tool_use": True}),
        ("auto", True, {"type": "auto"}),
    ]
    for choice, parallel, expected in cases:
        extra = {"tool_choice": choice, "parallel_tool_calls": parallel}
        assert out_request({**base, **extra})["tool_choice"] == expected


def test_tool_choice_without_tools_is_dropped() -> None:
    req = out_request(
        {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "none", "tools": []}
    )
    assert "tool_choice" not in req and "tools" not in req


def test_tool_calls_and_tool_results() -> None:
    req = out_request(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "functions.weather:1",
                            "type": "function",
                            "function": {"name": "now", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "functions.weather:1",
                    "content": [{"type": "text", "text": "noon"}],
                },
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather"}}],
        }
    )
    assert req["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "functions_weather_1", "name": "now", "input": {}},
        ],
    }
    assert req["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "call_1",
                "content": [{"type": "text", "text": "18C"}],
            },
            {
                "type": "tool_result",
                "tool_use_id": "functions_weather_1",
                "content": [{"type": "text", "text": "noon"}],
            },
            {"type": "text", "text": "Thanks"},
        ],
    }


def test_a_tool_history_without_tools_declares_them_uncallable() -> None:
    """Anthropic refuses tool_use blocks in a request without tools; OpenAI does not."""
    call = {"id": "c", "type": "function", "function": {"name": "grep", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "tool_calls": [call, {**call, "id": "d"}]},
        {"role": "tool", "tool_call_id": "c", "content": "found"},
        {"role": "tool", "tool_call_id": "d", "content": "found again"},
        {"role": "user", "content": "summarize"},
    ]
    req = out_request({"messages": messages})
    assert req["tools"] == [{"name": "grep", "input_schema": {"type": "object"}}]
    assert req["tool_choice"] == {"type": "none"}
    assert "tools" not in out_request({"messages": messages[:1]})


def test_tool_results_come_first_in_their_user_turn() -> None:
    req = out_request(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "user", "content": "b"},
                {"role": "tool", "tool_call_id": "c", "content": ""},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert req["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c"},
        {"type": "text", "text": "b"},
    ]


def test_sampling_limits_user_and_stream() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert out_request({"messages": msgs})["max_tokens"] == 4096
    assert out_request({"messages": msgs}, default_max_tokens=100)["max_tokens"] == 100
    assert out_request({"messages": msgs, "max_tokens": 7})["max_tokens"] == 7
    both = {"messages": msgs, "max_tokens": 7, "max_completion_tokens": 9}
    assert out_request(both)["max_tokens"] == 9
    req = out_request(
        {
            "messages": msgs,
            "temperature": 1.6,
            "top_p": 0.9,
            "stop": "END",
            "user": "u-42",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert req["temperature"] == 1.0  # clamped into Anthropic's 0..1
    assert "top_p" not in req  # Claude 4.5 and later refuse temperature with top_p
    assert out_request({"messages": msgs, "top_p": 0.9})["top_p"] == 0.9
    assert req["stop_sequences"] == ["END"]
    assert req["metadata"] == {"user_id": "u-42"}
    assert req["stream"] is True
    req = out_request({"messages": msgs, "temperature": 0.7, "top_p": 1, "stop": ["a", "", "b"]})
    assert req["temperature"] == 0.7
    assert "top_p" not in req  # a no-op that recent Claude models refuse next to temperature
    assert req["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in out_request({"messages": msgs, "stop": None})


def test_fields_without_an_anthropic_meaning_are_dropped() -> None:
    dropped = {
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "logit_bias": {"1": 2},
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "store": True,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "reasoning_effort": "low",
        "n": 1,
        "response_format": {"type": "text"},
        "stream_options": {"include_usage": True},
        "prompt_cache_key": "k",
    }
    req = out_request({"messages": [{"role": "user", "content": "hi", "name": "bob"}], **dropped})
    assert set(req) == {"model", "max_tokens", "messages"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,AA"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "9"}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": True}, "top_p"),
        ({"stop": 5}, "stop"),
        ({"tools": {"name": "f"}}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {}},
            },
            "tool_choice",
        ),
    ],
)
def test_invalid_or_unsupported_openai_requests(body: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    with raises_param(param):
        to_messages_request(body, model="claude-test")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [('{"city": "Par', "not valid JSON"), ("[1, 2]", "JSON object"), ("5", "JSON object")],
)
def test_tool_call_arguments_must_be_a_json_object(arguments: str, message: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [call]},
        ]
    }
    with raises_param("messages[1].tool_calls[0].function.arguments"):
        to_messages_request(body, model="claude-test")
    with pytest.raises(InvalidRequest, match=message):
        to_messages_request(body, model="claude-test")


def test_a_request_the_openai_sdk_sends_becomes_a_valid_anthropic_request() -> None:
    sent: list[dict[str, Any]] = []

    def backend(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        answer = {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
        }
        return httpx.Response(200, json=answer)

    openai_client(backend).chat.completions.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}},
                ],
            },
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="required",
        max_completion_tokens=50,
        temperature=0.2,
        stop=["\n\n"],
        user="someone",
    )
    req = to_messages_request(sent[0], model="claude-test")
    assert_anthropic_request(req)
    assert req["tool_choice"] == {"type": "any"}
    assert req["messages"][0]["content"][1]["source"]["media_type"] == "image/gif"


# --------------------------------------------------------------------------------------------
# Outbound: Anthropic answers -> OpenAI answers
# --------------------------------------------------------------------------------------------

MESSAGE: dict[str, Any] = {
    "id": "msg_01ABC",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me check. "},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "text", "text": "And the time."},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
    },
}


def test_a_message_becomes_a_chat_completion() -> None:
    Message.model_validate(MESSAGE)  # the sample is a real Anthropic shape
    out = from_messages_response(MESSAGE, model="alias", created=1700000000)
    completion = ChatCompletion.model_validate(out)
    assert completion.id == "chatcmpl-01ABC"
    assert completion.model == "alias"
    assert completion.created == 1700000000
    choice = completion.choices[0]
    assert choice.message.content == "Let me check. And the time."
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("toolu_1", "weather", {"city": "Paris"}),
        ("toolu_2", "now", {}),
    ]
    assert out["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 20,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 5},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str | None, finish: str) -> None:
    msg = {**MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    out = from_messages_response(msg, model="m", created=0)
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish


def test_a_tool_only_answer_has_null_content_and_thinking_tokens_are_reasoning() -> None:
    msg = {
        **MESSAGE,
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1, "b"]}}],
        "usage": {
            "input_tokens": 3,
            "output_tokens": 4,
            "output_tokens_details": {"thinking_tokens": 2},
        },
    }
    out = from_messages_response(msg, model="m", created=0)
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"a":[1,"b"]}'
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert out["usage"]["prompt_tokens"] == 3
    empty = from_messages_response({**MESSAGE, "content": []}, model="m", created=0)
    assert ChatCompletion.model_validate(empty).choices[0].message.content == ""


def test_the_openai_sdk_parses_a_translated_answer() -> None:
    out = from_messages_response(MESSAGE, model="alias", created=5)
    client = openai_client(lambda request: httpx.Response(200, json=out))
    completion = client.chat.completions.create(
        model="alias", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.choices[0].message.content == "Let me check. And the time."
    assert completion.usage is not None and completion.usage.prompt_tokens == 115


# --------------------------------------------------------------------------------------------
# Outbound: Anthropic stream events -> OpenAI chunks
# --------------------------------------------------------------------------------------------


def message_events(message: dict[str, Any], step: int = 3) -> list[dict[str, Any]]:
    """The events Anthropic streams for ``message``, text and JSON cut every ``step`` chars."""

    def pieces(text: str) -> list[str]:
        return [text[i : i + step] for i in range(0, len(text), step)]

    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            opened, deltas = (
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": p} for p in pieces(block["text"])],
            )
        elif block["type"] == "tool_use":
            opened = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in pieces(json.dumps(block["input"]))
            ]
        else:
            opened = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        events.append({"type": "content_block_start", "index": i, "content_block": opened})
        if i == 0:
            events.append({"type": "ping"})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    events.append({"type": "message_delta", "delta": delta, "usage": usage})
    events.append({"type": "message_stop"})
    for event in events:
        if event["type"] != "ping":
            _stream_event.validate_python(event)  # the synthetic stream is a real Anthropic one
    return events


def run_stream(events: list[dict[str, Any]], include_usage: bool = True) -> list[dict[str, Any]]:
    translator = MessagesToChatStream(model="alias", created=42, include_usage=include_usage)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert translator.finished
    return chunks


def test_stream_events_become_chunks() -> None:
    translator = MessagesToChatStream(model="alias", created=42, include_usage=True)
    assert translator.usage is None and not translator.finished
    events = message_events(MESSAGE)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == "chatcmpl-01ABC" and c["model"] == "alias" for c in chunks)
    tool_starts = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "id" in c["choices"][0]["delta"].get("tool_calls", [{}])[0]
    ]
    assert tool_starts == [
        {
            "index": 0,
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_2",
            "type": "function",
            "function": {"name": "now", "arguments": ""},
        },
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == translator.usage
    assert translator.usage == from_messages_response(MESSAGE, model="m", created=0)["usage"]
    assert translator.finished
    completion = accumulate(chunks)
    assert completion.choices[0].message.content == "Let me check. And the time."
    calls = completion.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {}]


def test_without_include_usage_there_is_no_usage_chunk() -> None:
    chunks = run_stream(message_events(MESSAGE), include_usage=False)
    assert all(c["choices"] and "usage" not in c for c in chunks)


def test_ping_thinking_and_unknown_events_yield_nothing() -> None:
    translator = MessagesToChatStream(model="m", created=0, include_usage=False)
    translator.feed(message_events(MESSAGE)[0])
    for event in [
        {"type": "ping"},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "x"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "brand_new_event", "data": 1},
    ]:
        assert translator.feed(event) == []


def test_an_error_event_raises_stream_failed() -> None:
    translator = MessagesToChatStream(model="m", created=0, include_usage=False)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(StreamFailed) as info:
        translator.feed(error)
    assert str(info.value) == "Overloaded" and info.value.kind == "overloaded_error"
    assert not translator.finished


def test_error_message_of_anthropic_error_bodies() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"},"request_id":"req_1"}'
    ErrorResponse.model_validate_json(body)
    assert error_message(body) == "max_tokens: too big"
    for junk in (
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1]",
        b'{"error": "x"}',
        b'{"error": {"message": 5}}',
    ):
        assert error_message(junk) == ""


def test_parse_models_reads_the_current_listing() -> None:
    listing = {
        "data": [
            {
                "type": "model",
                "id": "claude-sonnet-4-5",
                "display_name": "Claude Sonnet 4.5",
                "created_at": "2025-09-29T00:00:00Z",
                "lifecycle": "active",
                "max_input_tokens": 200000,
                "max_tokens": 64000,
            },
            {
                "type": "model",
                "id": "claude-haiku-3",
                "display_name": "Claude Haiku 3",
                "created_at": "2024-03-07T00:00:00Z",
                "lifecycle": "deprecated",
            },
            {
                "type": "model",
                "id": "claude-2",
                "display_name": "Claude 2",
                "created_at": "2023-07-11T00:00:00Z",
                "lifecycle": "retired",
            },
        ],
        "has_more": False,
        "first_id": "claude-sonnet-4-5",
        "last_id": "claude-2",
    }
    for entry in listing["data"]:
        ModelInfo.model_validate(entry)
    sonnet, haiku = parse_models(listing)
    assert (sonnet.id, sonnet.name, sonnet.context_length, sonnet.max_output_tokens) == (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        200000,
        64000,
    )
    assert (haiku.id, haiku.context_length, haiku.max_output_tokens) == (
        "claude-haiku-3",
        None,
        None,
    )
    for model in (sonnet, haiku):
        assert model.supports_chat and model.supports_vision and model.supports_tools
        assert model.supports_json_mode is False and model.supports_embeddings is False
    no_images = {"id": "x", "capabilities": {"image_input": {"supported": False}}}
    assert parse_models({"data": [no_images]})[0].supports_vision is False
    assert parse_models({"data": [None, {"id": 5}, {"id": ""}]}) == []
    assert parse_models(["not", "a", "listing"]) == []


# --------------------------------------------------------------------------------------------
# Inbound: Anthropic request -> OpenAI request
# --------------------------------------------------------------------------------------------


def in_request(body: dict[str, Any]) -> dict[str, Any]:
    req = from_messages_request({"model": "claude-x", "max_tokens": 100, **body})
    assert_openai_request(req)
    return req


def test_a_simple_messages_request() -> None:
    req = in_request(
        {
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be kind."},
            ],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                },
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 2000},
        }
    )
    assert req == {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            },
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "u1",
    }


def test_images_tool_use_and_tool_results() -> None:
    req = in_request(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.jpg"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Checking"},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "partial"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/gif",
                                        "data": GIF,
                                    },
                                },
                            ],
                        },
                        {"type": "text", "text": "Go on"},
                    ],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]},
            ],
            "tools": [
                {
                    "name": "weather",
                    "description": "Weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
                {"type": "custom", "name": "shot", "input_schema": {"type": "object"}},
            ],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        }
    )
    msgs = req["messages"]
    assert msgs[0]["content"][1:] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
    ]
    assert msgs[1] == {
        "role": "assistant",
        "content": "Checking",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "toolu_2", "type": "function", "function": {"name": "shot", "arguments": "{}"}},
        ],
    }
    assert msgs[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: partial"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}},
                {"type": "text", "text": "Go on"},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_9", "content": ""},
    ]
    assert req["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Weather",
            },
        },
        {"type": "function", "function": {"name": "shot", "parameters": {"type": "object"}}},
    ]
    assert req["tool_choice"] == "auto" and req["parallel_tool_calls"] is False


def test_tool_choice_mapping_and_stream() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    msgs = [{"role": "user", "content": "hi"}]
    for choice, expected in [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ]:
        req = in_request({"messages": msgs, "tools": tools, "tool_choice": choice})
        assert req["tool_choice"] == expected and "parallel_tool_calls" not in req
    req = in_request({"messages": msgs, "tool_choice": {"type": "any"}, "stream": True})
    assert "tool_choice" not in req and "tools" not in req
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}


def test_structured_output_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": schema}},
    }
    assert_anthropic_request({"model": "m", "max_tokens": 5, **body})
    assert in_request(body)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    effort_only = in_request({**body, "output_config": {"effort": "high"}})
    assert "response_format" not in effort_only


def test_system_turns_among_messages_keep_their_place() -> None:
    req = in_request(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "system", "content": [{"type": "text", "text": "now be formal"}]},
                {"role": "user", "content": "b"},
            ]
        }
    )
    assert [m["role"] for m in req["messages"]] == ["user", "system", "user"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 5}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages.0"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages.0.content.0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages.0.content.0.text",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
            "messages.0.content.0.source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png"},
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.source.data",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "text", "data": "x"}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
                ]
            },
            "messages.1.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}],
                    },
                ]
            },
            "messages.1.content.0.input",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "server_tool_use",
                                "id": "s",
                                "name": "web_search",
                                "input": {},
                            }
                        ],
                    },
                ]
            },
            "messages.1.content.0.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages.0.content.0.tool_use_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}],
                    }
                ]
            },
            "messages.0.content.0.is_error",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "search_result"}],
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}],
                    }
                ]
            },
            "messages.0.content.0.content",
        ),
        ({"system": 5}, "system"),
        ({"system": [{"type": "image", "source": {}}]}, "system.0.type"),
        ({"tools": {"name": "f"}}, "tools"),
        ({"tools": ["f"]}, "tools.0"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"tools": [{"input_schema": {"type": "object"}}]}, "tools.0.name"),
        ({"tools": [{"name": "f", "input_schema": {}, "description": 5}]}, "tools.0.description"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"tool_choice": "auto"}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        (
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": 1}},
            "tool_choice.disable_parallel_tool_use",
        ),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"metadata": "u"}, "metadata"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"stream": "yes"}, "stream"),
        ({"output_config": "x"}, "output_config"),
        ({"output_config": {"format": {"type": "xml"}}}, "output_config.format.type"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
    ],
)
def test_invalid_or_unsupported_messages_requests(change: dict[str, Any], param: str) -> None:
    body = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    body.update(change)
    with raises_param(param):
        from_messages_request(body)


def test_a_body_that_is_not_an_object_is_rejected() -> None:
    with raises_param(None):
        from_messages_request(["not", "an", "object"])


# --------------------------------------------------------------------------------------------
# Inbound: OpenAI answers -> Anthropic answers
# --------------------------------------------------------------------------------------------

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-xyz",
    "object": "chat.completion",
    "created": 1,
    "model": "llama3",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "bad", "arguments": '{"x": tru'},
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 100},
    },
}


def test_a_chat_completion_becomes_a_message() -> None:
    ChatCompletion.model_validate(COMPLETION)
    out = to_messages_response(COMPLETION, model="claude-x")
    message = Message.model_validate(out)
    assert message.id == "msg_xyz" and message.model == "claude-x"
    assert out["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Rome"}},
        {"type": "tool_use", "id": "call_2", "name": "bad", "input": {}},
    ]
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert out["usage"] == {
        "input_tokens": 20,
        "output_tokens": 30,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
    }


def test_ids_round_trip_between_the_two_apis() -> None:
    message = to_messages_response(from_messages_response(MESSAGE, model="m", created=0), model="m")
    assert message["id"] == MESSAGE["id"]
    assert message["usage"] == MESSAGE["usage"]


@pytest.mark.parametrize(
    ("finish", "tools", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("stop", True, "tool_use"),  # some backends end tool calls with "stop"
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", False, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("weird", False, "end_turn"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(
    finish: str | None, tools: bool, stop_reason: str
) -> None:
    choice = COMPLETION["choices"][0]
    message = choice["message"] if tools else {"role": "assistant", "content": "x"}
    resp = {**COMPLETION, "choices": [{**choice, "message": message, "finish_reason": finish}]}
    assert Message.model_validate(to_messages_response(resp, model="m")).stop_reason == stop_reason


def test_odd_answers_still_make_valid_messages() -> None:
    for resp in (
        {},
        {"choices": []},
        {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "I can't."}}]},
        {
            "choices": [
                {
                    "message": {
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
                    }
                }
            ]
        },
    ):
        Message.model_validate(to_messages_response(resp, model="m"))
    refusal = to_messages_response(
        {
            "choices": [
                {"message": {"content": None, "refusal": "No."}, "finish_reason": "content_filter"}
            ]
        },
        model="m",
    )
    assert refusal["content"] == [{"type": "text", "text": "No."}]
    assert refusal["stop_reason"] == "refusal"
    assert to_messages_response({}, model="m")["usage"] == {"input_tokens": 0, "output_tokens": 0}
    parts = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]
    }
    assert to_messages_response(parts, model="m")["content"] == [{"type": "text", "text": "ab"}]
    # some servers hand arguments over as an object rather than a JSON string
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"k": 1}}}
    loose = {"choices": [{"message": {"content": None, "tool_calls": [call]}}]}
    assert to_messages_response(loose, model="m")["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {"k": 1}}
    ]


def test_the_anthropic_sdk_round_trip_through_an_openai_backend() -> None:
    """The anthropic SDK sends a request; it is translated to OpenAI chat, a backend answers,
    and the answer comes back as a Message the SDK parses."""
    seen: list[dict[str, Any]] = []

    def nexus(request: httpx2.Request) -> httpx2.Response:
        chat = from_messages_request(json.loads(request.content))
        assert_openai_request(chat)
        seen.append(chat)
        last = chat["messages"][-1]["content"]
        answer = {
            **COMPLETION,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo: {last}"},
                    "finish_reason": "stop",
                }
            ],
        }
        return httpx2.Response(200, json=to_messages_response(answer, model=chat["model"]))

    message = anthropic_client(nexus).messages.create(
        model="claude-x",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "ping"}],
        tools=[{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        tool_choice={"type": "any"},
        stop_sequences=["END"],
        metadata={"user_id": "u"},
        extra_body={"temperature": 0.3},  # SDK 1.0 dropped the keyword; older clients send it
    )
    assert message.content[0].type == "text" and message.content[0].text == "echo: ping"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 30
    assert seen[0]["tool_choice"] == "required" and seen[0]["user"] == "u"
    assert seen[0]["temperature"] == 0.3


# --------------------------------------------------------------------------------------------
# Inbound: OpenAI chunks -> Anthropic SSE
# --------------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    out = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama3",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    ChatCompletionChunk.model_validate(out)
    return out


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return chunk({}, usage=usage) | {"choices": []}


def run_chat_stream(chunks: list[dict[str, Any]], input_tokens: int = 0) -> bytes:
    stream = ChatToMessagesStream(model="claude-x", message_id="msg_abc", input_tokens=input_tokens)
    return b"".join(stream.feed(c) for c in chunks) + stream.finish()


def test_a_text_stream_in_anthropic_order() -> None:
    data = run_chat_stream(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            usage_chunk(11, 2),
        ],
        input_tokens=9,
    )
    events = sse_events(data)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["usage"]) == (
        "msg_abc",
        "claude-x",
        {"input_tokens": 9, "output_tokens": 0},
    )
    assert events[6][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[6][1]["usage"] == {"input_tokens": 11, "output_tokens": 2}
    message = SseReplay().final_message(data)
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 2)


def test_tool_calls_become_tool_use_blocks() -> None:
    data = run_chat_stream(
        [
            chunk({"role": "assistant", "content": "Checking"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "now", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    events = sse_events(data)
    starts = [(e["index"], e["content_block"]) for n, e in events if n == "content_block_start"]
    assert starts == [
        (0, {"type": "text", "text": ""}),
        (1, {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}}),
        (2, {"type": "tool_use", "id": "call_b", "name": "now", "input": {}}),
    ]
    stops = [e["index"] for n, e in events if n == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"output_tokens": 0}  # no usage chunk: nothing invented
    message = SseReplay().final_message(data)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.content[2].input == {}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_an_empty_stream_is_still_a_valid_message() -> None:
    data = run_chat_stream([])
    assert [name for name, _ in sse_events(data)] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]
    message = SseReplay().final_message(data)
    assert message.content == [] and message.stop_reason == "end_turn"
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    assert (
        stream.finish() != b""
        and stream.finish() == b""
        and stream.feed(chunk({"content": "late"})) == b""
    )


def test_other_choices_and_late_arguments_are_not_relayed() -> None:
    other = chunk({"content": "second choice"}) | {
        "choices": [{"index": 1, "delta": {"content": "no"}, "finish_reason": None}]
    }
    data = run_chat_stream(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}
                    ]
                }
            ),
            chunk({"content": "text"}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "junk"}}]}),
            other,
            chunk({}, "length"),
        ]
    )
    message = SseReplay().final_message(data)
    assert [b.type for b in message.content] == ["tool_use", "text"]
    assert message.content[1].text == "text"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"


def test_an_error_frame_ends_the_stream_and_the_sdk_raises_it() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    data = stream.feed(chunk({"content": "par"})) + stream.error(
        "backend went away", "overloaded_error"
    )
    assert stream.finish() == b""
    name, payload = sse_events(data)[-1]
    assert name == "error"
    error = ErrorResponse.model_validate(payload)
    assert error.error.type == "overloaded_error" and error.error.message == "backend went away"
    assert sse_events(stream.error("x"))[0][1]["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError, match="backend went away"):
        SseReplay().final_message(data)


# --------------------------------------------------------------------------------------------
# error_body, prompt_text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "sdk_error"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (408, "invalid_request_error", anthropic.APIStatusError),
        (413, "request_too_large", anthropic.APIStatusError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (502, "api_error", anthropic.InternalServerError),
        (503, "overloaded_error", anthropic.InternalServerError),
        (504, "timeout_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.OverloadedError),
        (599, "api_error", anthropic.InternalServerError),
    ],
)
def test_error_bodies_carry_the_anthropic_type(
    status: int, kind: str, sdk_error: type[Exception]
) -> None:
    body = error_body(status, "no healthy backend")
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": kind, "message": "no healthy backend"},
    }
    if kind != "request_too_large":  # documented, but not in the SDK's error-object union
        ErrorResponse.model_validate_json(body)
    assert error_message(body) == "no healthy backend"
    client = anthropic_client(
        lambda request: httpx2.Response(
            status, content=body, headers={"content-type": "application/json"}
        )
    )
    with pytest.raises(sdk_error) as info:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert "no healthy backend" in str(info.value)


def test_prompt_text_gathers_every_text_a_model_reads() -> None:
    body = {
        "system": [{"type": "text", "text": "SYS"}],
        "messages": [
            {"role": "user", "content": "Q1"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "A1"},
                    {"type": "tool_use", "id": "t", "name": "f", "input": {"arg": "IN"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "OUT"}],
                    },
                    {"type": "image", "source": {}},
                ],
            },
        ],
        "tools": [{"name": "lookup", "description": "DESC", "input_schema": {"type": "object"}}],
    }
    text = prompt_text(body)
    for piece in ("SYS", "Q1", "A1", "IN", "OUT", "lookup", "DESC"):
        assert piece in text
    assert prompt_text({"messages": "junk", "system": 5, "tools": [{1, 2}]}) == ""


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=12)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,11}", fullmatch=True)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
image_urls = st.sampled_from(
    [f"data:image/png;base64,{PNG}", f"data:image/webp;base64,{WEBP}", "https://example.com/x.jpg"]
)


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    def user() -> dict[str, Any]:
        if draw(st.booleans()):
            return {"role": "user", "content": draw(texts)}
        parts = draw(
            st.lists(
                texts.map(lambda t: {"type": "text", "text": t})
                | image_urls.map(lambda u: {"type": "image_url", "image_url": {"url": u}}),
                min_size=1,
                max_size=3,
            )
        )
        return {"role": "user", "content": parts}

    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(texts)}
        )
    messages.append(user())
    for turn in range(draw(st.integers(0, 3))):
        calls = draw(st.lists(st.tuples(names, arguments), max_size=2))
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": draw(texts) if not calls or draw(st.booleans()) else None,
        }
        if calls:
            assistant["tool_calls"] = [
                {
                    "id": f"call_{turn}_{k}",
                    "type": "function",
                    "function": {"name": n, "arguments": json.dumps(a)},
                }
                for k, (n, a) in enumerate(calls)
            ]
        messages.append(assistant)
        messages += [
            {"role": "tool", "tool_call_id": f"call_{turn}_{k}", "content": draw(texts)}
            for k in range(len(calls))
        ]
        messages.append(user())
    tools = [
        {
            "type": "function",
            "function": {
                "name": n,
                "description": d,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
        for n, d in draw(st.lists(st.tuples(names, texts), max_size=2, unique_by=lambda t: t[0]))
    ]
    body: dict[str, Any] = {"model": "gpt", "messages": messages}
    if tools:
        body["tools"] = tools
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    "auto",
                    "none",
                    "required",
                    {"type": "function", "function": {"name": tools[0]["function"]["name"]}},
                ]
            )
        )
        body["parallel_tool_calls"] = draw(st.booleans())
    body["temperature"] = draw(st.floats(0, 2))
    assert_openai_request(body)
    return body


def openai_texts(body: dict[str, Any]) -> list[str]:
    out = []
    for msg in body["messages"]:
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        for part in content if isinstance(content, list) else []:
            if part["type"] == "text":
                out.append(part["text"])
    return out


def anthropic_texts(req: dict[str, Any]) -> list[str]:
    out = [block["text"] for block in req.get("system", [])]
    for turn in req["messages"]:
        for block in turn["content"]:
            if block["type"] == "text":
                out.append(block["text"])
            elif block["type"] == "tool_result":
                out += [b["text"] for b in block.get("content", [])]
    return out


@PROPERTY
@given(openai_requests())
def test_any_openai_request_translates_and_keeps_its_text(body: dict[str, Any]) -> None:
    req = to_messages_request(body, model="claude-test")
    assert_anthropic_request(req)
    assert not Counter(openai_texts(body)) - Counter(anthropic_texts(req))
    if any(b["type"] == "tool_use" for turn in req["messages"] for b in turn["content"]):
        assert req["tools"]  # Anthropic refuses tool_use blocks without tool definitions
    roles = [turn["role"] for turn in req["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    sent_calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for m in body["messages"]
        for c in m.get("tool_calls", [])
    ]
    got_calls = [
        (b["id"], b["name"], b["input"])
        for turn in req["messages"]
        for b in turn["content"]
        if b["type"] == "tool_use"
    ]
    assert got_calls == sent_calls


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    def text_block() -> dict[str, Any]:
        return {"type": "text", "text": draw(texts)}

    def image_block() -> dict[str, Any]:
        if draw(st.booleans()):
            return {"type": "image", "source": {"type": "url", "url": "https://example.com/i.png"}}
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
        }

    def user(tool_ids: list[str]) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = []
        for tool_id in tool_ids:
            content = draw(
                st.one_of(
                    texts,
                    st.lists(st.one_of(st.builds(text_block), st.builds(image_block)), max_size=2),
                )
            )
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": tool_id,
                    "content": content,
                    "is_error": draw(st.booleans()),
                }
            )
        blocks += draw(
            st.lists(
                st.one_of(st.builds(text_block), st.builds(image_block)),
                min_size=0 if tool_ids else 1,
                max_size=2,
            )
        )
        if not tool_ids and draw(st.booleans()):
            return {"role": "user", "content": draw(texts)}
        return {"role": "user", "content": blocks}

    messages = [user([])]
    for turn in range(draw(st.integers(0, 3))):
        calls = draw(st.lists(st.tuples(names, arguments), max_size=2))
        blocks = [text_block()] if not calls or draw(st.booleans()) else []
        ids = [f"toolu_{turn}_{k}" for k in range(len(calls))]
        blocks += [
            {"type": "tool_use", "id": i, "name": n, "input": a}
            for i, (n, a) in zip(ids, calls, strict=True)
        ]
        messages.append({"role": "assistant", "content": blocks})
        messages.append(user(ids))
    body: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": draw(st.integers(1, 8192)),
        "messages": messages,
    }
    system = draw(st.none() | texts | st.lists(st.builds(text_block), min_size=1, max_size=2))
    if system is not None:
        body["system"] = system
    tools = draw(st.lists(names, max_size=2, unique=True))
    if tools:
        body["tools"] = [
            {"name": n, "description": draw(texts), "input_schema": {"type": "object"}}
            for n in tools
        ]
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    {"type": "auto"},
                    {"type": "any", "disable_parallel_tool_use": True},
                    {"type": "tool", "name": tools[0]},
                    {"type": "none"},
                ]
            )
        )
    body["temperature"] = draw(st.floats(0, 1))
    assert_anthropic_request(body)
    return body


def messages_texts(body: dict[str, Any]) -> list[str]:
    out = (
        [body["system"]]
        if isinstance(body.get("system"), str)
        else [b["text"] for b in body.get("system", [])]
    )
    for msg in body["messages"]:
        blocks = (
            [{"type": "text", "text": msg["content"]}]
            if isinstance(msg["content"], str)
            else msg["content"]
        )
        for block in blocks:
            if block["type"] == "text":
                out.append(block["text"])
            elif block["type"] == "tool_result":
                content = block["content"]
                out += (
                    [content]
                    if isinstance(content, str)
                    else [b["text"] for b in content if b["type"] == "text"]
                )
    return out


def chat_texts(req: dict[str, Any]) -> list[str]:
    out = []
    for msg in req["messages"]:
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        for part in content if isinstance(content, list) else []:
            if part["type"] == "text":
                out.append(part["text"])
    return out


@PROPERTY
@given(anthropic_requests())
def test_any_messages_request_translates_and_keeps_its_text(body: dict[str, Any]) -> None:
    req = from_messages_request(body)
    assert_openai_request(req)
    kept = chat_texts(req)
    for text in messages_texts(body):
        assert any(text in k for k in kept), text
    sent_calls = [
        (b["id"], b["name"], b["input"])
        for m in body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_use"
    ]
    got_calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for m in req["messages"]
        for c in m.get("tool_calls", [])
    ]
    assert got_calls == sent_calls
    tool_ids = [m["tool_call_id"] for m in req["messages"] if m["role"] == "tool"]
    assert tool_ids == [cid for cid, _, _ in sent_calls]


@st.composite
def anthropic_messages(draw: st.DrawFn) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for k in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "tool_use", "thinking"]))
        if kind == "text":
            content.append({"type": "text", "text": draw(texts)})
        elif kind == "tool_use":
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{k}",
                    "name": draw(names),
                    "input": draw(arguments),
                }
            )
        else:
            content.append({"type": "thinking", "thinking": draw(texts), "signature": "sig"})
    usage = {
        key: draw(st.integers(0, 10**6))
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
    }
    stop = draw(st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]))
    message = {
        "id": "msg_" + draw(st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True)),
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": "END" if stop == "stop_sequence" else None,
        "usage": usage,
    }
    Message.model_validate(message)
    return message


@PROPERTY
@given(anthropic_messages(), st.integers(1, 8))
def test_a_streamed_message_reconstructs_the_whole_answer(
    message: dict[str, Any], step: int
) -> None:
    chunks = run_stream(message_events(message, step))
    streamed = accumulate(chunks)
    whole = ChatCompletion.model_validate(
        from_messages_response(message, model="alias", created=42)
    )
    got, want = streamed.choices[0], whole.choices[0]
    assert (got.message.content or "") == (want.message.content or "")
    assert got.finish_reason == want.finish_reason
    got_calls = [
        (c.id, c.function.name, json.loads(c.function.arguments))
        for c in got.message.tool_calls or []
    ]  # type: ignore[union-attr]
    want_calls = [
        (c.id, c.function.name, json.loads(c.function.arguments))
        for c in want.message.tool_calls or []
    ]  # type: ignore[union-attr]
    assert got_calls == want_calls
    assert streamed.usage == whole.usage
    assert streamed.id == whole.id


@st.composite
def openai_completions(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A whole chat completion and the chunks a backend would stream for it."""
    text = draw(st.text(max_size=20))
    calls = [
        {"id": f"call_{k}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for k, (n, a) in enumerate(draw(st.lists(st.tuples(names, arguments), max_size=3)))
    ]
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    usage = {
        "prompt_tokens": draw(st.integers(0, 10**5)),
        "completion_tokens": draw(st.integers(0, 10**5)),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    whole = {
        **COMPLETION,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }
    step = draw(st.integers(1, 6))
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": text[i : i + step]}) for i in range(0, len(text), step)]
    for k, call in enumerate(calls):
        args = call["function"]["arguments"]
        first = {
            "index": k,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        chunks.append(chunk({"tool_calls": [first]}))
        chunks += [
            chunk({"tool_calls": [{"index": k, "function": {"arguments": args[i : i + step]}}]})
            for i in range(0, len(args), step)
        ]
    chunks.append(chunk({}, finish))
    chunks.append(usage_chunk(usage["prompt_tokens"], usage["completion_tokens"]))
    return whole, chunks


_replay = SseReplay()


@PROPERTY
@given(openai_completions())
def test_a_relayed_stream_is_the_message_the_sdk_would_get_whole(
    case: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    whole, chunks = case
    data = run_chat_stream(chunks)
    sse_events(data)
    streamed = _replay.final_message(data)
    expected = Message.model_validate(to_messages_response(whole, model="claude-x"))
    assert [b.to_dict() for b in streamed.content] == [b.to_dict() for b in expected.content]
    assert streamed.stop_reason == expected.stop_reason
    assert streamed.usage.input_tokens == expected.usage.input_tokens
    assert streamed.usage.output_tokens == expected.usage.output_tokens
