"""The Gemini dialect: OpenAI chat <-> generateContent, checked against both official SDKs.

Gemini answers fed to the dialect are built with ``google.genai.types`` and dumped to the
camelCase wire shape; request bodies the dialect builds validate as the SDK's types (which
forbid unknown fields); OpenAI outputs validate as ``openai.types.chat`` models.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter
from typing import Any

import pytest
from google.genai import models as genai_models
from google.genai import types
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from nexus.dialects import StreamFailed
from nexus.dialects.gemini import (
    SKIP_SIGNATURE,
    GenerateToChatStream,
    error_message,
    from_generate_response,
    next_page_token,
    parse_models,
    path,
    to_generate_request,
)
from nexus.errors import InvalidRequest

ID = "chatcmpl-test"
CREATED = 1_700_000_000
REQUEST_KEYS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}


# -- helpers --------------------------------------------------------------------------------


def translate(body: dict[str, Any]) -> dict[str, Any]:
    """to_generate_request, with every piece of the result validated as the SDK's type."""
    out = to_generate_request(body)
    assert set(out) <= REQUEST_KEYS
    for content in out["contents"]:
        types.Content.model_validate(content)
    if "systemInstruction" in out:
        types.Content.model_validate(out["systemInstruction"])
    for tool in out.get("tools", []):
        types.Tool.model_validate(tool)
    if "toolConfig" in out:
        types.ToolConfig.model_validate(out["toolConfig"])
    if "generationConfig" in out:
        types.GenerationConfig.model_validate(out["generationConfig"])
    return out


def wire(response: types.GenerateContentResponse) -> dict[str, Any]:
    return response.model_dump(mode="json", by_alias=True, exclude_none=True)


def answer(*candidates: types.Candidate, **fields: Any) -> dict[str, Any]:
    if candidates:
        fields["candidates"] = list(candidates)
    return wire(types.GenerateContentResponse(**fields))


def candidate(*parts: types.Part, index: int = 0, finish: str | None = "STOP") -> types.Candidate:
    content = types.Content(role="model", parts=list(parts))
    reason = types.FinishReason(finish) if finish else None
    return types.Candidate(content=content, index=index, finish_reason=reason)


def call_part(name: str, args: dict[str, Any], signature: bytes | None = None) -> types.Part:
    return types.Part(
        function_call=types.FunctionCall(name=name, args=args), thought_signature=signature
    )


def complete(resp: dict[str, Any], response_id: str = ID) -> dict[str, Any]:
    out = from_generate_response(resp, model="gemini-2.5-flash", created=CREATED, id=response_id)
    ChatCompletion.model_validate(out)
    return out


def stream(events: list[dict[str, Any]], include_usage: bool = True) -> list[dict[str, Any]]:
    translator = GenerateToChatStream(
        model="gemini-2.5-flash", created=CREATED, id=ID, include_usage=include_usage
    )
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    chunks += translator.finish()
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["id"] == ID and chunk["created"] == CREATED
    return chunks


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def weather_call(call_id: str = "call_1", arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    function = {"name": "get_weather", "arguments": arguments}
    return {"id": call_id, "type": "function", "function": function}


def rejected(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        to_generate_request(body)
    return info.value


# -- path -----------------------------------------------------------------------------------


def test_path_for_plain_and_streaming_calls() -> None:
    assert (
        path("gemini-2.5-flash", stream=False) == "/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert (
        path("gemini-2.5-flash", stream=True)
        == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )


def test_path_quotes_the_model_name() -> None:
    assert path("my model:v1", stream=False) == "/v1beta/models/my%20model%3Av1:generateContent"
    assert path("a%2Fb", stream=False) == "/v1beta/models/a%252Fb:generateContent"


@pytest.mark.parametrize(
    "model", ["", "models/gemini", "a?b=1", "a#b", "..", "x..y", ".", "a\\b", "a\nb"]
)
def test_path_rejects_names_that_could_leave_the_model_path(model: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        path(model, stream=False)
    assert info.value.param == "model"


# -- request: messages ----------------------------------------------------------------------


def test_system_and_developer_messages_become_the_system_instruction() -> None:
    out = translate(
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                user("Hello"),
            ],
        }
    )
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use French."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]
    assert "model" not in out


def test_a_request_with_only_system_text_sends_it_as_the_user_turn() -> None:
    out = translate({"messages": [{"role": "system", "content": "Say hi."}]})
    assert out == {"contents": [{"role": "user", "parts": [{"text": "Say hi."}]}]}


def test_turns_get_gemini_roles_and_consecutive_turns_merge() -> None:
    out = translate(
        {
            "messages": [
                user("one"),
                user([{"type": "text", "text": "two"}]),
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
                user("five"),
            ]
        }
    )
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "three"}, {"text": "four"}]},
        {"role": "user", "parts": [{"text": "five"}]},
    ]


