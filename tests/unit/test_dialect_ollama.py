"""The Ollama dialect: Ollama's native API <-> OpenAI chat, checked against both official clients.

Every Ollama shape the dialect produces validates as the ``ollama`` package's pydantic types;
requests are also built the way that client builds them (``ChatRequest(...).model_dump(
exclude_none=True)``). OpenAI answers fed in validate as ``openai.types``; OpenAI requests the
dialect builds validate as the SDK's ``CompletionCreateParams`` / ``EmbeddingCreateParams``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ollama._client import _copy_messages, _copy_tools
from ollama._types import (
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    Image,
    ListResponse,
    Message,
    Options,
    ProcessResponse,
    ShowResponse,
)
from openai.types import CreateEmbeddingResponse, embedding_create_params
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params
from pydantic import TypeAdapter

from nexus.dialects import StreamFailed
from nexus.dialects.ollama import (
    ZERO_TIME,
    ChatToOllamaStream,
    chat_from_ollama,
    chat_to_ollama,
    embed_from_ollama,
    embed_to_ollama,
    embeddings_from_ollama,
    embeddings_to_ollama,
    error_body,
    generate_from_ollama,
    generate_to_ollama,
    is_load_request,
    load_answer,
    ps,
    show,
    tags,
    version,
)
from nexus.errors import InvalidRequest
from nexus.registry import Model

NOW = "2025-07-07T20:22:19.184789Z"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
BMP = b"BM\x36\x00\x00\x00\x00\x00"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- helpers --------------------------------------------------------------------------------


def _drain(value: Any) -> None:
    """Consume the lazy iterators pydantic returns for ``Iterable`` fields, so they validate."""
    if isinstance(value, dict):
        for item in value.values():
            _drain(item)
    elif isinstance(value, str | bytes | int | float | bool | type(None)):
        return
    else:
        for item in value:
            _drain(item)


CHAT_PARAMS: dict[bool, TypeAdapter[Any]] = {
    True: TypeAdapter(completion_create_params.CompletionCreateParamsStreaming),
    False: TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming),
}
EMBED_PARAMS: TypeAdapter[Any] = TypeAdapter(embedding_create_params.EmbeddingCreateParams)


def openai_chat(req: dict[str, Any]) -> dict[str, Any]:
    """The request validates as the OpenAI SDK's chat request params; returned unchanged."""
    _drain(CHAT_PARAMS[req["stream"]].validate_python(req))
    return req


def chat(body: Any) -> dict[str, Any]:
    return openai_chat(chat_from_ollama(body))


def generate(body: Any) -> dict[str, Any]:
    return openai_chat(generate_from_ollama(body))


def embed_request(req: dict[str, Any]) -> dict[str, Any]:
    _drain(EMBED_PARAMS.validate_python(req))
    return req


def invalid(fn: Callable[[Any], Any], body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(body)
    return info.value


def completion(
    message: dict[str, Any], finish: str | None = "stop", usage: dict[str, int] | None = None
) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "backend-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        resp["usage"] = usage
    ChatCompletion.model_validate(resp)
    return resp


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    c = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "backend-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    ChatCompletionChunk.model_validate(c)
    return c


def usage_chunk(prompt: int, completion_tokens: int) -> dict[str, Any]:
    c = chunk({})
    c["choices"] = []
    c["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    ChatCompletionChunk.model_validate(c)
    return c


def ndjson(data: bytes) -> list[dict[str, Any]]:
    assert data == b"" or data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert all(line and b"\n" not in line for line in lines)
    return [orjson.loads(line) for line in lines]


def usage(prompt: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


# -- /api/chat requests -----------------------------------------------------------------------


def test_chat_docs_example_streams_by_default() -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}]}
    assert chat(body) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "why is the sky blue?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_chat_stream_false_and_null() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat({**base, "stream": False})["stream"] is False
    assert "stream_options" not in chat({**base, "stream": False})
    assert chat({**base, "stream": None})["stream"] is True
    assert invalid(chat_from_ollama, {**base, "stream": "no"}).param == "stream"


def test_chat_roles_lower_cased_and_system_kept() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "SYSTEM", "content": "be brief"},
            {"role": "User", "content": "hi"},
            {"role": "assistant", "content": "hello", "thinking": "the user greets me"},
            {"role": "user"},
        ],
    }
    assert chat(body)["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},  # thinking dropped
        {"role": "user", "content": ""},
    ]


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (WEBP, "image/webp"),
        (BMP, "image/png"),
    ],
)
def test_chat_images_become_data_urls_with_sniffed_type(data: bytes, mime: str) -> None:
    body = {
        "model": "llava",
        "messages": [{"role": "user", "content": "what?", "images": [b64(data)]}],
    }
    assert chat(body)["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64(data)}"}},
        {"type": "text", "text": "what?"},
    ]


def test_chat_images_without_text_and_line_broken_base64() -> None:
    wrapped = b64(PNG + JPEG)[:8] + "\n" + b64(PNG + JPEG)[8:]
    body = {"model": "m", "messages": [{"role": "user", "images": [wrapped, b64(JPEG)]}]}
    parts = chat(body)["messages"][0]["content"]
    assert [p["image_url"]["url"] for p in parts] == [
        f"data:image/png;base64,{b64(PNG + JPEG)}",
        f"data:image/jpeg;base64,{b64(JPEG)}",
    ]


@pytest.mark.parametrize(
    ("images", "param"),
    [
        (["not base64!"], "messages[1].images[0]"),
        ([b64(PNG), "abc"], "messages[1].images[1]"),  # bad padding
        ([""], "messages[1].images[0]"),
        ([42], "messages[1].images[0]"),
        ("iVBORw0KGgo=", "messages[1].images"),
    ],
)
def test_chat_bad_images_name_the_field(images: Any, param: str) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "images": images}],
    }
    assert invalid(chat_from_ollama, body).param == param


def test_chat_images_only_on_user_messages() -> None:
    body = {"model": "m", "messages": [{"role": "assistant", "content": "x", "images": [b64(PNG)]}]}
    error = invalid(chat_from_ollama, body)
    assert error.param == "messages[0].images"
    assert "user" in error.message


