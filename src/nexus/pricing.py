"""Model prices for cost tracking (F14), from the `genai-prices` package's bundled data.

`lookup` answers "what does this cloud model cost per million tokens?" and `cost` turns a
request's usage into US dollars; `context_window` is the same list's context length of a
model, for providers whose model listing has none (OpenAI's). Everything is read from the
snapshot that ships inside the installed `genai-prices` wheel: its opt-in auto-update
(`genai_prices.UpdatePrices`) is never started here, so nothing is fetched at run time and
a price changes only with the package version. The package (with pydantic) takes ~0.2-0.3 s
to import, so that happens at the first lookup, never when Nexus is imported.

A model the package does not know gives None: the caller then uses a configured override or
records the request as costed 0 with `cost_unknown`. Local backends are never looked up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genai_prices.types import ModelPrice

    from nexus.registry import Backend

logger = logging.getLogger(__name__)

# Nexus backend types -> genai-prices provider ids (the same words today; kept explicit so a
# rename on either side is one line).
_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "google": "google"}

_cache: dict[tuple[str, str], Listed] = {}


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    """What the package lists for one model (None: it does not say)."""

    price: Price | None = None
    context_window: int | None = None


def price_for(backend: Backend, model: str) -> Price | None:
    """A cloud backend's price for `model`: its configured `prices`, else the bundled list."""
    return backend.prices.get(model) or lookup(backend.type, model)


def lookup(provider: str, model: str) -> Price | None:
    """The current list price of `model` on a cloud `provider`; None when unknown.

    Answers are cached per (provider, model), misses too: the package's own matching costs
    ~0.1 ms a call, the cache ~0.1 us.
    """
    return _listed(provider, model).price


def context_window(provider: str, model: str) -> int | None:
    """The context length the package lists for ``model`` on a cloud ``provider``."""
    return _listed(provider, model).context_window


def _listed(provider: str, model: str) -> Listed:
    key = (provider, model)
    if key not in _cache:
        _cache[key] = _from_package(provider, model)
    return _cache[key]


def cost(
    price: Price, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> float:
    """US dollars for one request, in OpenAI's usage shape.

    `cached_tokens` (prompt_tokens_details.cached_tokens) are part of `prompt_tokens`: they are
    billed at the cached rate when the model has one, else at the input rate.
    """
    prompt = max(prompt_tokens, 0)
    cached = min(max(cached_tokens, 0), prompt)
    cached_rate = price.cached_input_per_mtok
    if cached_rate is None:
        cached_rate = price.input_per_mtok
    usd_times_million = (
        (prompt - cached) * price.input_per_mtok
        + cached * cached_rate
        + max(completion_tokens, 0) * price.output_per_mtok
    )
    return usd_times_million / 1_000_000


def _model_ref(provider: str, model: str) -> str:
    # Gemini's native API names models "models/gemini-2.5-flash"; the package wants the id.
    return model.removeprefix("models/") if provider == "google" else model


def _from_package(provider: str, model: str) -> Listed:
    provider_id = _PROVIDER_IDS.get(provider)
    if provider_id is None:
        return Listed()
    try:
        from genai_prices import Usage, calc_price
    except ImportError:
        logger.warning("genai-prices is not installed: every cloud request is cost_unknown")
        return Listed()
    try:
        # A zero usage resolves the model (dated ids, aliases, the price in force today)
        # through the package's public entry point; only the matched price table is used.
        found = calc_price(
            Usage(input_tokens=0, output_tokens=0),
            _model_ref(provider, model),
            provider_id=provider_id,
        )
    except LookupError:
        return Listed()
    except Exception:  # bad data in a package release must not break requests
        logger.warning("genai-prices failed on %s/%s", provider, model, exc_info=True)
        return Listed()
    window = found.model.context_window
    return Listed(_to_price(found.model_price), window if isinstance(window, int) else None)


def _to_price(table: ModelPrice) -> Price | None:
    """Flatten the package's price table; None when it has no per-token prices at all."""
    if not any(value is not None for value in vars(table).values()):
        return Price(0.0, 0.0)  # an empty table is the package's way of saying "free"
    prices = [_per_mtok(table, key) for key in ("input_mtok", "output_mtok", "cache_read_mtok")]
    input_rate, output_rate, cached_rate = prices
    if input_rate is None and output_rate is None:
        return None  # priced per image, per second, ...: not something tokens can cost
    return Price(input_rate or 0.0, output_rate or 0.0, cached_rate)


def _per_mtok(table: ModelPrice, key: str) -> float | None:
    from genai_prices.types import TieredPrices

    value = getattr(table, key, None)
    if isinstance(value, TieredPrices):
        # Long-context tiers (e.g. above 200k prompt tokens) cost more; the base tier is the
        # price of every ordinary request.
        value = value.base
    return float(value) if isinstance(value, Decimal) else None