def test_empty_text_is_left_out() -> None:
    out = translate({"messages": [user("hi"), {"role": "assistant", "content": ""}, user("")]})
    assert out["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_data_url_images_become_inline_data() -> None:
    data = base64.b64encode(b"\x89PNG fake").decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
    out = translate({"messages": [user([{"type": "text", "text": "what is it?"}, image])]})
    assert out["contents"][0]["parts"] == [
        {"text": "what is it?"},
        {"inlineData": {"mimeType": "image/png", "data": data}},
    ]


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        ("https://example.com/cat.png", "image/png"),
        ("https://example.com/a/b/photo.JPEG?size=large#top", "image/jpeg"),
        ("http://example.com/anim.gif", "image/gif"),
        ("https://example.com/pic.webp", "image/webp"),
        ("https://example.com/image", "image/jpeg"),
        ("https://example.com/v1.2/render", "image/jpeg"),
    ],
)
def test_http_images_become_file_data_with_a_guessed_mime_type(url: str, mime: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    out = translate({"messages": [user([part])]})
    assert out["contents"][0]["parts"] == [{"fileData": {"mimeType": mime, "fileUri": url}}]


@pytest.mark.parametrize(
    "url", ["data:image/png,rawbytes", "ftp://example.com/a.png", "file:///etc/passwd", "https://"]
)
def test_unusable_image_urls_are_rejected(url: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    error = rejected({"messages": [user([part])]})
    assert error.param == "messages[0].content[0].image_url.url"


def test_audio_and_file_parts_become_inline_data() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    pdf = {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
    }
    bare = {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "report.pdf"}}
    out = translate({"messages": [user([audio, pdf, bare])]})
    assert out["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


def test_parts_without_a_gemini_equivalent_are_rejected() -> None:
    assert rejected(
        {"messages": [user([{"type": "file", "file": {"file_id": "file-1"}}])]}
    ).param == ("messages[0].content[0].file.file_data")
    assert rejected({"messages": [user([{"type": "video", "video": {}}])]}).param == (
        "messages[0].content[0]"
    )
    audio = {"type": "input_audio", "input_audio": {"data": "x", "format": "flac"}}
    assert rejected({"messages": [user([audio])]}).param == (
        "messages[0].content[0].input_audio.format"
    )


def test_malformed_messages_are_rejected_naming_the_field() -> None:
    assert rejected({"messages": []}).param == "messages"
    assert rejected({"messages": "hi"}).param == "messages"
    assert rejected({"messages": ["hi"]}).param == "messages[0]"
    assert rejected({"messages": [{"role": "function", "content": "x"}]}).param == (
        "messages[0].role"
    )
    assert rejected({"messages": [user(42)]}).param == "messages[0]"
    bad_system = {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    assert rejected({"messages": [bad_system, user("hi")]}).param == "messages[0].content[0]"


def test_legacy_functions_are_rejected_rather_than_silently_ignored() -> None:
    body = {"messages": [user("hi")], "functions": [{"name": "f", "parameters": {}}]}
    assert rejected(body).param == "functions"


# -- request: tools -------------------------------------------------------------------------


def tool_conversation() -> list[dict[str, Any]]:
    other = weather_call("call_2", '{"city": "Oslo", "units": ["c"]}')
    other["function"]["name"] = "get_time"
    return [
        user("Weather in Paris and time in Oslo?"),
        {"role": "assistant", "content": None, "tool_calls": [weather_call(), other]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "10:42"}]},
    ]


def test_tool_calls_and_results_become_function_call_and_response_parts() -> None:
    out = translate({"messages": tool_conversation()})
    model_turn, results = out["contents"][1], out["contents"][2]
    assert model_turn == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": SKIP_SIGNATURE,
            },
            {"functionCall": {"name": "get_time", "args": {"city": "Oslo", "units": ["c"]}}},
        ],
    }
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21, "sky": "clear"}}},
            {"functionResponse": {"name": "get_time", "response": {"result": "10:42"}}},
        ],
    }
    assert len(out["contents"]) == 3