def test_chat_docs_history_with_tools() -> None:
    body = {
        "model": "llama3.2",
        "messages": [
            {"role": "user", "content": "what is the weather in Toronto?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Toronto"}}}
                ],
            },
            {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather"},
        ],
        "stream": False,
        "tools": [WEATHER_TOOL],
    }
    out = chat(body)
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Toronto"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1_0", "content": "11 degrees celsius"},
    ]
    assert out["tools"] == [WEATHER_TOOL]


def _call(name: str, call_id: str | None = None, **arguments: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    if call_id:
        call["id"] = call_id
    return call


def _tool_ids(messages: list[dict[str, Any]]) -> list[str]:
    out = chat({"model": "m", "messages": messages})
    return [m["tool_call_id"] for m in out["messages"] if m["role"] == "tool"]


def test_parallel_calls_of_one_tool_are_answered_in_order() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather in Paris and Tokyo?"},
        {"role": "assistant", "tool_calls": [_call("w", city="Paris"), _call("w", city="Tokyo")]},
        {"role": "tool", "content": "20", "tool_name": "w"},
        {"role": "tool", "content": "25", "tool_name": "w"},
    ]
    assert _tool_ids(messages) == ["call_1_0", "call_1_1"]


def test_tool_results_match_by_name_in_the_latest_turn() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [_call("w"), _call("t")]},
        {"role": "tool", "content": "t result", "tool_name": "t"},
        {"role": "tool", "content": "w result", "tool_name": "w"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "tool_calls": [_call("w")]},
        {"role": "tool", "content": "new w", "tool_name": "w"},
        {"role": "tool", "content": "no name"},  # nothing open in turn 5: falls back to none
    ]
    error = invalid(chat_from_ollama, {"model": "m", "messages": messages})
    assert error.param == "messages[7]"
    assert _tool_ids(messages[:7]) == ["call_1_1", "call_1_0", "call_5_0"]


def test_tool_result_without_name_takes_the_first_open_call() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [_call("a"), _call("b")]},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    assert _tool_ids(messages) == ["call_1_0", "call_1_1"]


def test_tool_call_ids_from_the_client_are_kept() -> None:
    # Ollama's own answers carry ids, and newer clients send tool_call_id back.
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [_call("a", "call_x1"), _call("a", "call_x2")]},
        {"role": "tool", "content": "2", "tool_name": "a", "tool_call_id": "call_x2"},
        {"role": "tool", "content": "1", "tool_name": "a"},
    ]
    assert _tool_ids(messages) == ["call_x2", "call_x1"]


def test_unknown_tool_call_id_falls_back_to_the_name() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [_call("a")]},
        {"role": "tool", "content": "1", "tool_name": "a", "tool_call_id": "call_gone"},
    ]
    assert _tool_ids(messages) == ["call_1_0"]


def test_tool_result_that_answers_nothing_is_refused() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [_call("a")]},
        {"role": "tool", "content": "1", "tool_name": "b"},
    ]
    error = invalid(chat_from_ollama, {"model": "m", "messages": messages})
    assert error.param == "messages[2].tool_name"
    assert "'b'" in error.message


@pytest.mark.parametrize(
    ("tool_calls", "param"),
    [
        ("x", "messages[1].tool_calls"),
        (["x"], "messages[1].tool_calls[0]"),
        ([{}], "messages[1].tool_calls[0].function"),
        ([{"function": {"arguments": {}}}], "messages[1].tool_calls[0].function.name"),
        (
            [{"function": {"name": "a", "arguments": "[1]"}}],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [{"function": {"name": "a", "arguments": {"n": 2**70}}}],
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_tool_calls_name_the_field(tool_calls: Any, param: str) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user"}, {"role": "assistant", "tool_calls": tool_calls}],
    }
    assert invalid(chat_from_ollama, body).param == param


def test_tool_call_without_arguments_sends_an_empty_object() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "now"}}]}],
    }
    assert chat(body)["messages"][0]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tools_empty_list_left_out_and_bad_tools_refused() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert "tools" not in chat({**base, "tools": []})
    assert chat({**base, "tools": [{"function": {"name": "f"}}]})["tools"] == [
        {"type": "function", "function": {"name": "f"}}
    ]
    assert invalid(chat_from_ollama, {**base, "tools": {}}).param == "tools"
    assert (
        invalid(
            chat_from_ollama, {**base, "tools": [{"type": "web", "function": {"name": "f"}}]}
        ).param
        == "tools[0].type"
    )
    assert (
        invalid(chat_from_ollama, {**base, "tools": [{"type": "function"}]}).param
        == "tools[0].function"
    )
    assert (
        invalid(chat_from_ollama, {**base, "tools": [{"function": {}}]}).param
        == "tools[0].function.name"
    )


def test_format_json_and_schema() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat({**base, "format": "json"})["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert chat({**base, "format": schema})["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": False},
    }
    assert "response_format" not in chat({**base, "format": ""})
    assert invalid(chat_from_ollama, {**base, "format": "yaml"}).param == "format"
    assert invalid(chat_from_ollama, {**base, "format": 3}).param == "format"


