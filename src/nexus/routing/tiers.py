"""Capability tiers (F13): a request is never answered by a weaker model than it asked for.

Every model a backend serves has a tier, 1 (weakest) to 5 (strongest): the backend's
``tier`` unless its ``model_tiers`` names the model. The requested model's tier is the
lowest at which any of its own backends offers it (what balancing among them may give in
any case); whatever answers instead (failover, a fallback, a flexible substitute,
overflow) must be of that tier or higher.
"""

from __future__ import annotations

from collections.abc import Iterable

from nexus.config import Config
from nexus.registry import Backend
from nexus.routing import aliases

DEFAULT_TIER = 3


def required_tier(holders: Iterable[Backend], model: str) -> int:
    return min((b.tier_of(model) for b in holders), default=DEFAULT_TIER)


def configured_tiers(config: Config, model: str) -> set[int]:
    """The tiers ``model`` has wherever the config alone says a backend serves it: named
    in ``model_tiers``, or in the ``models`` list of a backend (its tier). Empty: only
    discovery can tell."""
    tiers = set()
    for b in config.backends:
        if model in b.model_tiers:
            tiers.add(b.model_tiers[model])
        elif model in b.models:
            tiers.add(b.tier)
    return tiers


def fallback_warnings(config: Config) -> list[str]:
    """Configured fallbacks the config alone shows to be of a lower tier than the model
    they stand in for: routing skips them, and the admin is told once, at start-up."""
    routing = config.routing
    warnings = []
    # (Aliases followed to their end: which names a backend serves, only discovery knows.)
    for requested, chain in routing.fallbacks.items():
        primary = aliases.resolve(requested, routing.aliases, lambda _: False)
        wanted = configured_tiers(config, primary)
        if not wanted:
            continue
        for name in chain:
            target = aliases.resolve(name, routing.aliases, lambda _: False)
            offered = configured_tiers(config, target)
            if offered and max(offered) < min(wanted):
                warnings.append(
                    f'routing.fallbacks."{requested}": {name} (tier {max(offered)}) is below '
                    f"{primary} (tier {min(wanted)}) and will never be used: a fallback never "
                    "answers with a lower tier"
                )
    return warnings