@pytest.mark.parametrize("content", ["[1, 2]", "42", "not json", '{"broken": ', ""])
def test_tool_results_that_are_not_json_objects_are_wrapped(content: str) -> None:
    result = {"role": "tool", "tool_call_id": "call_1", "content": content}
    messages = [*tool_conversation()[:2], result]
    part = translate({"messages": messages})["contents"][2]["parts"][0]
    assert part == {"functionResponse": {"name": "get_weather", "response": {"result": content}}}


def test_thought_signatures_travel_back_in_extra_content() -> None:
    call = weather_call()
    call["extra_content"] = {"google": {"thought_signature": "c2lnbmF0dXJl"}}
    second = weather_call("call_9")
    messages = [
        user("hi"),
        {"role": "assistant", "content": "Checking.", "tool_calls": [call, second]},
    ]
    parts = translate({"messages": messages})["contents"][1]["parts"]
    assert parts[0] == {"text": "Checking."}
    assert parts[1]["thoughtSignature"] == "c2lnbmF0dXJl"
    assert "thoughtSignature" not in parts[2]


def test_empty_arguments_mean_no_arguments() -> None:
    messages = [user("hi"), {"role": "assistant", "tool_calls": [weather_call(arguments="")]}]
    part = translate({"messages": messages})["contents"][1]["parts"][0]
    assert part["functionCall"] == {"name": "get_weather", "args": {}}


@pytest.mark.parametrize("arguments", ['{"city": ', "[1]", "null"])
def test_bad_tool_call_arguments_are_rejected_naming_the_field(arguments: str) -> None:
    messages = [
        user("hi"),
        {"role": "assistant", "tool_calls": [weather_call(arguments=arguments)]},
    ]
    error = rejected({"messages": messages})
    assert error.param == "messages[1].tool_calls[0].function.arguments"


def test_a_tool_result_for_an_unknown_call_is_rejected() -> None:
    messages = [*tool_conversation(), {"role": "tool", "tool_call_id": "call_x", "content": "?"}]
    assert rejected({"messages": messages}).param == "messages[4].tool_call_id"


def test_tools_become_function_declarations_with_their_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "pattern": "^[A-Z]"},
            "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather.",
                "parameters": schema,
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "ping"}},
    ]
    out = translate({"messages": [user("hi")], "tools": tools})
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "Weather.", "parametersJsonSchema": schema},
                {"name": "ping"},
            ]
        }
    ]
    assert "toolConfig" not in out


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "a"}}],
                },
            },
            {"mode": "ANY", "allowedFunctionNames": ["a"]},
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "a"}}],
                },
            },
            {"mode": "VALIDATED", "allowedFunctionNames": ["a"]},
        ),
    ],
)
def test_tool_choice_becomes_the_function_calling_config(
    choice: Any, config: dict[str, Any]
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    out = translate({"messages": [user("hi")], "tools": tools, "tool_choice": choice})
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_bad_tools_and_tool_choices_are_rejected() -> None:
    messages = [user("hi")]
    assert rejected({"messages": messages, "tools": [{"type": "custom", "custom": {}}]}).param == (
        "tools[0].type"
    )
    bad_params = [{"type": "function", "function": {"name": "f", "parameters": "x"}}]
    assert rejected({"messages": messages, "tools": bad_params}).param == (
        "tools[0].function.parameters"
    )
    assert rejected({"messages": messages, "tool_choice": "sometimes"}).param == "tool_choice"


# -- request: generation config -------------------------------------------------------------


def test_sampling_fields_map_to_the_generation_config() -> None:
    out = translate(
        {
            "messages": [user("hi")],
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "max_tokens": 100,
            "max_completion_tokens": 200,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
        }
    )
    assert out["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 40,
        "maxOutputTokens": 200,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    }


def test_max_tokens_and_stop_lists() -> None:
    out = translate({"messages": [user("hi")], "max_tokens": 50, "stop": ["a", "b"]})
    assert out["generationConfig"] == {"maxOutputTokens": 50, "stopSequences": ["a", "b"]}


def test_response_formats() -> None:
    messages = [user("hi")]
    assert "generationConfig" not in translate(
        {"messages": messages, "response_format": {"type": "text"}}
    )
    json_mode = translate({"messages": messages, "response_format": {"type": "json_object"}})
    assert json_mode["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}
    structured = translate(
        {
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema, "strict": True},
            },
        }
    )
    assert structured["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    assert rejected({"messages": messages, "response_format": {"type": "xml"}}).param == (
        "response_format"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", "hot"), ("n", 1.5), ("max_tokens", True), ("seed", "7"), ("stop", [1])],
)
def test_ill_typed_generation_fields_are_rejected(field: str, value: Any) -> None:
    assert rejected({"messages": [user("hi")], field: value}).param == field