def test_options_map_and_the_rest_are_dropped() -> None:
    options = {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 42.0,
        "stop": ["\n", "user:"],
        "num_predict": 100,
        "frequency_penalty": 1.0,
        "presence_penalty": 1.5,
        "num_ctx": 8192,
        "top_k": 20,
        "min_p": 0.0,
        "mirostat": 1,
        "repeat_penalty": 1.2,
        "num_gpu": 1,
        "use_mmap": True,
        "num_thread": 8,
        "something_new": "x",
    }
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": options}
    out = chat({**body, "keep_alive": "5m", "think": True, "logprobs": True, "top_logprobs": 3})
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "frequency_penalty": 1.0,
        "presence_penalty": 1.5,
        "seed": 42,
        "max_tokens": 100,
        "stop": ["\n", "user:"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_num_predict_without_a_cap_sends_none(num_predict: int) -> None:
    body = {"model": "m", "messages": [{"role": "user"}], "options": {"num_predict": num_predict}}
    assert "max_tokens" not in chat(body)


def test_stop_as_a_single_string() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user"}],
        "options": {"stop": "END", "temperature": 0},
    }
    out = chat(body)
    assert (out["stop"], out["temperature"]) == (["END"], 0)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": "hot"}, "options.temperature"),
        ({"top_p": True}, "options.top_p"),
        ({"seed": 1.5}, "options.seed"),
        ({"num_predict": "10"}, "options.num_predict"),
        ({"stop": [1]}, "options.stop"),
        ("fast", "options"),
    ],
)
def test_bad_options_name_the_field(options: Any, param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user"}], "options": options}
    assert invalid(chat_from_ollama, body).param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user"}]}, "model"),
        ({"model": "", "messages": [{"role": "user"}]}, "model"),
        ({"model": 3, "messages": [{"role": "user"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "developer", "content": "hi"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ],
)
def test_bad_chat_requests_name_the_field(body: Any, param: str | None) -> None:
    assert invalid(chat_from_ollama, body).param == param


def add_two_numbers(a: int, b: int) -> int:
    """
    Add two numbers together.

    Args:
      a: First number to add
      b: Second number to add

    Returns:
      int: The sum of a and b
    """
    return a + b


def test_chat_request_built_by_the_ollama_client() -> None:
    history: list[Mapping[str, Any] | Message] = [
        {"role": "system", "content": "You add numbers."},
        Message(
            role="user", content="What is 2 + 3? Here is a picture.", images=[Image(value=PNG)]
        ),
        Message(
            role="assistant",
            thinking="I should call the tool",
            tool_calls=[
                Message.ToolCall(
                    function=Message.ToolCall.Function(
                        name="add_two_numbers", arguments={"a": 2, "b": 3}
                    )
                )
            ],
        ),
        {"role": "tool", "content": "5", "tool_name": "add_two_numbers"},
    ]
    body = ChatRequest(
        model="qwen3:8b",
        messages=list(_copy_messages(history)),
        tools=list(_copy_tools([add_two_numbers])),
        stream=False,
        format="json",
        options=Options(temperature=0, num_predict=64, num_ctx=4096, stop=["###"]),
        keep_alive="10m",
    ).model_dump(exclude_none=True)
    out = chat(body)
    assert out["messages"] == [
        {"role": "system", "content": "You add numbers."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
                {"type": "text", "text": "What is 2 + 3? Here is a picture."},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_2_0",
                    "type": "function",
                    "function": {"name": "add_two_numbers", "arguments": '{"a":2,"b":3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_2_0", "content": "5"},
    ]
    (tool,) = out["tools"]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == "add_two_numbers"
    assert tool["function"]["parameters"]["required"] == ["a", "b"]
    assert set(tool["function"]["parameters"]["properties"]) == {"a", "b"}
    assert (out["temperature"], out["max_tokens"], out["stop"]) == (0, 64, ["###"])
    assert out["response_format"] == {"type": "json_object"}
    assert out["stream"] is False


# -- /api/generate requests -------------------------------------------------------------------


def test_generate_docs_example() -> None:
    body = {"model": "llama3.2", "prompt": "Why is the sky blue?"}
    assert generate(body) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_generate_system_images_format_options() -> None:
    body = {
        "model": "llava",
        "system": "Answer in French.",
        "prompt": "What is in this picture?",
        "images": [b64(JPEG)],
        "format": "json",
        "options": {"num_predict": 10, "seed": 123},
        "stream": False,
        "keep_alive": 0,
        "think": False,
        "raw": False,
        "suffix": "",
        "template": "",
        "context": [],
    }
    assert generate(body) == {
        "model": "llava",
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/jpeg;base64,{b64(JPEG)}"},
                    },
                    {"type": "text", "text": "What is in this picture?"},
                ],
            },
        ],
        "seed": 123,
        "max_tokens": 10,
        "response_format": {"type": "json_object"},
        "stream": False,
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "    return result"}, "suffix"),
        ({"raw": True}, "raw"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1, 2, 3]}, "context"),
    ],
)
def test_generate_features_only_ollama_has_are_refused(extra: dict[str, Any], param: str) -> None:
    error = invalid(
        generate_from_ollama, {"model": "codellama:code", "prompt": "def f():", **extra}
    )
    assert error.param == param
    assert "Ollama backend" in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": ""}, "prompt"),
        ({"model": "m", "prompt": 5}, "prompt"),
        ({"model": "m", "prompt": "p", "images": [b64(PNG), "%%"]}, "images[1]"),
        ({"model": "m", "prompt": "p", "system": ["s"]}, "system"),
        ({"model": "m", "prompt": "p", "raw": "yes"}, "raw"),
        ({"prompt": "p"}, "model"),
    ],
)
def test_bad_generate_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    assert invalid(generate_from_ollama, body).param == param


def test_generate_request_built_by_the_ollama_client() -> None:
    body = GenerateRequest(
        model="llama3.2",
        prompt="Why is the sky blue?",
        system="Be brief.",
        images=[Image(value=GIF)],
        options={"temperature": 0.5, "top_k": 10},
        format={"type": "object", "properties": {"why": {"type": "string"}}},
        stream=True,
    ).model_dump(exclude_none=True)
    out = generate(body)
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/gif;base64,")
    assert out["temperature"] == 0.5
    assert out["response_format"]["json_schema"]["schema"]["properties"] == {
        "why": {"type": "string"}
    }
    assert out["stream_options"] == {"include_usage": True}


# -- load requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "load"),
    [
        ({"model": "m"}, True),
        ({"model": "m", "messages": []}, True),
        ({"model": "m", "messages": None, "keep_alive": 0}, True),
        ({"model": "m", "prompt": ""}, True),
        ({"model": "m", "prompt": "", "images": [b64(PNG)]}, True),  # Ollama looks at the prompt
        ({"model": "m", "input": ""}, True),
        ({"model": "m", "input": []}, True),
        ({"model": "m", "messages": [{"role": "user", "content": ""}]}, False),
        ({"model": "m", "prompt": "hi"}, False),
        ({"model": "m", "input": "hi"}, False),
        ({"model": "m", "input": [""]}, False),
        ({"model": "m", "messages": "x"}, False),
        ([], False),
    ],
)
def test_is_load_request(body: Any, load: bool) -> None:
    assert is_load_request(body) is load


