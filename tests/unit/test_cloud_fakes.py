"""The cloud API fakes (FakeAnthropic, FakeGemini) driven by their providers' official SDKs.

A fake is faithful only if its provider's SDK parses everything it says, so every answer
shape here goes through ``anthropic`` or ``google-genai`` pointed at the fake's loopback
URL (no retries, bounded timeouts). The `loopback_only` guard wraps the HTTP clients both
SDKs use (httpx2, aiohttp) and name resolution: a request to any other host fails the test.
Request validation and authentication are also checked with raw HTTP, where an SDK would
refuse to send the bad request itself.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anthropic
import httpx2
import pytest
from anthropic import AsyncAnthropic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BaseModel

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini, decode_bytes
from tests.fakes.models import Behavior, FakeModel
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.timeout(20),
    # google-genai subclasses aiohttp.ClientSession, which aiohttp frowns upon
    pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning"),
]

# A real 1x1 PNG: the Anthropic fake checks that image bytes match their media type.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
    "RU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-2.5-flash"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}
WEATHER_ARGS = {"city": "city-example", "unit": "celsius"}
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
]

# Variables that could point an SDK elsewhere, add headers or pick other credentials.
SDK_ENV = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS",
    "ANTHROPIC_PROFILE", "ANTHROPIC_CONFIG_DIR", "GOOGLE_API_KEY", "GEMINI_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_GENAI_API_VERSION", "GOOGLE_APPLICATION_CREDENTIALS", "HTTP_PROXY", "HTTPS_PROXY",
    "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)  # fmt: skip
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ----------------------------------------------------------------- the loopback guard
@dataclass
class Traffic:
    urls: list[str] = field(default_factory=list)  # every URL the HTTP clients requested
    strays: list[str] = field(default_factory=list)  # the refused ones (hosts off loopback)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Traffic]:
    """Record every URL either SDK requests; refuse (and fail the test on) other hosts."""
    for name in SDK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    traffic = Traffic()

    def check(url: str) -> None:
        traffic.urls.append(url)
        if urlsplit(url).hostname not in LOOPBACK:
            traffic.strays.append(url)
            raise AssertionError(f"request left loopback: {url}")

    send = httpx2.AsyncClient.send

    async def guarded_send(self: httpx2.AsyncClient, request: Any, *a: Any, **kw: Any) -> Any:
        check(str(request.url))
        return await send(self, request, *a, **kw)

    session_request = aiohttp.ClientSession._request

    def guarded_request(
        self: aiohttp.ClientSession, method: str, url: Any, *a: Any, **kw: Any
    ) -> Any:
        check(str(url))
        return session_request(self, method, url, *a, **kw)

    resolve = socket.getaddrinfo

    def guarded_getaddrinfo(host: Any, *a: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (*LOOPBACK, None):
            traffic.strays.append(str(name))
            raise OSError(f"name resolution off loopback refused: {name}")
        return resolve(host, *a, **kw)

    monkeypatch.setattr(httpx2.AsyncClient, "send", guarded_send)
    monkeypatch.setattr(aiohttp.ClientSession, "_request", guarded_request)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield traffic
    assert not traffic.strays, f"traffic off loopback: {traffic.strays}"


async def test_loopback_guard_refuses_other_hosts(loopback_only: Traffic) -> None:
    async with httpx2.AsyncClient() as client:
        with pytest.raises(AssertionError, match="left loopback"):
            await client.get("http://192.0.2.1/")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AssertionError, match="left loopback"):
            await session.get("https://generativelanguage.googleapis.com/")
    with pytest.raises(OSError, match="refused"):
        socket.getaddrinfo("api.anthropic.com", 443)
    assert loopback_only.strays == [
        "http://192.0.2.1/",
        "https://generativelanguage.googleapis.com/",
        "api.anthropic.com",
    ]
    loopback_only.strays.clear()  # refused on purpose: not a failure of this test


# ------------------------------------------------------------------------- helpers
def anthropic_client(
    fake: FakeAnthropic, *, key: str | None = None, bearer: bool = False, timeout: float = 5.0
) -> AsyncAnthropic:
    """The SDK on the fake. Unless `bearer`, it sends x-api-key (as Nexus does), not its
    own default of ``Authorization: Bearer``."""
    key = key or fake.api_key
    headers: dict[str, Any] = {"x-api-key": key, "Authorization": anthropic.omit}
    if bearer:
        headers = {}
    return AsyncAnthropic(
        base_url=fake.url, api_key=key, max_retries=0, timeout=timeout, default_headers=headers
    )


def genai_client(
    fake: FakeGemini,
    *,
    key: str | None = None,
    api_version: str | None = None,
    timeout_ms: int = 5000,
) -> genai.Client:
    options = types.HttpOptions(
        base_url=fake.url,
        api_version=api_version,
        timeout=timeout_ms,
        retry_options=types.HttpRetryOptions(attempts=1),  # no retries, no reconnect sleeps
    )
    return genai.Client(api_key=key or fake.api_key, http_options=options)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def client(claude: FakeAnthropic) -> AsyncIterator[AsyncAnthropic]:
    async with anthropic_client(claude) as sdk:
        yield sdk


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as fake:
        yield fake


@pytest.fixture
async def gclient(gemini: FakeGemini) -> AsyncIterator[Any]:
    sdk = genai_client(gemini)
    yield sdk.aio
    await sdk.aio.aclose()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# ======================================================================= Anthropic
async def test_anthropic_text_echo_usage_and_recorded_headers(
    claude: FakeAnthropic, client: AsyncAnthropic, loopback_only: Traffic
) -> None:
    claude.cache_read_input_tokens = 42
    msg = await client.messages.create(
        model=CLAUDE, max_tokens=100, system="Be brief.", messages=user("hello from the test")
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == CLAUDE
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Echo: hello from the test"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.output_tokens == 5 and msg.usage.cache_read_input_tokens == 42
    counted = await client.messages.count_tokens(
        model=CLAUDE, system="Be brief.", messages=user("hello from the test")
    )
    assert counted.input_tokens == msg.usage.input_tokens > 0
    sent = claude.message_requests[0]
    assert sent.json == {
        "model": CLAUDE,
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": user("hello from the test"),
    }
    assert sent.headers["x-api-key"] == claude.api_key
    assert sent.headers["anthropic-version"]
    assert "authorization" not in sent.headers  # the recording can prove a header was not sent
    paths = [urlsplit(u).path for u in loopback_only.urls]
    assert paths == ["/v1/messages", "/v1/messages/count_tokens"]


async def test_anthropic_images_reach_the_fake(
    claude: FakeAnthropic, client: AsyncAnthropic
) -> None:
    content: list[Any] = [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
    msg = await client.messages.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert msg.content[0].text == "Echo: what is this [2 image(s)]"  # type: ignore[union-attr]
    assert [img["source"]["type"] for img in claude.images] == ["base64", "url"]
    assert claude.images[0]["source"]["data"] == PNG_B64
    assert msg.usage.input_tokens >= 2 * 85  # images count in the fake's token counts


async def test_anthropic_tool_use_then_tool_result(
    claude: FakeAnthropic, client: AsyncAnthropic
) -> None:
    first = await client.messages.create(
        model=CLAUDE, max_tokens=200, messages=user("weather in Paris?"), tools=ANTHROPIC_TOOLS
    )
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == WEATHER_ARGS and call.id.startswith("toolu_")
    history: list[Any] = [
        *user("weather in Paris?"),
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees"}],
        },
    ]
    second = await client.messages.create(
        model=CLAUDE, max_tokens=200, messages=history, tools=ANTHROPIC_TOOLS
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "Tool result received: 21 degrees"  # type: ignore[union-attr]
    claude.tool_input = {"city": "Oslo"}  # a scripted call instead of the schema's example
    third = await client.messages.create(
        model=CLAUDE,
        max_tokens=200,
        messages=user("and Oslo?"),
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert third.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]


async def test_anthropic_stream_text(claude: FakeAnthropic, client: AsyncAnthropic) -> None:
    claude.cache_read_input_tokens = 7
    prompt = "the quick brown fox jumps over the lazy dog"
    async with client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=user(prompt)
    ) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) == claude.stream_chunks
    assert "".join(pieces) == f"Echo: {prompt}" == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 10 and final.usage.cache_read_input_tokens == 7
    raw = claude.message_requests[0]
    assert raw.json["stream"] is True


async def test_anthropic_stream_tool_input_from_json_deltas(
    claude: FakeAnthropic, client: AsyncAnthropic
) -> None:
    claude.tool_preamble = "Let me check the weather."
    json_deltas = 0
    async with client.messages.stream(
        model=CLAUDE, max_tokens=200, messages=user("weather?"), tools=ANTHROPIC_TOOLS
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_deltas += 1
        final = await stream.get_final_message()
    assert json_deltas == claude.stream_chunks + 1  # an empty first piece, as the API sends
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check the weather."  # type: ignore[union-attr]
    assert final.content[1].input == WEATHER_ARGS  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


async def test_anthropic_max_tokens_and_stop_sequences(client: AsyncAnthropic) -> None:
    short = await client.messages.create(
        model=CLAUDE, max_tokens=2, messages=user("one two three four")
    )
    assert short.stop_reason == "max_tokens"
    assert short.content[0].text == "Echo: one"  # type: ignore[union-attr]
    stopped = await client.messages.create(
        model=CLAUDE, max_tokens=100, messages=user("one two three four"), stop_sequences=["three"]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "three"
    assert stopped.content[0].text == "Echo: one two "  # type: ignore[union-attr]


async def test_anthropic_refusal_through_the_sdk(
    claude: FakeAnthropic, client: AsyncAnthropic
) -> None:
    claude.refuse = True
    refused = await client.messages.create(model=CLAUDE, max_tokens=100, messages=user("x"))
    assert refused.stop_reason == "refusal" and refused.content == []
    async with client.messages.stream(model=CLAUDE, max_tokens=100, messages=user("x")) as s:
        final = await s.get_final_message()
    assert final.stop_reason == "refusal"


async def test_anthropic_models_list_pages(loopback_only: Traffic) -> None:
    models = [FakeModel(f"claude-{i}", context_length=1000 * i) for i in (1, 2, 3)]
    async with FakeAnthropic(models) as fake, anthropic_client(fake) as sdk:
        listed = [m async for m in sdk.models.list(limit=2)]
        one = await sdk.models.retrieve("claude-2")
        with pytest.raises(anthropic.NotFoundError):
            await sdk.models.retrieve("claude-9")
    assert [m.id for m in listed] == ["claude-1", "claude-2", "claude-3"]
    assert [m.max_input_tokens for m in listed] == [1000, 2000, 3000]
    assert listed[0].type == "model" and listed[0].created_at.year == 2025
    assert one.id == "claude-2" and one.display_name
    pages = [r.query for r in fake.requests if r.path == "/v1/models"]
    assert pages == [{"limit": "2"}, {"limit": "2", "after_id": "claude-2"}]


@pytest.mark.parametrize(
    ("behavior", "status", "exc", "kind"),
    [
        (Behavior.ERROR_401, None, anthropic.AuthenticationError, "authentication_error"),
        (Behavior.ERROR_429, None, anthropic.RateLimitError, "rate_limit_error"),
        (Behavior.ERROR_500, None, anthropic.InternalServerError, "api_error"),
        (Behavior.ERROR_503, None, anthropic.ServiceUnavailableError, "api_error"),
        (Behavior.OK, 529, anthropic.OverloadedError, "overloaded_error"),
        (Behavior.OK, 413, anthropic.ContentTooLargeError, "request_too_large"),
    ],
)
async def test_anthropic_errors_as_sdk_exceptions(
    claude: FakeAnthropic,
    client: AsyncAnthropic,
    behavior: Behavior,
    status: int | None,
    exc: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    claude.chat_behavior = behavior
    claude.error_status = status
    with pytest.raises(exc) as caught:
        await client.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    err = caught.value
    assert err.type == kind and err.body["type"] == "error"  # type: ignore[index]
    assert err.request_id == err.body["request_id"]  # type: ignore[index]
    if err.status_code == 429:
        assert err.response.headers["retry-after"] == "7"
    assert len(claude.requests) == 1  # max_retries=0: exactly one attempt


async def test_anthropic_auth_and_bad_requests_through_the_sdk(claude: FakeAnthropic) -> None:
    async with anthropic_client(claude, key="sk-ant-wrong") as wrong:
        with pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"):
            await wrong.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    async with anthropic_client(claude, bearer=True) as bearer:  # the SDK's own default auth
        with pytest.raises(anthropic.AuthenticationError, match="x-api-key header is required"):
            await bearer.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    async with anthropic_client(claude) as sdk:
        with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
            await sdk.messages.create(
                model=CLAUDE,
                max_tokens=10,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}
                        ],
                    }
                ],
            )
        with pytest.raises(anthropic.NotFoundError, match="model: claude-nope"):
            await sdk.messages.create(model="claude-nope", max_tokens=10, messages=user("hi"))


async def test_anthropic_bearer_accepted_when_asked() -> None:
    async with FakeAnthropic(accept_bearer=True) as fake:
        async with anthropic_client(fake, bearer=True) as sdk:
            msg = await sdk.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    assert msg.content[0].text == "Echo: hi"  # type: ignore[union-attr]
    sent = fake.message_requests[0].headers
    assert sent["authorization"] == f"Bearer {fake.api_key}" and "x-api-key" not in sent


async def test_anthropic_mid_stream_error_event(
    claude: FakeAnthropic, client: AsyncAnthropic
) -> None:
    claude.stream_error = 529
    claude.cut_after = 2
    pieces: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model=CLAUDE, max_tokens=100, messages=user("a b c d e f g h i j")
        ) as stream:
            async for piece in stream.text_stream:
                pieces.append(piece)
    assert len(pieces) == 2
    assert caught.value.type == "overloaded_error"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_anthropic_cut_stream_and_hang(claude: FakeAnthropic) -> None:
    claude.chat_behavior = Behavior.CUT_STREAM
    claude.cut_after = 1
    pieces: list[str] = []
    async with anthropic_client(claude) as sdk:
        with pytest.raises(anthropic.APIConnectionError):
            async with sdk.messages.stream(
                model=CLAUDE, max_tokens=100, messages=user("a b c d e f g h i j")
            ) as stream:
                async for piece in stream.text_stream:
                    pieces.append(piece)
    assert len(pieces) == 1
    claude.chat_behavior = Behavior.HANG
    async with anthropic_client(claude, timeout=0.3) as sdk:
        with pytest.raises(anthropic.APITimeoutError):
            await sdk.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    await wait_until(
        lambda: claude.active_requests == 0, what="claude.active_requests == 0"
    )  # the fake saw the client leave


async def test_anthropic_slow_and_stalled_streams(claude: FakeAnthropic) -> None:
    claude.chat_behavior = Behavior.SLOW
    claude.delay = 0.01
    async with anthropic_client(claude) as sdk:
        async with sdk.messages.stream(
            model=CLAUDE, max_tokens=100, messages=user("slow but sure")
        ) as stream:
            assert await stream.get_final_text() == "Echo: slow but sure"
    claude.chat_behavior = Behavior.STALL_STREAM
    claude.cut_after = 1
    pieces: list[str] = []
    async with anthropic_client(claude, timeout=0.5) as sdk:
        with pytest.raises(anthropic.APITimeoutError):
            async with sdk.messages.stream(
                model=CLAUDE, max_tokens=100, messages=user("a b c d e f g h i j")
            ) as stream:
                async for piece in stream.text_stream:
                    pieces.append(piece)
    assert pieces == ["Echo: a "]  # the first of five pieces of eleven words
    await wait_until(
        lambda: claude.cancelled_streams == 1, what="claude.cancelled_streams == 1"
    )  # the stalled handler saw it go


async def test_anthropic_invalid_json_is_not_parsed(
    claude: FakeAnthropic, client: AsyncAnthropic
) -> None:
    claude.chat_behavior = Behavior.INVALID_JSON
    with pytest.raises(ValueError):
        await client.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))


# ------------------------------------------------- Anthropic validation over raw HTTP
def _payload(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": CLAUDE, "max_tokens": 50, "messages": user("hi")}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _blocks(*blocks: dict[str, Any], role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": list(blocks)}]


_TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}


def _image(media_type: str) -> dict[str, Any]:
    source = {"type": "base64", "media_type": media_type, "data": PNG_B64}
    return {"type": "image", "source": source}


def _result(tool_use_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": "ok"}


_CALLED = [*user("a"), *_blocks(_TOOL_USE, role="assistant")]
ANTHROPIC_BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    (_payload(max_tokens=None), "max_tokens: Field required"),
    (_payload(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    (_payload(n=2), "n: Extra inputs are not permitted"),
    (_payload(messages=[]), "messages: at least one message is required"),
    (
        _payload(messages=[{"role": "system", "content": "x"}]),
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (_payload(messages=user("a") + user("b")), "roles must alternate"),
    (_payload(messages=[{"role": "assistant", "content": "x"}]), "first message must use the"),
    (
        _payload(messages=_blocks({"type": "image_url", "image_url": {"url": "x"}})),
        "messages.0.content.0: Input tag 'image_url' found using 'type' does not match",
    ),
    (
        _payload(messages=_blocks({"type": "text", "text": ""})),
        "text content blocks must be non-empty",
    ),
    (
        _payload(messages=_blocks(_image("image/jpeg"))),
        "media type, but the image appears to be a image/png image",
    ),
    (_payload(messages=_blocks(_image("image/bmp"))), "media_type: Input should be"),
    (
        _payload(messages=[*_CALLED, *user("b")]),
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
    ),
    (
        _payload(messages=[*_CALLED, *_blocks(_result("toolu_1"), _result("toolu_2"))]),
        "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
    ),
    (_payload(tools=[{"name": "get_weather"}]), "tools.0.custom.input_schema: Field required"),
    (
        _payload(tools=[{"name": "bad name", "input_schema": {"type": "object"}}]),
        "tools.0.custom.name: String should match pattern",
    ),
    (
        _payload(tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "nope"}),
        "Tool 'nope' not found",
    ),
    (_payload(temperature=1.5), "temperature: Input should be less than or equal to 1"),
]


@pytest.mark.parametrize(("body", "message"), ANTHROPIC_BAD_REQUESTS)
async def test_anthropic_refuses_what_the_api_refuses(
    claude: FakeAnthropic, session: aiohttp.ClientSession, body: dict[str, Any], message: str
) -> None:
    headers = {"x-api-key": claude.api_key, "anthropic-version": "2023-06-01"}
    async with session.post(claude.url + "/v1/messages", json=body, headers=headers) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]
    assert resp.headers["request-id"] == answer["request_id"]


async def test_anthropic_raw_auth_version_and_lenient_turns(session: aiohttp.ClientSession) -> None:
    async with FakeAnthropic(strict_turns=False) as fake:
        url = fake.url + "/v1/messages"
        body = _payload(messages=user("a") + user("b"))  # merged into one turn, like the real API
        cases = [
            ({"anthropic-version": "2023-06-01"}, 401, "x-api-key header is required"),
            ({"x-api-key": fake.api_key}, 400, "anthropic-version: header is required"),
            ({"x-api-key": fake.api_key, "anthropic-version": "2023-06-01"}, 200, ""),
        ]
        for headers, status, message in cases:
            async with session.post(url, json=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == status, answer
            if message:
                assert answer["error"]["message"] == message
        assert answer["content"][0]["text"] == "Echo: b"
        assert len(fake.message_requests) == 3


# ========================================================================== Gemini
@pytest.mark.parametrize("api_version", [None, "v1beta"])
async def test_gemini_text_echo_usage_and_key_header(
    gemini: FakeGemini, api_version: str | None, loopback_only: Traffic
) -> None:
    gemini.cached_content_token_count = 5
    gemini.thoughts_token_count = 3
    sdk = genai_client(gemini, api_version=api_version)
    try:
        config = types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2)
        answer = await sdk.aio.models.generate_content(
            model=GEMINI, contents="hello from the test", config=config
        )
        counted = await sdk.aio.models.count_tokens(model=GEMINI, contents="hello from the test")
    finally:
        await sdk.aio.aclose()
    assert answer.text == "Echo: hello from the test"
    candidate = answer.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.STOP
    usage = answer.usage_metadata
    assert usage is not None and usage.candidates_token_count == 5
    assert usage.cached_content_token_count == 5 and usage.thoughts_token_count == 3
    assert usage.total_token_count == usage.prompt_token_count + 5 + 3  # type: ignore[operator]
    assert answer.model_version == GEMINI and answer.response_id
    sent = gemini.generate_requests[0]
    version = api_version or "v1"
    assert sent.path == f"/{version}/models/{GEMINI}:generateContent"
    assert sent.headers["x-goog-api-key"] == gemini.api_key
    assert sent.json["contents"] == [{"parts": [{"text": "hello from the test"}], "role": "user"}]
    assert not gemini.query_key_requests  # the SDK keeps its key out of the URL
    assert counted.total_tokens == 4 + 5  # the request's words plus the cached tokens
    assert len(loopback_only.urls) == 2


async def test_gemini_images_reach_the_fake(gemini: FakeGemini, gclient: Any) -> None:
    contents = [
        "what is this",
        types.Part.from_bytes(data=PNG, mime_type="image/png"),
        types.Part.from_uri(file_uri="https://example.com/cat.png", mime_type="image/png"),
    ]
    answer = await gclient.models.generate_content(model=GEMINI, contents=contents)
    assert answer.text == "Echo: what is this [2 image(s)]"
    kinds = [next(k for k in part if k in ("inlineData", "fileData")) for part in gemini.images]
    assert kinds == ["inlineData", "fileData"]
    assert decode_bytes(gemini.images[0]["inlineData"]["data"]) == PNG
    assert answer.usage_metadata.prompt_token_count >= 2 * 258


async def test_gemini_function_call_round_trip(gemini: FakeGemini, gclient: Any) -> None:
    declaration = types.FunctionDeclaration(
        name="get_weather", description="Weather", parameters_json_schema=WEATHER_SCHEMA
    )
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[declaration])])
    question = types.Content(role="user", parts=[types.Part(text="weather in Paris?")])
    first = await gclient.models.generate_content(model=GEMINI, contents=[question], config=config)
    calls = first.function_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].args == WEATHER_ARGS
    assert first.candidates[0].finish_reason == types.FinishReason.STOP
    result = types.Part.from_function_response(name="get_weather", response={"temp": 21})
    history = [question, first.candidates[0].content, types.Content(role="user", parts=[result])]
    second = await gclient.models.generate_content(model=GEMINI, contents=history, config=config)
    assert second.text == 'Function result: get_weather returned {"temp": 21}'
    gemini.tool_input = {"city": "Oslo"}
    schema = types.Schema(
        type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}
    )
    legacy = types.FunctionDeclaration(name="get_weather", parameters=schema)
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[legacy])])
    third = await gclient.models.generate_content(model=GEMINI, contents="Oslo?", config=config)
    assert third.function_calls[0].args == {"city": "Oslo"}


async def test_gemini_thought_signatures_must_come_back() -> None:
    async with FakeGemini(thought_signatures=True) as fake:
        sdk = genai_client(fake)
        try:
            declaration = types.FunctionDeclaration(
                name="lookup", parameters_json_schema={"type": "object"}
            )
            config = types.GenerateContentConfig(
                tools=[types.Tool(function_declarations=[declaration])]
            )
            question = types.Content(role="user", parts=[types.Part(text="look it up")])
            first = await sdk.aio.models.generate_content(
                model=GEMINI, contents=[question], config=config
            )
            part = first.candidates[0].content.parts[0]
            assert part.thought_signature and part.function_call.name == "lookup"
            result = types.Content(
                role="user",
                parts=[types.Part.from_function_response(name="lookup", response={"ok": True})],
            )
            kept = [question, first.candidates[0].content, result]
            answer = await sdk.aio.models.generate_content(
                model=GEMINI, contents=kept, config=config
            )
            assert answer.text.startswith("Function result: lookup returned")
            stripped = types.Content(
                role="model", parts=[types.Part(function_call=part.function_call)]
            )
            with pytest.raises(genai_errors.ClientError, match="thought_signature") as caught:
                await sdk.aio.models.generate_content(
                    model=GEMINI, contents=[question, stripped, result], config=config
                )
            assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
        finally:
            await sdk.aio.aclose()


class City(BaseModel):
    name: str
    population: int


async def test_gemini_json_mode(gemini: FakeGemini, gclient: Any) -> None:
    schema_config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=City
    )
    typed = await gclient.models.generate_content(
        model=GEMINI, contents="a city", config=schema_config
    )
    assert typed.parsed == City(name="name-example", population=1)
    plain_config = types.GenerateContentConfig(response_mime_type="application/json")
    plain = await gclient.models.generate_content(
        model=GEMINI, contents="a city", config=plain_config
    )
    assert plain.text == '{"echo": "a city"}'
    assert gemini.generate_requests[1].json["generationConfig"] == {
        "responseMimeType": "application/json"
    }


async def test_gemini_stream(gemini: FakeGemini, gclient: Any) -> None:
    chunks = [
        chunk
        async for chunk in await gclient.models.generate_content_stream(
            model=GEMINI, contents="the quick brown fox jumps over the lazy dog"
        )
    ]
    assert len(chunks) == gemini.stream_chunks
    assert "".join(c.text for c in chunks) == "Echo: the quick brown fox jumps over the lazy dog"
    assert [c.candidates[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count == 10
    assert len({c.response_id for c in chunks}) == 1
    sent = gemini.generate_requests[0]
    assert sent.path.endswith(f"/models/{GEMINI}:streamGenerateContent")
    assert sent.query == {"alt": "sse"}


async def test_gemini_max_tokens_and_stop_sequences(gclient: Any) -> None:
    short = await gclient.models.generate_content(
        model=GEMINI,
        contents="one two three four",
        config=types.GenerateContentConfig(max_output_tokens=2),
    )
    assert short.text == "Echo: one"
    assert short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    stopped = await gclient.models.generate_content(
        model=GEMINI,
        contents="one two three four",
        config=types.GenerateContentConfig(stop_sequences=["three"]),
    )
    assert stopped.text == "Echo: one two "
    assert stopped.candidates[0].finish_reason == types.FinishReason.STOP


async def test_gemini_safety_block_through_the_sdk(gemini: FakeGemini, gclient: Any) -> None:
    gemini.refuse = True
    blocked = await gclient.models.generate_content(model=GEMINI, contents="x")
    assert blocked.candidates[0].finish_reason == types.FinishReason.SAFETY
    reasons = [
        c.candidates[0].finish_reason
        async for c in await gclient.models.generate_content_stream(model=GEMINI, contents="x")
        if c.candidates and c.candidates[0].finish_reason
    ]
    assert reasons == [types.FinishReason.SAFETY]


async def test_gemini_models_list_pages() -> None:
    models = [
        FakeModel("gemini-a", context_length=1000),
        FakeModel("gemini-b", context_length=2000),
        FakeModel("text-embedding-x", embedding=True),
    ]
    async with FakeGemini(models) as fake:
        sdk = genai_client(fake)
        try:
            listed = [m async for m in await sdk.aio.models.list(config={"page_size": 2})]
            one = await sdk.aio.models.get(model="gemini-b")
            with pytest.raises(genai_errors.ClientError) as caught:
                await sdk.aio.models.generate_content(model="text-embedding-x", contents="hi")
        finally:
            await sdk.aio.aclose()
    assert [m.name for m in listed] == [
        "models/gemini-a",
        "models/gemini-b",
        "models/text-embedding-x",
    ]
    assert [m.input_token_limit for m in listed[:2]] == [1000, 2000]
    assert listed[0].output_token_limit == FakeGemini.output_token_limit
    assert "generateContent" in listed[0].supported_actions
    assert listed[2].supported_actions == ["embedContent"]
    assert one.name == "models/gemini-b" and one.display_name
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    pages = [r.query for r in fake.requests if r.path.endswith("/models")]
    assert len(pages) == 2 and "pageToken" in pages[1] and pages[0] == {"pageSize": "2"}


@pytest.mark.parametrize(
    ("behavior", "status", "exc", "code", "name"),
    [
        (Behavior.ERROR_429, None, genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        (Behavior.ERROR_403, None, genai_errors.ClientError, 403, "PERMISSION_DENIED"),
        (Behavior.ERROR_500, None, genai_errors.ServerError, 500, "INTERNAL"),
        (Behavior.ERROR_503, None, genai_errors.ServerError, 503, "UNAVAILABLE"),
        (Behavior.OK, 504, genai_errors.ServerError, 504, "DEADLINE_EXCEEDED"),
    ],
)
async def test_gemini_errors_as_sdk_exceptions(
    gemini: FakeGemini,
    gclient: Any,
    behavior: Behavior,
    status: int | None,
    exc: type[genai_errors.APIError],
    code: int,
    name: str,
) -> None:
    gemini.chat_behavior = behavior
    gemini.error_status = status
    with pytest.raises(exc) as caught:
        await gclient.models.generate_content(model=GEMINI, contents="hi")
    assert caught.value.code == code and caught.value.status == name
    if code == 429:
        retry = [d for d in caught.value.details["error"]["details"] if "RetryInfo" in d["@type"]]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    assert len(gemini.requests) == 1  # retry_options attempts=1: one attempt


async def test_gemini_wrong_key(gemini: FakeGemini) -> None:
    sdk = genai_client(gemini, key="wrong-key")
    try:
        with pytest.raises(genai_errors.ClientError) as caught:
            await sdk.aio.models.generate_content(model=GEMINI, contents="hi")
    finally:
        await sdk.aio.aclose()
    err = caught.value
    assert err.code == 400 and err.status == "INVALID_ARGUMENT"
    assert err.message == "API key not valid. Please pass a valid API key."
    assert err.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_gemini_mid_stream_error(gemini: FakeGemini, gclient: Any) -> None:
    gemini.stream_error = 503
    gemini.cut_after = 2
    texts: list[str] = []
    with pytest.raises(genai_errors.ServerError) as caught:
        async for chunk in await gclient.models.generate_content_stream(
            model=GEMINI, contents="a b c d e f g h"
        ):
            texts.append(chunk.text)
    assert len(texts) == 2
    assert caught.value.code == 503 and caught.value.status == "UNAVAILABLE"
    assert len(gemini.requests) == 1  # the SDK did not resume the stream on its own


async def test_gemini_cut_stream(gemini: FakeGemini, gclient: Any) -> None:
    gemini.chat_behavior = Behavior.CUT_STREAM
    gemini.cut_after = 1
    texts: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in await gclient.models.generate_content_stream(
            model=GEMINI, contents="a b c d e f g h"
        ):
            texts.append(chunk.text)
    assert texts == ["Echo: a "]
    assert len(gemini.requests) == 1


async def test_gemini_stalled_stream_times_out(gemini: FakeGemini) -> None:
    gemini.chat_behavior = Behavior.STALL_STREAM
    gemini.cut_after = 1
    texts: list[str] = []
    sdk = genai_client(gemini, timeout_ms=700)
    try:
        with pytest.raises(TimeoutError):
            async for chunk in await sdk.aio.models.generate_content_stream(
                model=GEMINI, contents="a b c d e f g h"
            ):
                texts.append(chunk.text)
    finally:
        await sdk.aio.aclose()
    assert texts == ["Echo: a "]
    await wait_until(lambda: gemini.cancelled_streams == 1, what="gemini.cancelled_streams == 1")
    assert len(gemini.requests) == 1


# ---------------------------------------------------- Gemini validation over raw HTTP
def _gemini_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    body.update(changes)
    return body


def _turn(*parts: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {"role": role, "parts": list(parts)}


_CALL = _turn({"functionCall": {"name": "f", "args": {}}}, role="model")
_ANSWER = {"functionResponse": {"name": "f", "response": {}}}
_INLINE = {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
_ASK = _turn({"text": "x"})
GEMINI_BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    (_gemini_body(messages=[]), 'Unknown name "messages": Cannot find field.'),
    (_gemini_body(contents=[]), "contents is not specified"),
    (_gemini_body(contents=[_turn({"text": "x"}, role="assistant")]), "valid role: user, model."),
    (_gemini_body(contents=[_turn()]), "contents.parts must not be empty"),
    (
        _gemini_body(contents=[_turn({"text": "x", **_INLINE})]),
        "oneof field 'data' is already set",
    ),
    (
        _gemini_body(contents=[_turn({"image_url": "x"})]),
        """Unknown name "image_url" at 'contents[0].parts[0]'""",
    ),
    (
        _gemini_body(contents=[_turn({"inlineData": {"mimeType": "image/png", "data": "@@@"}})]),
        "Base64 decoding failed",
    ),
    (
        _gemini_body(contents=[_ASK, _turn(_ANSWER)]),
        "function response turn comes immediately after a function call turn",
    ),
    (
        _gemini_body(contents=[_ASK, _CALL, _turn(_ANSWER, _ANSWER)]),
        "number of function response parts is equal",
    ),
    (_gemini_body(contents=[_CALL]), "function call turn comes immediately after a user turn"),
    (
        _gemini_body(generationConfig={"max_tokens": 5}),
        """Unknown name "max_tokens" at 'generation_config'""",
    ),
    (_gemini_body(generationConfig={"responseMimeType": "text/html"}), "allowed mimetypes"),
    (
        _gemini_body(tools=[{"functionDeclarations": [{"name": "bad name"}]}]),
        "Invalid function name",
    ),
]


@pytest.mark.parametrize(("body", "message"), GEMINI_BAD_REQUESTS)
async def test_gemini_refuses_what_the_api_refuses(
    gemini: FakeGemini, session: aiohttp.ClientSession, body: dict[str, Any], message: str
) -> None:
    url = f"{gemini.url}/v1beta/models/{GEMINI}:generateContent"
    async with session.post(url, json=body, headers={"x-goog-api-key": gemini.api_key}) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["error"]["code"] == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert message in answer["error"]["message"]


async def test_gemini_raw_keys_snake_case_and_sse_framing(session: aiohttp.ClientSession) -> None:
    async with FakeGemini() as fake:
        url = f"{fake.url}/v1beta/models/{GEMINI}:generateContent"
        body = _gemini_body(
            generation_config={"max_output_tokens": 1}
        )  # proto JSON: both spellings
        async with session.post(url, json=body) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["status"] == "PERMISSION_DENIED"
        async with session.post(url + f"?key={fake.api_key}", json=body) as resp:
            assert resp.status == 400
            assert "x-goog-api-key" in (await resp.json())["error"]["message"]
        assert len(fake.query_key_requests) == 1  # recorded, key and all, for tests to assert on
        fake.query_key_allowed = True  # like the real API
        async with session.post(url + f"?key={fake.api_key}", json=body) as resp:
            answer = await resp.json()
        assert answer["candidates"][0]["finishReason"] == "MAX_TOKENS"
        assert answer["candidates"][0]["content"]["parts"] == [{"text": "Echo:"}]
        stream_url = f"{fake.url}/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse"
        headers = {"x-goog-api-key": fake.api_key}
        async with session.post(stream_url, json=_gemini_body(), headers=headers) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.read()
        assert raw.startswith(b"data: {") and raw.endswith(b"}\r\n\r\n")
        assert raw.count(b"\r\n\r\n") == 2  # "Echo: hi": two words, two chunks


async def test_health_behavior_on_model_lists(session: aiohttp.ClientSession) -> None:
    async with FakeAnthropic() as claude, FakeGemini() as gemini:
        claude.health_behavior = gemini.health_behavior = Behavior.ERROR_503
        headers = {"x-api-key": claude.api_key, "anthropic-version": "2023-06-01"}
        async with session.get(claude.url + "/v1/models", headers=headers) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["type"] == "api_error"
        headers = {"x-goog-api-key": gemini.api_key}
        async with session.get(gemini.url + "/v1beta/models", headers=headers) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["status"] == "UNAVAILABLE"
        claude.reset()
        gemini.reset()
        async with session.get(gemini.url + "/v1beta/models", headers=headers) as resp:
            assert resp.status == 200
            assert [m["name"] for m in (await resp.json())["models"]] == [
                "models/gemini-2.5-flash",
                "models/gemini-2.5-pro",
            ]
