"""Model aliases (F07): "gpt-4" -> "llama3:70b", chains up to three levels, no cycles."""

from __future__ import annotations

from collections.abc import Callable, Mapping

MAX_ALIAS_DEPTH = 3


class AliasCycleError(ValueError):
    pass


def check_aliases(aliases: Mapping[str, str]) -> None:
    """Reject cycles and chains longer than MAX_ALIAS_DEPTH, naming the offending chain."""
    for start in aliases:
        chain = [start]
        name = start
        while name in aliases:
            name = aliases[name]
            if name in chain:
                cycle = " -> ".join([*chain[chain.index(name) :], name])
                raise AliasCycleError(f"alias cycle: {cycle}")
            chain.append(name)
        if len(chain) - 1 > MAX_ALIAS_DEPTH:
            raise AliasCycleError(
                f"alias chain longer than {MAX_ALIAS_DEPTH} levels: {' -> '.join(chain)}"
            )


def resolve(model: str, aliases: Mapping[str, str], is_served: Callable[[str], bool]) -> str:
    """The model to route to: ``model`` itself when some backend serves it (a direct match
    wins over an alias), else the first name along its alias chain that is served, else the
    end of the chain (so the caller's "not found" names what the alias points at)."""
    if is_served(model) or model not in aliases:
        return model
    name = model
    for _ in range(MAX_ALIAS_DEPTH):
        if name not in aliases:
            break
        name = aliases[name]
        if is_served(name):
            return name
    return name