@pytest.mark.parametrize(
    ("keep_alive", "reason"),
    [
        (None, "load"),
        ("5m", "load"),
        (-1, "load"),
        ("-1m", "load"),
        (300, "load"),
        ("0.5s", "load"),
        ("bogus", "load"),
        (0, "unload"),
        (0.0, "unload"),
        ("0", "unload"),
        ("0s", "unload"),
        ("0m0s", "unload"),
        ("0.0h", "unload"),
    ],
)
def test_load_answer_chat_and_generate(keep_alive: Any, reason: str) -> None:
    body = {"model": "llama3.2", "messages": [], "keep_alive": keep_alive}
    answer = load_answer(body, kind="chat", created_at=NOW)
    assert answer == {
        "model": "llama3.2",
        "created_at": NOW,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
    }
    ChatResponse.model_validate(answer)
    answer = load_answer({**body, "prompt": ""}, kind="generate", created_at=NOW)
    assert answer == {
        "model": "llama3.2",
        "created_at": NOW,
        "response": "",
        "done": True,
        "done_reason": reason,
    }
    GenerateResponse.model_validate(answer)


def test_load_answer_embed_and_embeddings() -> None:
    embed = load_answer({"model": "all-minilm", "input": []}, kind="embed", created_at=NOW)
    assert embed == {"model": "all-minilm", "embeddings": []}
    EmbedResponse.model_validate(embed)
    old = load_answer({"model": "all-minilm", "prompt": ""}, kind="embeddings", created_at=NOW)
    assert old == {"embedding": []}
    EmbeddingsResponse.model_validate(old)
    with pytest.raises(InvalidRequest):
        load_answer({"messages": []}, kind="chat", created_at=NOW)


# -- answers ----------------------------------------------------------------------------------


def test_chat_answer_docs_shape() -> None:
    resp = completion(
        {"role": "assistant", "content": "Hello! How are you today?"}, usage=usage(26, 298)
    )
    answer = chat_to_ollama(resp, model="llama3.2", created_at=NOW, total_ns=5_000_000_000)
    assert answer == {
        "model": "llama3.2",
        "created_at": NOW,
        "message": {"role": "assistant", "content": "Hello! How are you today?"},
        "done": True,
        "done_reason": "stop",
        "total_duration": 5_000_000_000,
        "load_duration": 0,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 5_000_000_000 * 26 // (26 + 2980),
        "eval_count": 298,
        "eval_duration": 5_000_000_000 - 5_000_000_000 * 26 // (26 + 2980),
    }
    ChatResponse.model_validate(answer)


def test_durations_split_by_work_and_sum_to_the_total() -> None:
    # A long prompt and a short answer: prompt evaluation gets most of the time.
    resp = completion({"role": "assistant", "content": "ok"}, usage=usage(10_000, 10))
    answer = chat_to_ollama(resp, model="m", created_at=NOW, total_ns=1_000_000)
    assert answer["prompt_eval_duration"] + answer["eval_duration"] == 1_000_000
    assert answer["prompt_eval_duration"] > answer["eval_duration"]


def test_chat_answer_without_usage_has_no_counts() -> None:
    resp = completion({"role": "assistant", "content": "hi"})
    answer = chat_to_ollama(resp, model="m", created_at=NOW, total_ns=7)
    assert "prompt_eval_count" not in answer and "eval_count" not in answer
    assert (answer["prompt_eval_duration"], answer["eval_duration"]) == (0, 7)
    ChatResponse.model_validate(answer)


def test_chat_answer_tool_calls_become_objects() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}},
            {
                "id": "call_c",
                "type": "function",
                "function": {"name": "bad", "arguments": '{"city": '},
            },
            {
                "id": "call_d",
                "type": "function",
                "function": {"name": "list", "arguments": "[1, 2]"},
            },
        ],
    }
    answer = chat_to_ollama(
        completion(message, "tool_calls"), model="m", created_at=NOW, total_ns=1
    )
    assert answer["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}},
            },
            {"id": "call_b", "function": {"index": 1, "name": "now", "arguments": {}}},
            {"id": "call_c", "function": {"index": 2, "name": "bad", "arguments": {}}},
            {"id": "call_d", "function": {"index": 3, "name": "list", "arguments": {}}},
        ],
    }
    assert answer["done_reason"] == "stop"
    parsed = ChatResponse.model_validate(answer)
    assert parsed.message.tool_calls is not None
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Tokyo"}


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "stop"),
        ("tool_calls", "stop"),
        ("function_call", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        (None, "stop"),
    ],
)
def test_done_reasons(finish: str | None, reason: str) -> None:
    if finish is None:  # not OpenAI's shape, but some servers leave it out
        resp: dict[str, Any] = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]
        }
    else:
        resp = completion({"role": "assistant", "content": "x"}, finish)
    assert chat_to_ollama(resp, model="m", created_at=NOW, total_ns=1)["done_reason"] == reason
    assert generate_to_ollama(resp, model="m", created_at=NOW, total_ns=1)["done_reason"] == reason


def test_reasoning_becomes_thinking_and_refusal_becomes_text() -> None:
    resp = completion({"role": "assistant", "content": "42", "reasoning_content": "6 times 7"})
    assert chat_to_ollama(resp, model="m", created_at=NOW, total_ns=1)["message"] == {
        "role": "assistant",
        "content": "42",
        "thinking": "6 times 7",
    }
    resp = completion({"role": "assistant", "content": None, "refusal": "I can't help with that."})
    message = chat_to_ollama(resp, model="m", created_at=NOW, total_ns=1)["message"]
    assert message == {"role": "assistant", "content": "I can't help with that."}


def test_generate_answer() -> None:
    resp = completion(
        {"role": "assistant", "content": "The sky is blue.", "reasoning": "Rayleigh"},
        "length",
        usage(26, 290),
    )
    answer = generate_to_ollama(resp, model="llama3.2", created_at=NOW, total_ns=10**9)
    assert {
        k: answer[k] for k in ("model", "created_at", "response", "thinking", "done", "done_reason")
    } == {
        "model": "llama3.2",
        "created_at": NOW,
        "response": "The sky is blue.",
        "thinking": "Rayleigh",
        "done": True,
        "done_reason": "length",
    }
    assert "context" not in answer
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (26, 290)
    GenerateResponse.model_validate(answer)


