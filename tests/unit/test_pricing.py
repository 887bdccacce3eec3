"""Model prices (F14): lookups from genai-prices' bundled data, cached-token pricing, cost maths.

The expected prices are the ones genai-prices 0.2.x publishes (and the providers' own pricing
pages list): gpt-4o-mini $0.15 / $0.60 / cached $0.075, claude-sonnet-4-5 $3 / $15 / cache
read $0.30 (below its 200k long-context tier), gemini-2.5-flash $0.30 / $2.50 / cached $0.03.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from nexus import pricing
from nexus.pricing import Price, cost, lookup


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_cache", {})


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o-mini", Price(0.15, 0.6, 0.075)),
        ("openai", "gpt-4o-mini-2024-07-18", Price(0.15, 0.6, 0.075)),  # dated id
        ("openai", "gpt-4o", Price(2.5, 10.0, 1.25)),
        ("anthropic", "claude-sonnet-4-5", Price(3.0, 15.0, 0.3)),
        ("anthropic", "claude-sonnet-4-5-20250929", Price(3.0, 15.0, 0.3)),
        ("anthropic", "claude-haiku-4-5", Price(1.0, 5.0, 0.1)),
        ("google", "gemini-2.5-flash", Price(0.3, 2.5, 0.03)),
        ("google", "models/gemini-2.5-flash", Price(0.3, 2.5, 0.03)),  # native API spelling
        ("google", "gemini-2.5-pro", Price(1.25, 10.0, 0.125)),
    ],
)
def test_known_prices(provider: str, model: str, expected: Price) -> None:
    assert lookup(provider, model) == expected


def test_price_in_force_today_is_used() -> None:
    # o3 was cut from $10/$40 to $2/$8 on 2025-06-10; the package keeps both.
    assert lookup("openai", "o3") == Price(2.0, 8.0, 0.5)


def test_a_model_listed_free_costs_zero_not_unknown() -> None:
    # genai-prices lists Gemma on the Gemini API with an empty price table: free of charge.
    assert lookup("google", "gemma-3") == Price(0.0, 0.0, None)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-7-imaginary"),
        ("anthropic", "claude-opus-9-9"),
        ("google", "gemini-9-flash"),
        ("openai", "whisper-1"),  # priced per audio hour: tokens cannot cost it
        ("ollama", "llama3"),  # local backends are never looked up
        ("vllm", "gpt-4o"),
    ],
)
def test_unknown_is_none(provider: str, model: str) -> None:
    assert lookup(provider, model) is None


def test_lookups_are_cached_misses_included(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = pricing._from_package

    def counting(provider: str, model: str) -> Price | None:
        calls.append((provider, model))
        return real(provider, model)

    monkeypatch.setattr(pricing, "_from_package", counting)
    for _ in range(3):
        assert lookup("openai", "gpt-4o-mini") is not None
        assert lookup("openai", "no-such-model") is None
    assert calls == [("openai", "gpt-4o-mini"), ("openai", "no-such-model")]


def test_bundled_data_only_no_auto_update_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert lookup("anthropic", "claude-sonnet-4-5") is not None
    assert attempts == []

    from genai_prices import data_snapshot

    # The snapshot in use is the one in the wheel, not one fetched by UpdatePrices.
    assert data_snapshot.get_snapshot().from_auto_update is False


def test_package_failures_become_unknown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import genai_prices

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("bad data in this release")

    monkeypatch.setattr(genai_prices, "calc_price", broken)
    assert lookup("openai", "gpt-4o-mini") is None
    assert "genai-prices failed" in caplog.text


def test_missing_package_is_unknown_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "genai_prices", None)
    assert lookup("openai", "gpt-4o-mini") is None


# --- cost arithmetic -------------------------------------------------------------------------


def test_cost_arithmetic() -> None:
    price = Price(input_per_mtok=2.0, output_per_mtok=8.0, cached_input_per_mtok=0.5)
    # 600 fresh x $2 + 400 cached x $0.50 + 100 out x $8 = $2200 per million requests.
    got = cost(price, prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    assert got == pytest.approx(0.0022, rel=1e-12)
    assert cost(price, prompt_tokens=1_000_000, completion_tokens=0) == pytest.approx(2.0)
    assert cost(price, prompt_tokens=0, completion_tokens=1_000_000) == pytest.approx(8.0)
    assert cost(price, prompt_tokens=0, completion_tokens=0) == 0.0


def test_cached_tokens_without_a_cached_rate_cost_the_input_rate() -> None:
    price = Price(input_per_mtok=3.0, output_per_mtok=15.0)
    assert cost(price, prompt_tokens=1000, completion_tokens=0, cached_tokens=400) == (
        pytest.approx(cost(price, prompt_tokens=1000, completion_tokens=0))
    )


def test_cached_tokens_are_bounded_by_prompt_tokens() -> None:
    price = Price(1.0, 1.0, 0.0)
    assert cost(price, prompt_tokens=10, completion_tokens=0, cached_tokens=50) == 0.0
    assert cost(price, prompt_tokens=10, completion_tokens=0, cached_tokens=-5) == (
        pytest.approx(10 / 1_000_000)
    )


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-flash")],
)
def test_cost_agrees_with_the_package_own_calculation(provider: str, model: str) -> None:
    from genai_prices import Usage, calc_price

    price = lookup(provider, model)
    assert price is not None
    # genai-prices' input_tokens include cache reads, like OpenAI's prompt_tokens.
    usage = Usage(input_tokens=120_000, cache_read_tokens=50_000, output_tokens=7_000)
    theirs = calc_price(usage, model, provider_id=provider).total_price
    mine = cost(price, prompt_tokens=120_000, completion_tokens=7_000, cached_tokens=50_000)
    assert mine == pytest.approx(float(theirs), rel=1e-9)