def test_fields_without_a_gemini_meaning_are_dropped() -> None:
    out = translate(
        {
            "model": "gemini-2.5-flash",
            "messages": [{"role": "user", "content": "hi", "name": "ann"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-1",
            "metadata": {"k": "v"},
            "store": False,
            "service_tier": "auto",
            "parallel_tool_calls": False,
            "logit_bias": {"50256": -100},
            "logprobs": True,
            "top_logprobs": 2,
            "reasoning_effort": "low",
        }
    )
    assert out == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


# -- answer ---------------------------------------------------------------------------------


def test_a_text_answer_with_usage() -> None:
    resp = answer(
        candidate(
            types.Part(text="Thinking hard...", thought=True),
            types.Part(text="Hello"),
            types.Part(text=", world"),
        ),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=10,
            candidates_token_count=3,
            thoughts_token_count=5,
            cached_content_token_count=4,
            total_token_count=18,
        ),
        model_version="gemini-2.5-flash-001",
    )
    out = complete(resp)
    assert out["object"] == "chat.completion"
    assert (out["id"], out["created"], out["model"]) == (ID, CREATED, "gemini-2.5-flash")
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert out["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 8,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }


def test_usage_without_details_and_without_total() -> None:
    resp = answer(
        candidate(types.Part(text="x")),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=2, candidates_token_count=1
        ),
    )
    assert complete(resp)["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 1,
        "total_tokens": 3,
    }
    assert "usage" not in complete(answer(candidate(types.Part(text="x"))))


def test_function_calls_become_tool_calls() -> None:
    resp = answer(
        candidate(
            call_part("get_weather", {"city": "Paris"}, signature=b"sig-1"),
            call_part("get_time", {"zone": "Europe/Oslo", "précis": True}),
        )
    )
    message = complete(resp)["choices"][0]["message"]
    assert complete(resp)["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first["type"] == "function" and first["function"]["name"] == "get_weather"
    assert json.loads(first["function"]["arguments"]) == {"city": "Paris"}
    assert json.loads(second["function"]["arguments"]) == {"zone": "Europe/Oslo", "précis": True}
    assert first["extra_content"] == {
        "google": {"thought_signature": base64.b64encode(b"sig-1").decode()}
    }
    assert "extra_content" not in second
    assert first["id"].startswith("call_") and second["id"].startswith("call_")
    assert first["id"] != second["id"]


def test_tool_call_ids_are_deterministic_per_answer_id() -> None:
    resp = answer(candidate(call_part("f", {})))
    again = complete(resp)["choices"][0]["message"]["tool_calls"][0]["id"]
    assert complete(resp)["choices"][0]["message"]["tool_calls"][0]["id"] == again
    other = complete(resp, response_id="chatcmpl-other")["choices"][0]["message"]["tool_calls"][0]
    assert other["id"] != again


def test_an_answer_with_tool_calls_round_trips_into_the_next_request() -> None:
    resp = answer(
        candidate(
            types.Part(text="Let me check."), call_part("get_weather", {"city": "Rome"}, b"s")
        )
    )
    message = complete(resp)["choices"][0]["message"]
    call_id = message["tool_calls"][0]["id"]
    out = translate(
        {
            "messages": [
                user("Rome?"),
                message,
                {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 30}'},
            ]
        }
    )
    assert out["contents"][1]["parts"] == [
        {"text": "Let me check."},
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Rome"}},
            "thoughtSignature": base64.b64encode(b"s").decode(),
        },
    ]
    assert out["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 30}}}
    ]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("LANGUAGE", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ],
)
def test_finish_reasons(reason: str, expected: str) -> None:
    out = complete(answer(candidate(types.Part(text="x"), finish=reason)))
    assert out["choices"][0]["finish_reason"] == expected


