"""The small pieces of F13: the affinity table's bounds, conversation keys, fresh context,
the routing headers, tier settings and the start-up warning about lower-tier fallbacks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from nexus import config as config_mod
from nexus.config import ConfigError
from nexus.errors import InvalidRequest
from nexus.pipeline.plan import routing_headers
from nexus.routing import affinity as affinity_mod
from nexus.routing.affinity import Affinity, conversation_key
from nexus.routing.privacy import fresh_context
from nexus.routing.tiers import fallback_warnings
from tests.helpers import write_config

OPENING = [{"role": "system", "content": "s"}, {"role": "user", "content": "first"}]


def test_the_table_forgets_the_least_recently_used_beyond_its_size() -> None:
    table = Affinity(ttl_seconds=60, max_entries=3)
    for key in range(3):
        table.remember(key, f"b{key}")
    assert table.get(0) == "b0"  # now the most recently used
    table.remember(3, "b3")
    assert len(table) == 3
    assert table.get(1) is None and table.get(0) == "b0" and table.get(3) == "b3"


def test_entries_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(affinity_mod.time, "monotonic", lambda: now[0])
    table = Affinity(ttl_seconds=10, max_entries=10)
    table.remember(1, "a")
    now[0] += 9.9
    assert table.get(1) == "a"
    now[0] += 0.2
    assert table.get(1) is None and len(table) == 0


def test_a_removed_backend_takes_its_conversations_with_it() -> None:
    table = Affinity(ttl_seconds=60, max_entries=10)
    table.remember(1, "a")
    table.remember(2, "b")
    table.forget_backend("a")
    assert table.get(1) is None and table.get(2) == "b"


def test_a_conversation_is_its_opening_and_only_its_hash_is_kept() -> None:
    first, first_again = conversation_key("m", {"messages": OPENING}, None)
    later = [*OPENING, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]
    second, continued = conversation_key("m", {"messages": later}, None)
    assert (first, first_again) == (second, False) and continued
    assert isinstance(first, int)  # a hash: no content
    other, _ = conversation_key(
        "m", {"messages": [OPENING[0], {"role": "user", "content": "x"}]}, None
    )
    assert other != first
    assert conversation_key("other-model", {"messages": later}, None)[0] != first
    assert conversation_key("m", {"messages": later, "user": "u"}, None)[1]  # named: continued
    assert conversation_key("m", {"messages": later}, "s") == (
        conversation_key("m", {"messages": OPENING}, "s")[0],
        True,
    )
    assert conversation_key("m", {"input": "x"}, None) == (None, False)
    assert conversation_key("m", {"messages": ["not a message"]}, None) == (None, False)


def test_fresh_context_keeps_the_system_messages_and_the_last_user_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s1"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "secret"},
        {"role": "developer", "content": "d"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "prefill"},
    ]
    body = {"model": "m", "messages": messages, "tools": [{"type": "function"}]}
    stripped = fresh_context(body)
    assert stripped["messages"] == [messages[0], messages[4], messages[5]]
    assert stripped["tools"] == body["tools"] and body["messages"] is messages  # a copy


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"headers": [(b"content-type", b"application/json"), *headers]}


def test_routing_headers() -> None:
    assert routing_headers(scope()) == ("", None)
    assert routing_headers(scope((b"x-nexus-strict", b" True "))) == ("strict", None)
    assert routing_headers(scope((b"x-nexus-flexible", b"true"))) == ("flexible", None)
    both_false = scope((b"x-nexus-strict", b"false"), (b"x-nexus-flexible", b"false"))
    assert routing_headers(both_false) == ("", None)
    assert routing_headers(scope((b"x-nexus-session", b"abc"))) == ("", "abc")
    with pytest.raises(InvalidRequest, match="X-Nexus-Flexible must be true or false"):
        routing_headers(scope((b"x-nexus-flexible", b"yes")))
    with pytest.raises(InvalidRequest, match="cannot both be true"):
        routing_headers(scope((b"x-nexus-strict", b"true"), (b"x-nexus-flexible", b"true")))


def test_tier_settings_are_checked(tmp_path: Path) -> None:
    base = {"name": "a", "url": "http://127.0.0.1:1"}
    for bad, problem in (
        ({"tier": 6}, "backends[0].tier: must be at most 5"),
        ({"tier": 0}, "backends[0].tier: must be at least 1"),
        ({"model_tiers": {"x": 9}}, 'backends[0].model_tiers."x": must be at most 5'),
        ({"zone": "private"}, "'private' is not one of restricted, open"),
        ({"capabilities": {"humour": 3}}, "capabilities.humour: unknown key"),
    ):
        with pytest.raises(ConfigError, match=re.escape(problem)):
            config_mod.load(write_config(tmp_path, [{**base, **bad}]), env={})
    routing = {"privacy": {"cross_zone_overflow": "Fresh-Context"}}
    loaded = config_mod.load(write_config(tmp_path, [base], routing=routing), env={})
    assert loaded.routing.privacy.cross_zone_overflow == "fresh-context"


def test_lower_tier_fallbacks_known_from_the_config_are_named(tmp_path: Path) -> None:
    backends = [
        {"name": "big", "url": "http://127.0.0.1:1", "tier": 4, "models": ["big-model"]},
        {"name": "small", "url": "http://127.0.0.1:2", "model_tiers": {"small-model": 2}},
        {"name": "any", "url": "http://127.0.0.1:3"},
    ]
    routing = {
        "aliases": {"best": "big-model"},
        "fallbacks": {"best": ["small-model", "unknown-model"], "small-model": ["big-model"]},
    }
    cfg = config_mod.load(write_config(tmp_path, backends, routing=routing), env={})
    assert fallback_warnings(cfg) == [
        'routing.fallbacks."best": small-model (tier 2) is below big-model (tier 4) and will '
        "never be used: a fallback never answers with a lower tier"
    ]