def test_answers_from_odd_servers_do_not_crash() -> None:
    odd: list[dict[str, Any]] = [
        {},
        {"choices": []},
        {"choices": ["x"]},
        {"choices": [{"message": "x"}], "usage": "y"},
    ]
    for resp in odd:
        answer = chat_to_ollama(resp, model="m", created_at=NOW, total_ns=-5)
        assert answer["message"] == {"role": "assistant", "content": ""}
        assert answer["total_duration"] == 0
        ChatResponse.model_validate(answer)
    parts = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]
    }
    assert generate_to_ollama(parts, model="m", created_at=NOW, total_ns=1)["response"] == "ab"


# -- streams ----------------------------------------------------------------------------------


def feed_all(
    stream: ChatToOllamaStream, chunks: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """The lines each chunk produced, one list per chunk."""
    return [ndjson(stream.feed(c, created_at=NOW)) for c in chunks]


def test_chat_stream_text() -> None:
    stream = ChatToOllamaStream(model="llama3.2", kind="chat")
    out = feed_all(
        stream,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "The"}),
            chunk({"content": " sky"}),
            chunk({}, "stop"),
            usage_chunk(26, 2),
        ],
    )
    assert out == [
        [],
        [
            {
                "model": "llama3.2",
                "created_at": NOW,
                "message": {"role": "assistant", "content": "The"},
                "done": False,
            }
        ],
        [
            {
                "model": "llama3.2",
                "created_at": NOW,
                "message": {"role": "assistant", "content": " sky"},
                "done": False,
            }
        ],
        [],
        [],
    ]
    (last,) = ndjson(stream.finish(created_at=NOW, total_ns=1_000))
    assert last == {
        "model": "llama3.2",
        "created_at": NOW,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000,
        "load_duration": 0,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 1_000 * 26 // 46,
        "eval_count": 2,
        "eval_duration": 1_000 - 1_000 * 26 // 46,
    }
    for line in [*out[1], *out[2], last]:
        ChatResponse.model_validate(line)


def test_generate_stream_text_and_thinking() -> None:
    stream = ChatToOllamaStream(model="qwen3", kind="generate")
    out = feed_all(
        stream,
        [chunk({"reasoning_content": "hmm"}), chunk({"content": "Hi"}), chunk({}, "length")],
    )
    assert out == [
        [{"model": "qwen3", "created_at": NOW, "response": "", "thinking": "hmm", "done": False}],
        [{"model": "qwen3", "created_at": NOW, "response": "Hi", "done": False}],
        [],
    ]
    (last,) = ndjson(stream.finish(created_at=NOW, total_ns=5))
    assert last["response"] == "" and last["done"] is True and last["done_reason"] == "length"
    assert "prompt_eval_count" not in last
    for line in [*out[0], *out[1], last]:
        GenerateResponse.model_validate(line)


def test_stream_holds_a_tool_call_until_it_is_whole() -> None:
    stream = ChatToOllamaStream(model="m", kind="chat")
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    out = feed_all(
        stream,
        [
            chunk({"role": "assistant", "tool_calls": [first]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Tokyo"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "now", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ],
    )
    assert out[:3] == [[], [], []]
    assert out[3] == [
        {
            "model": "m",
            "created_at": NOW,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "function": {
                            "index": 0,
                            "name": "get_weather",
                            "arguments": {"city": "Tokyo"},
                        },
                    }
                ],
            },
            "done": False,
        }
    ]
    assert out[4][0]["message"]["tool_calls"] == [
        {"id": "call_2", "function": {"index": 1, "name": "now", "arguments": {}}}
    ]
    (last,) = ndjson(stream.finish(created_at=NOW, total_ns=1))
    assert last["done_reason"] == "stop" and "tool_calls" not in last["message"]
    for line in [*out[3], *out[4], last]:
        ChatResponse.model_validate(line)


def test_stream_flushes_held_calls_at_the_end_without_finish_reason() -> None:
    stream = ChatToOllamaStream(model="m", kind="chat")
    call = {
        "index": 0,
        "id": "c",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a": 1}'},
    }
    assert stream.feed(chunk({"tool_calls": [call]}), created_at=NOW) == b""
    lines = ndjson(stream.finish(created_at=NOW, total_ns=1))
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_stream_tool_calls_without_index() -> None:
    # A few servers leave the index out: a new id starts a new call.
    stream = ChatToOllamaStream(model="m", kind="chat")
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x":'}}]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "1}"}}]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    lines = [line for c in chunks for line in ndjson(stream.feed(c, created_at=NOW))]
    calls = [call for line in lines for call in line["message"]["tool_calls"]]
    assert calls == [
        {"id": "a", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
        {"id": "b", "function": {"index": 1, "name": "g", "arguments": {}}},
    ]


def test_generate_stream_drops_tool_calls() -> None:
    stream = ChatToOllamaStream(model="m", kind="generate")
    call = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert stream.feed(chunk({"tool_calls": [call]}, "tool_calls"), created_at=NOW) == b""
    (last,) = ndjson(stream.finish(created_at=NOW, total_ns=1))
    assert last["done"] is True


def test_stream_error_chunk_raises_and_error_line() -> None:
    stream = ChatToOllamaStream(model="m", kind="chat")
    with pytest.raises(StreamFailed) as info:
        stream.feed(
            {"error": {"message": "CUDA out of memory", "type": "server_error"}}, created_at=NOW
        )
    assert (str(info.value), info.value.kind) == ("CUDA out of memory", "server_error")
    with pytest.raises(StreamFailed, match="boom"):
        stream.feed({"error": "boom"}, created_at=NOW)
    assert stream.error("model crashed") == b'{"error":"model crashed"}\n'


def test_error_body() -> None:
    assert orjson.loads(error_body("model 'x' not found")) == {"error": "model 'x' not found"}


# -- embeddings -------------------------------------------------------------------------------


def test_embed_request() -> None:
    assert embed_request(
        embed_from_ollama({"model": "all-minilm", "input": "Why is the sky blue?"})
    ) == {
        "model": "all-minilm",
        "input": "Why is the sky blue?",
        "encoding_format": "float",
    }
    body = {
        "model": "all-minilm",
        "input": ["a", "b"],
        "truncate": False,
        "dimensions": 256,
        "keep_alive": "1m",
    }
    assert embed_request(embed_from_ollama(body)) == {
        "model": "all-minilm",
        "input": ["a", "b"],
        "dimensions": 256,
        "encoding_format": "float",
    }
    assert "dimensions" not in embed_from_ollama({"model": "m", "input": "x", "dimensions": 0})


def test_embed_request_built_by_the_ollama_client() -> None:
    body = EmbedRequest(
        model="all-minilm",
        input=["Why is the sky blue?", "Why is the grass green?"],
        truncate=True,
        dimensions=8,
    ).model_dump(exclude_none=True)
    out = embed_request(embed_from_ollama(body))
    assert (out["input"], out["dimensions"]) == (
        ["Why is the sky blue?", "Why is the grass green?"],
        8,
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": ["a", 1]}, "input[1]"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": "x", "dimensions": -1}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "m", "input": "x", "truncate": "yes"}, "truncate"),
        ({"input": "x"}, "model"),
    ],
)
def test_bad_embed_requests(body: dict[str, Any], param: str) -> None:
    assert invalid(embed_from_ollama, body).param == param