def test_a_length_cut_during_a_call_stays_length() -> None:
    out = complete(answer(candidate(call_part("f", {}), finish="MAX_TOKENS")))
    assert out["choices"][0]["finish_reason"] == "length"


def test_one_choice_per_candidate_ordered_by_index() -> None:
    resp = answer(
        candidate(types.Part(text="second"), index=1),
        candidate(types.Part(text="first"), index=0, finish="MAX_TOKENS"),
    )
    choices = complete(resp)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "first", "length"),
        (1, "second", "stop"),
    ]


def test_a_blocked_prompt_is_one_empty_content_filtered_choice() -> None:
    resp = answer(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(
            block_reason=types.BlockedReason.SAFETY
        ),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=7, total_token_count=7
        ),
    )
    assert "candidates" not in resp
    out = complete(resp)
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "finish_reason": "content_filter",
            "logprobs": None,
        }
    ]
    assert out["usage"]["prompt_tokens"] == 7


def test_a_safety_stop_without_content() -> None:
    resp = answer(types.Candidate(finish_reason=types.FinishReason.SAFETY, index=0))
    choice = complete(resp)["choices"][0]
    assert choice["message"]["content"] == ""
    assert choice["finish_reason"] == "content_filter"


# -- stream ---------------------------------------------------------------------------------


def test_a_text_stream_with_usage() -> None:
    usage = types.GenerateContentResponseUsageMetadata
    events = [
        answer(
            candidate(types.Part(text="Hel"), finish=None),
            usage_metadata=usage(prompt_token_count=4),
        ),
        answer(candidate(types.Part(text="mm", thought=True), types.Part(text="lo"), finish=None)),
        answer(
            candidate(types.Part(text="!"), finish="STOP"),
            usage_metadata=usage(
                prompt_token_count=4, candidates_token_count=3, total_token_count=7
            ),
        ),
    ]
    chunks = stream(events)
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({"content": "lo"}, None),
        ({"content": "!"}, None),
        ({}, "stop"),
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_usage_chunk_only_when_asked_but_usage_always_kept() -> None:
    event = answer(
        candidate(types.Part(text="x")),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1, candidates_token_count=1, total_token_count=2
        ),
    )
    translator = GenerateToChatStream(model="m", created=CREATED, id=ID, include_usage=False)
    assert translator.usage is None
    translator.feed(event)
    assert translator.finish() == []
    assert translator.usage == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    assert GenerateToChatStream(model="m", created=1, id=ID, include_usage=True).finish() == []


def test_streamed_function_calls_arrive_whole_with_running_indexes() -> None:
    events = [
        answer(candidate(types.Part(text="Checking."), finish=None)),
        answer(candidate(call_part("a", {"x": 1}, b"sig"), call_part("b", {}), finish=None)),
        answer(candidate(call_part("c", {"y": [1, 2]}), finish="STOP")),
    ]
    chunks = stream(events, include_usage=False)
    calls = [
        call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert [c["index"] for c in calls] == [0, 1, 2]
    assert [c["function"]["name"] for c in calls] == ["a", "b", "c"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"x": 1}, {}, {"y": [1, 2]}]
    assert calls[0]["extra_content"] == {
        "google": {"thought_signature": base64.b64encode(b"sig").decode()}
    }
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_error_event_fails_the_stream() -> None:
    translator = GenerateToChatStream(model="m", created=CREATED, id=ID, include_usage=False)
    translator.feed(answer(candidate(types.Part(text="partial"), finish=None)))
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    with pytest.raises(StreamFailed) as info:
        translator.feed(error)
    assert str(info.value) == "The model is overloaded."
    assert info.value.kind == "UNAVAILABLE"


