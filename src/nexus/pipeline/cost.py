"""What a cloud request cost: prices from the bundled price data (``nexus.pricing``) or the
backend's configured ``prices``, times the usage the provider reported. Local backends cost
nothing and are not priced at all.
"""

from __future__ import annotations

import logging

from nexus import pricing, tokens
from nexus.pricing import Price
from nexus.records import RequestRecord
from nexus.registry import Backend
from nexus.routing.requirements import Requirements

log = logging.getLogger("nexus")


class Costs:
    def __init__(self) -> None:
        self._unknown: set[tuple[str, str]] = set()  # logged once each

    def price(self, backend: Backend, model: str) -> Price | None:
        return pricing.price_for(backend, model)

    def charge(
        self, record: RequestRecord, backend: Backend, model: str, req: Requirements
    ) -> None:
        """Set the record's cost from its usage; without usage (a stream cut early), from the
        counted prompt (else its size) and the text relayed so far, flagged ``estimated``;
        without a price, 0 flagged ``cost_unknown``."""
        if not backend.cloud:
            return
        price = self.price(backend, model)
        if price is None:
            record.cost_usd, record.cost_flag = 0.0, "cost_unknown"
            if (backend.name, model) not in self._unknown:
                self._unknown.add((backend.name, model))
                log.warning(
                    "no price known for %s on %s: its requests are costed 0 (cost_unknown); "
                    "set [backends.prices] for it",
                    model,
                    backend.name,
                )
            return
        prompt = record.tokens_prompt
        if prompt is None:
            prompt = req.prompt_tokens
            if prompt is None and req.prompt_count is not None:
                prompt = req.prompt_count.tokens_now(backend.type, model)
            if prompt is None:
                prompt = tokens.estimate(req.prompt_chars)
            record.cost_flag = "estimated"
        completion = record.tokens_completion
        if completion is None:
            completion = tokens.estimate(record.completion_chars)
            if completion:
                record.cost_flag = "estimated"
        record.cost_usd = pricing.cost(
            price,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=record.tokens_cached or 0,
        )

    def estimate(self, backend: Backend, model: str, prompt_chars: int) -> float | None:
        """Before a stream's usage exists: the prompt's cost, from its size."""
        price = self.price(backend, model) if backend.cloud else None
        if price is None:
            return None
        return pricing.cost(price, prompt_tokens=tokens.estimate(prompt_chars), completion_tokens=0)