def embedding_answer(vectors: list[list[float]], prompt_tokens: int = 8) -> dict[str, Any]:
    resp = {
        "object": "list",
        "model": "backend-model",
        # Out of order on purpose: the index says where each vector belongs.
        "data": [
            {"object": "embedding", "index": i, "embedding": v}
            for i, v in reversed(list(enumerate(vectors)))
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    CreateEmbeddingResponse.model_validate(resp)
    return resp


def test_embed_answer() -> None:
    answer = embed_to_ollama(
        embedding_answer([[0.1, 0.2], [0.3, -0.4]]), model="all-minilm", total_ns=14_143_917
    )
    assert answer == {
        "model": "all-minilm",
        "embeddings": [[0.1, 0.2], [0.3, -0.4]],
        "total_duration": 14_143_917,
        "load_duration": 0,
        "prompt_eval_count": 8,
    }
    EmbedResponse.model_validate(answer)


def test_embeddings_old_endpoint() -> None:
    body = EmbeddingsRequest(
        model="all-minilm", prompt="Here is an article about llamas..."
    ).model_dump(exclude_none=True)
    assert embed_request(embeddings_from_ollama(body)) == {
        "model": "all-minilm",
        "input": "Here is an article about llamas...",
        "encoding_format": "float",
    }
    assert invalid(embeddings_from_ollama, {"model": "m", "prompt": ""}).param == "prompt"
    answer = embeddings_to_ollama(embedding_answer([[0.5, 0.25]]))
    assert answer == {"embedding": [0.5, 0.25]}
    EmbeddingsResponse.model_validate(answer)
    assert embeddings_to_ollama({"data": []}) == {"embedding": []}


# -- listings ---------------------------------------------------------------------------------

UNKNOWN_DETAILS = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": None,
    "parameter_size": "",
    "quantization_level": "",
}


def test_tags() -> None:
    models = [
        Model(id="llama3.2:latest"),
        Model(id="qwen3:8b", context_length=32768),
        Model(id="llama3.2:latest"),
    ]
    answer = tags(models, modified_at="2025-05-10T08:06:48.639712648-07:00")
    assert answer == {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-05-10T08:06:48.639712648-07:00",
                "size": 0,
                "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": UNKNOWN_DETAILS,
            }
            for name in ("llama3.2:latest", "qwen3:8b")
        ]
    }
    parsed = ListResponse.model_validate(answer)
    assert [m.model for m in parsed.models] == ["llama3.2:latest", "qwen3:8b"]
    assert (
        tags([Model(id="a")], modified_at=NOW)["models"][0]["digest"]
        == tags([Model(id="a")], modified_at=NOW)["models"][0]["digest"]
    )
    assert tags([], modified_at=NOW) == {"models": []}


def test_show_capabilities_and_context_length() -> None:
    model = Model(
        id="llava:13b",
        context_length=4096,
        supports_vision=True,
        supports_tools=None,
        supports_embeddings=False,
    )
    answer = show(model, modified_at=NOW)
    assert answer == {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": UNKNOWN_DETAILS,
        "model_info": {"general.architecture": "unknown", "unknown.context_length": 4096},
        "capabilities": ["completion", "vision"],
        "modified_at": NOW,
    }
    parsed = ShowResponse.model_validate(answer)
    assert parsed.capabilities == ["completion", "vision"]
    arch = parsed.modelinfo["general.architecture"] if parsed.modelinfo else None
    assert parsed.modelinfo and parsed.modelinfo[f"{arch}.context_length"] == 4096


def test_show_embedding_and_tool_models() -> None:
    embedder = show(
        Model(id="nomic-embed-text", supports_chat=False, supports_embeddings=True), modified_at=NOW
    )
    assert embedder["capabilities"] == ["embedding"]
    assert embedder["model_info"] == {}
    ShowResponse.model_validate(embedder)
    tools_model = show(Model(id="qwen3", supports_tools=True), modified_at=NOW)
    assert tools_model["capabilities"] == ["completion", "tools"]


def test_ps() -> None:
    entries: list[dict[str, Any]] = [
        {
            "name": "mistral:latest",
            "size": 5137025024,
            "size_vram": 5137025024,
            "expires_at": "2024-06-04T14:38:31.83753-07:00",
            "digest": "2ae6f6dd7a3dd734790bbbf58b8909a606e0e7e97e94b7604e0aa7ae4490e6d8",
            "details": {
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "7.2B",
                "quantization_level": "Q4_0",
                "extra": 1,
            },
            "context_length": 4096,
        },
        {"model": "qwen3:8b", "size": "big", "size_vram": None, "details": "x"},
        {"size": 1},
        "junk",  # type: ignore[list-item]
    ]
    answer = ps(entries)
    assert answer["models"] == [
        {
            "name": "mistral:latest",
            "model": "mistral:latest",
            "size": 5137025024,
            "digest": "2ae6f6dd7a3dd734790bbbf58b8909a606e0e7e97e94b7604e0aa7ae4490e6d8",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "7.2B",
                "quantization_level": "Q4_0",
            },
            "expires_at": "2024-06-04T14:38:31.83753-07:00",
            "size_vram": 5137025024,
            "context_length": 4096,
        },
        {
            "name": "qwen3:8b",
            "model": "qwen3:8b",
            "size": 0,
            "digest": hashlib.sha256(b"qwen3:8b").hexdigest(),
            "details": UNKNOWN_DETAILS,
            "expires_at": ZERO_TIME,
            "size_vram": 0,
            "context_length": 0,
        },
    ]
    parsed = ProcessResponse.model_validate(answer)
    assert parsed.models[0].size_vram == 5137025024
    assert ps([]) == {"models": []}