def test_a_blocked_prompt_in_a_stream() -> None:
    event = answer(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(
            block_reason=types.BlockedReason.OTHER
        )
    )
    chunks = stream([event], include_usage=False)
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant", "content": ""}, None),
        ({}, "content_filter"),
    ]


def test_a_stream_of_two_candidates() -> None:
    events = [
        answer(
            candidate(types.Part(text="a"), index=0, finish=None),
            candidate(types.Part(text="b"), index=1, finish=None),
        ),
        answer(candidate(types.Part(text="c"), index=1, finish="MAX_TOKENS"), candidate(index=0)),
    ]
    chunks = stream(events, include_usage=False)
    by_index: dict[int, list[Any]] = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        by_index.setdefault(choice["index"], []).append((choice["delta"], choice["finish_reason"]))
    assert by_index[0] == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "a"}, None),
        ({}, "stop"),
    ]
    assert by_index[1] == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "b"}, None),
        ({"content": "c"}, None),
        ({}, "length"),
    ]


# -- errors and models ----------------------------------------------------------------------


def test_error_message_of_google_error_bodies() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid.\n Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
        }
    }
    assert (
        error_message(json.dumps(body).encode())
        == "API key not valid. Please pass a valid API key."
    )
    assert (
        error_message(json.dumps([body]).encode())
        == "API key not valid. Please pass a valid API key."
    )
    assert (
        error_message(b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}')
        == "RESOURCE_EXHAUSTED"
    )
    long = error_message(json.dumps({"error": {"message": "x" * 5000}}).encode())
    assert 0 < len(long) <= 500


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502</html>",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'{"error": "nope"}',
        b'{"ok": 1}',
        b'{"error": {"message": 3}}',
    ],
)
def test_error_message_is_empty_for_anything_else(body: bytes) -> None:
    assert error_message(body) == ""


@given(st.binary(max_size=200))
@settings(max_examples=50, deadline=None)
def test_error_message_never_raises(body: bytes) -> None:
    assert isinstance(error_message(body), str)


LISTING: dict[str, Any] = {
    "models": [
        {
            "name": "models/gemini-2.5-flash",
            "version": "001",
            "displayName": "Gemini 2.5 Flash",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": [
                "generateContent",
                "countTokens",
                "createCachedContent",
                "batchGenerateContent",
            ],
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2,
            "thinking": True,
        },
        {
            "name": "models/gemini-embedding-001",
            "displayName": "Gemini Embedding 001",
            "inputTokenLimit": 2048,
            "outputTokenLimit": 1,
            "supportedGenerationMethods": ["embedContent", "countTextTokens", "countTokens"],
        },
        {"name": "models/imagen-4.0-generate-001", "supportedGenerationMethods": ["predict"]},
        {"name": "tunedModels/my-tune", "supportedGenerationMethods": ["generateContent"]},
        {"name": "models/bad?name", "supportedGenerationMethods": ["generateContent"]},
        {"displayName": "no name"},
        "junk",
    ],
    "nextPageToken": "page-2",
}


def test_parse_models() -> None:
    models = parse_models(LISTING)
    assert [m.id for m in models] == [
        "gemini-2.5-flash",
        "gemini-embedding-001",
        "imagen-4.0-generate-001",
    ]
    flash, embedding, imagen = models
    assert (flash.context_length, flash.max_output_tokens) == (1048576, 65536)
    assert (flash.supports_chat, flash.supports_embeddings, flash.supports_json_mode) == (
        True,
        False,
        True,
    )
    assert (flash.supports_vision, flash.supports_tools) == (None, None)
    assert (
        embedding.supports_chat,
        embedding.supports_embeddings,
        embedding.supports_json_mode,
    ) == (False, True, False)
    assert (imagen.supports_chat, imagen.context_length, imagen.max_output_tokens) == (
        False,
        None,
        None,
    )