def test_version() -> None:
    assert version("0.9.1") == {"version": "0.9.1"}


# -- properties: requests ---------------------------------------------------------------------

# utf-8: no lone surrogates, which JSON text cannot carry.
TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
NAMES = st.sampled_from(["get_weather", "search", "add"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
ARGS = st.dictionaries(st.text(min_size=1, max_size=8), JSON, max_size=3)
IMAGES = st.lists(st.sampled_from([b64(PNG), b64(JPEG), b64(GIF), b64(WEBP), b64(BMP)]), max_size=2)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "seed": st.integers(0, 2**31),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3),
        "num_predict": st.integers(-2, 4096),
        "frequency_penalty": st.floats(-2, 2),
        "presence_penalty": st.floats(-2, 2),
        "num_ctx": st.integers(1, 65536),
        "top_k": st.integers(1, 100),
        "mirostat": st.integers(0, 2),
    },
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A valid /api/chat body and, for each tool message in it, the id of the call it answers."""
    messages: list[dict[str, Any]] = []
    expected_ids: list[str] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        user: dict[str, Any] = {"role": "user", "content": draw(TEXT)}
        if images := draw(IMAGES):
            user["images"] = images
        messages.append(user)
        if draw(st.booleans()):
            calls = draw(st.lists(st.tuples(NAMES, ARGS), max_size=3))
            turn = len(messages)
            reply: dict[str, Any] = {
                "role": "assistant",
                "content": draw(TEXT),
                "thinking": draw(TEXT),
            }
            if calls:
                reply["tool_calls"] = [{"function": {"name": n, "arguments": a}} for n, a in calls]
            messages.append(reply)
            # Results come in the order of the calls, for a prefix of them, named or not.
            for n, (name, _) in enumerate(calls[: draw(st.integers(0, len(calls)))]):
                result: dict[str, Any] = {"role": "tool", "content": draw(TEXT)}
                if draw(st.booleans()):
                    result["tool_name"] = name
                messages.append(result)
                expected_ids.append(f"call_{turn}_{n}")
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["llama3.2", "qwen3:8b"])),
        "messages": messages,
    }
    extras = {
        "tools": st.lists(
            NAMES.map(
                lambda n: {
                    "type": "function",
                    "function": {"name": n, "parameters": {"type": "object", "properties": {}}},
                }
            ),
            max_size=2,
        ),
        "options": OPTIONS,
        "format": st.sampled_from(
            ["", "json", {"type": "object", "properties": {"a": {"type": "string"}}}]
        ),
        "stream": st.booleans(),
        "keep_alive": st.sampled_from(["5m", 0, -1]),
        "think": st.booleans(),
    }
    for key, strategy in extras.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body, expected_ids


def via_client(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as the ollama client would send it."""
    messages = [
        {**m, "images": [Image(value=i) for i in m["images"]]} if "images" in m else m
        for m in body["messages"]
    ]
    return ChatRequest(
        model=body["model"],
        messages=list(_copy_messages(messages)),
        tools=list(_copy_tools(body.get("tools"))),
        stream=body.get("stream"),
        format=body.get("format"),
        options=body.get("options"),
        keep_alive=body.get("keep_alive"),
        think=body.get("think"),
    ).model_dump(exclude_none=True)


def _plain_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p["type"] == "text")


@settings(max_examples=80, deadline=None)
@given(chat_bodies(), st.booleans())
def test_any_valid_chat_request_translates_and_keeps_every_text(
    case: tuple[dict[str, Any], list[str]], through_client: bool
) -> None:
    body, expected_ids = case
    sent = via_client(body) if through_client else body
    out = chat(sent)
    assert len(out["messages"]) == len(body["messages"])
    for before, after in zip(body["messages"], out["messages"], strict=True):
        assert after["role"] == before["role"]
        assert _plain_text(after["content"]) == before.get("content", "")
        images = (
            [p for p in after["content"] if p["type"] == "image_url"]
            if isinstance(after["content"], list)
            else []
        )
        assert len(images) == len(before.get("images", []))
        calls = before.get("tool_calls", [])
        assert [json.loads(c["function"]["arguments"]) for c in after.get("tool_calls", [])] == [
            c["function"]["arguments"] for c in calls
        ]
    assert [m["tool_call_id"] for m in out["messages"] if m["role"] == "tool"] == expected_ids
    assert out["stream"] is body.get("stream", True)
    assert ("stream_options" in out) is out["stream"]


# -- properties: answers and streams ----------------------------------------------------------