def test_parse_models_reads_the_listing_as_the_sdk_does() -> None:
    for model in parse_models(LISTING):
        entry = next(
            e
            for e in LISTING["models"]
            if isinstance(e, dict) and e.get("name") == f"models/{model.id}"
        )
        converted = genai_models._Model_from_mldev(entry)
        # The SDK copies the whole entry into tuned_model_info to sort tuned models out later.
        converted.pop("tuned_model_info", None)
        sdk = types.Model.model_validate(converted)
        assert sdk.name == f"models/{model.id}"
        assert model.context_length == sdk.input_token_limit
        assert model.max_output_tokens == sdk.output_token_limit
        assert model.supports_chat == ("generateContent" in (sdk.supported_actions or []))


def test_next_page_token() -> None:
    assert next_page_token(LISTING) == "page-2"
    assert next_page_token({"models": []}) is None
    assert next_page_token({"nextPageToken": ""}) is None
    assert next_page_token({"nextPageToken": 3}) is None
    assert next_page_token(None) is None
    assert parse_models(None) == [] and parse_models({"models": "x"}) == []


# -- properties: requests -------------------------------------------------------------------

texts = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=12
)
names = st.sampled_from(["get_weather", "get_time", "search"])
arg_values = st.one_of(st.integers(-1000, 1000), texts, st.booleans(), st.none())
arguments = st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), arg_values, max_size=3)
data_images = st.binary(min_size=1, max_size=12).map(
    lambda b: {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(b).decode()},
    }
)
http_images = st.tuples(
    st.text("abc", min_size=1, max_size=5), st.sampled_from(["png", "jpg", "webp", "bin", ""])
).map(lambda t: {"type": "image_url", "image_url": {"url": f"https://example.com/{t[0]}.{t[1]}"}})
user_contents = st.one_of(
    texts,
    st.lists(
        st.one_of(texts.map(lambda t: {"type": "text", "text": t}), data_images, http_images),
        min_size=1,
        max_size=3,
    ),
)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(texts)}
        )
    calls_made = 0
    for _ in range(draw(st.integers(1, 4))):
        messages.append(user(draw(user_contents)))
        if not draw(st.booleans()):
            continue
        calls = []
        for _ in range(draw(st.integers(0, 2))):
            calls_made += 1
            function = {"name": draw(names), "arguments": json.dumps(draw(arguments))}
            calls.append({"id": f"call_{calls_made}", "type": "function", "function": function})
        message: dict[str, Any] = {
            "role": "assistant",
            "content": draw(st.one_of(st.none(), texts)) if calls else draw(texts),
        }
        if calls:
            message["tool_calls"] = calls
        messages.append(message)
        for call in calls:
            content = draw(st.one_of(texts, arguments.map(json.dumps)))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
    body: dict[str, Any] = {"model": "gemini-2.5-flash", "messages": messages}
    if draw(st.booleans()):
        schema = {"type": "object", "properties": {"city": {"type": "string"}}}
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": n, "description": draw(texts), "parameters": schema},
            }
            for n in ("get_weather", "get_time", "search")
        ]
        body["tool_choice"] = draw(
            st.sampled_from(
                ["auto", "none", "required", {"type": "function", "function": {"name": "search"}}]
            )
        )
    return body


def _message_texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content or [] if p["type"] == "text"]


@given(chat_requests())
@settings(max_examples=80, deadline=None)
def test_any_chat_request_translates_keeping_every_text(body: dict[str, Any]) -> None:
    out = translate(body)
    contents = out["contents"]
    roles = [c["role"] for c in contents]
    assert set(roles) <= {"user", "model"}
    assert all(a != b for a, b in itertools.pairwise(roles))
    parts = [p for c in contents for p in c["parts"]]
    messages = body["messages"]
    system = [
        t for m in messages if m["role"] in ("system", "developer") for t in _message_texts(m)
    ]
    turns = [t for m in messages if m["role"] in ("user", "assistant") for t in _message_texts(m)]
    assert [p["text"] for p in out.get("systemInstruction", {}).get("parts", [])] == system
    assert Counter(p["text"] for p in parts if "text" in p) == Counter(turns)
    images = [
        p
        for m in messages
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]
    assert len([p for p in parts if "inlineData" in p or "fileData" in p]) == len(images)
    sent_calls = [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for m in messages
        for c in m.get("tool_calls", [])
    ]
    assert [
        (p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p
    ] == sent_calls
    results = [p["functionResponse"] for p in parts if "functionResponse" in p]
    tool_messages = [m for m in messages if m["role"] == "tool"]
    assert len(results) == len(tool_messages)
    for result, message in zip(results, tool_messages, strict=True):
        try:
            parsed = json.loads(message["content"])
        except ValueError:
            parsed = None  # not JSON (even when it starts with "{"): wrapped as a result
        assert result["response"] in (parsed, {"result": message["content"]})


# -- properties: streams --------------------------------------------------------------------

pieces = st.one_of(
    texts.map(lambda t: types.Part(text=t)),
    texts.map(lambda t: types.Part(text=t, thought=True)),
    st.tuples(names, arguments, st.one_of(st.none(), st.binary(min_size=1, max_size=6))).map(
        lambda t: call_part(t[0], t[1], t[2])
    ),
)


@st.composite
def streamed_candidates(draw: st.DrawFn) -> list[tuple[list[list[types.Part]], str]]:
    """Per candidate: its parts cut into consecutive chunks, and its finish reason."""
    out = []
    for _ in range(draw(st.integers(1, 2))):
        parts = draw(st.lists(pieces, max_size=6))
        cuts = sorted(draw(st.lists(st.integers(0, len(parts)), max_size=3)))
        bounds = [0, *cuts, len(parts)]
        groups = [parts[a:b] for a, b in itertools.pairwise(bounds)]
        out.append((groups, draw(st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]))))
    return out


def _stream_events(cands: list[tuple[list[list[types.Part]], str]]) -> list[dict[str, Any]]:
    events = []
    for step in range(max(len(groups) for groups, _ in cands)):
        chunk = [
            candidate(*groups[step], index=i, finish=reason if step == len(groups) - 1 else None)
            for i, (groups, reason) in enumerate(cands)
            if step < len(groups)
        ]
        events.append(answer(*chunk))
    return events


@given(streamed_candidates())
@settings(max_examples=80, deadline=None)
def test_a_stream_says_what_the_merged_answer_says(
    cands: list[tuple[list[list[types.Part]], str]],
) -> None:
    usage = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=3, candidates_token_count=5, total_token_count=8
    )
    events = _stream_events(cands)
    events[-1]["usageMetadata"] = wire(types.GenerateContentResponse(usage_metadata=usage))[
        "usageMetadata"
    ]
    merged = answer(
        *(
            candidate(*[p for g in groups for p in g], index=i, finish=reason)
            for i, (groups, reason) in enumerate(cands)
        ),
        usage_metadata=usage,
    )
    full = complete(merged)
    chunks = stream(events)
    seen: dict[int, dict[str, Any]] = {}
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        state = seen.setdefault(
            choice["index"],
            {"role": choice["delta"].get("role"), "content": "", "calls": [], "finish": None},
        )
        state["content"] += choice["delta"].get("content") or ""
        state["calls"] += choice["delta"].get("tool_calls", [])
        state["finish"] = choice["finish_reason"] or state["finish"]
    assert chunks[-1]["usage"] == full["usage"]
    assert sorted(seen) == [c["index"] for c in full["choices"]]
    for choice in full["choices"]:
        state = seen[choice["index"]]
        assert state["role"] == "assistant"
        assert state["content"] == (choice["message"]["content"] or "")
        assert [c["index"] for c in state["calls"]] == list(range(len(state["calls"])))
        assert [{k: v for k, v in c.items() if k != "index"} for c in state["calls"]] == choice[
            "message"
        ].get("tool_calls", [])
        assert state["finish"] == choice["finish_reason"]