def _split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def answers(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An OpenAI answer, whole and as the chunks a server would stream it in."""
    reasoning, content = draw(st.lists(TEXT, max_size=3)), draw(st.lists(TEXT, max_size=4))
    calls = draw(st.lists(st.tuples(NAMES, ARGS, st.booleans()), max_size=3))
    tool_calls = []
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": r}) for r in reasoning]
    chunks += [chunk({"content": c}) for c in content]
    for k, (name, args, valid) in enumerate(calls):
        arguments = orjson.dumps(args).decode() if valid else '{"broken": '
        tool_calls.append(
            {
                "id": f"call_{k}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
        first, *rest = _split(draw, arguments)
        head = {
            "index": k,
            "id": f"call_{k}",
            "type": "function",
            "function": {"name": name, "arguments": first},
        }
        chunks.append(chunk({"tool_calls": [head]}))
        chunks += [
            chunk({"tool_calls": [{"index": k, "function": {"arguments": part}}]}) for part in rest
        ]
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    chunks.append(chunk({}, finish))
    counts = draw(st.none() | st.tuples(st.integers(0, 10**5), st.integers(0, 10**5)))
    if counts is not None:
        chunks.append(usage_chunk(*counts))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    return completion(message, finish, None if counts is None else usage(*counts)), chunks


@settings(max_examples=80, deadline=None)
@given(answers(), st.sampled_from(["chat", "generate"]), st.integers(0, 10**12))
def test_stream_rebuilds_the_whole_answer(
    answer: tuple[dict[str, Any], list[dict[str, Any]]],
    kind: Literal["chat", "generate"],
    total_ns: int,
) -> None:
    whole, chunks = answer
    stream = ChatToOllamaStream(model="m", kind=kind)
    data = b"".join(stream.feed(c, created_at=NOW) for c in chunks)
    lines = ndjson(data + stream.finish(created_at=NOW, total_ns=total_ns))
    *deltas, last = lines
    assert [line["done"] for line in deltas] == [False] * len(deltas)
    if kind == "chat":
        expected = chat_to_ollama(whole, model="m", created_at=NOW, total_ns=total_ns)
        for line in lines:
            ChatResponse.model_validate(line)
        parts = [line["message"] for line in deltas]
        assert "".join(p["content"] for p in parts) == expected["message"]["content"]
        assert "".join(p.get("thinking", "") for p in parts) == expected["message"].get(
            "thinking", ""
        )
        calls = [c for p in parts for c in p.get("tool_calls", [])]
        assert calls == expected["message"].get("tool_calls", [])
        assert last["message"] == {"role": "assistant", "content": ""}
    else:
        expected = generate_to_ollama(whole, model="m", created_at=NOW, total_ns=total_ns)
        for line in lines:
            GenerateResponse.model_validate(line)
        assert "".join(line["response"] for line in deltas) == expected["response"]
        assert "".join(line.get("thinking", "") for line in deltas) == expected.get("thinking", "")
        assert last["response"] == ""
    assert all(
        line["content" if kind == "chat" else "response"]
        or line.get("thinking")
        or line.get("tool_calls")
        for line in ((d["message"] if kind == "chat" else d) for d in deltas)
    )
    final = {k: v for k, v in expected.items() if k not in ("message", "response", "thinking")}
    assert {k: v for k, v in last.items() if k not in ("message", "response")} == final


# -- properties: /api/generate, /api/embed and /api/embeddings requests ------------------------

PROMPTS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
FORMATS = st.sampled_from(["", "json", {"type": "object", "properties": {"a": {"type": "string"}}}])
SHARED_OPTIONS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")


@st.composite
def generate_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid /api/generate body that asks for text (not a load, not fill-in-the-middle)."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(["llama3.2", "qwen3:8b"]))}
    body["prompt"] = draw(PROMPTS)
    extras = {
        "system": TEXT,
        "images": IMAGES,
        "options": OPTIONS,
        "format": FORMATS,
        "stream": st.booleans(),
        "keep_alive": st.sampled_from(["5m", 0, -1]),
        "think": st.booleans(),
        "raw": st.just(False),
        "suffix": st.just(""),
    }
    for key, strategy in extras.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


def generate_via_client(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as the ollama client would send it."""
    images = [Image(value=i) for i in body["images"]] if "images" in body else None
    return GenerateRequest(**{**body, "images": images}).model_dump(exclude_none=True)


@settings(max_examples=80, deadline=None)
@given(generate_bodies(), st.booleans())
@example({"model": "m", "prompt": "p", "options": {"num_predict": 0, "stop": []}}, True)
@example({"model": "m", "prompt": " ", "system": "", "options": {"num_predict": -1}}, False)
def test_any_valid_generate_request_translates_and_keeps_its_text(
    body: dict[str, Any], through_client: bool
) -> None:
    sent = generate_via_client(body) if through_client else body
    out = generate(sent)  # validates as the OpenAI SDK's chat params
    assert out["model"] == body["model"]
    *system, user = out["messages"]
    assert system == ([{"role": "system", "content": body["system"]}] if body.get("system") else [])
    assert user["role"] == "user" and _plain_text(user["content"]) == body["prompt"]
    parts = user["content"] if isinstance(user["content"], list) else []
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert [url.split(",", 1)[1] for url in images] == body.get("images", [])
    assert out["stream"] is body.get("stream", True)
    assert ("stream_options" in out) is out["stream"]
    options = body.get("options", {})
    for key in SHARED_OPTIONS:
        assert out.get(key) == options.get(key), key
    assert out.get("stop") == (options.get("stop") or None)
    predict = options.get("num_predict", 0)
    assert out.get("max_tokens") == (predict if predict > 0 else None)
    fmt = body.get("format", "")
    expected = (
        {"": None, "json": {"type": "json_object"}}.get(fmt)
        if isinstance(fmt, str)
        else {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt, "strict": False},
        }
    )
    assert out.get("response_format") == expected
    # Ollama's own knobs have no OpenAI counterpart and never leak into the request.
    assert not {"num_ctx", "top_k", "mirostat", "keep_alive", "think", "options"} & set(out)


EMBED_INPUTS = PROMPTS | st.lists(TEXT, min_size=1, max_size=3)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["nomic-embed-text", "all-minilm"]),
    EMBED_INPUTS,
    st.none() | st.booleans(),
    st.none() | st.integers(0, 4096),
    st.none() | OPTIONS,
    st.booleans(),
)
def test_any_valid_embed_request_translates_and_keeps_its_texts(
    model: str,
    texts: str | list[str],
    truncate: bool | None,
    dimensions: int | None,
    options: dict[str, Any] | None,
    through_client: bool,
) -> None:
    body: dict[str, Any] = {"model": model, "input": texts, "truncate": truncate}
    body |= {"dimensions": dimensions, "options": options, "keep_alive": "5m"}
    body = {k: v for k, v in body.items() if v is not None}
    sent = EmbedRequest(**body).model_dump(exclude_none=True) if through_client else body
    out = embed_request(embed_from_ollama(sent))
    assert out["model"] == model and out["input"] == texts  # every text, in order
    assert out.get("dimensions") == (dimensions or None)
    assert out["encoding_format"] == "float"
    assert set(out) <= {"model", "input", "dimensions", "encoding_format"}
    legacy: dict[str, Any] = {"model": model, "prompt": texts if isinstance(texts, str) else "x"}
    if through_client:
        legacy = EmbeddingsRequest(**legacy, options=options).model_dump(exclude_none=True)
    old = embed_request(embeddings_from_ollama(legacy))
    assert old == {"model": model, "input": legacy["prompt"], "encoding_format": "float"}
